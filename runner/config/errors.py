"""Errors in experiment files: one line per problem, every problem at once (up to
MAX_ERRORS)."""


class ConfigError(Exception):
    """A problem in an experiment file, reported as one line (or several problems, one a
    line: see collect_errors)."""


# Validation reports every problem of every experiment at once, up to this many lines.
MAX_ERRORS = 20


def collect_errors(items, check):
    """check(item) for each item; every ConfigError is kept and, at the end, raised as one
    ConfigError of one line per problem (at most MAX_ERRORS, then how many more). Returns
    the results of the items that passed."""
    results, problems, passed = [], [], []
    for item in items:
        try:
            results.append(check(item))
        except ConfigError as e:
            problems += getattr(e, 'problems', None) or str(e).splitlines()
            passed += getattr(e, 'passed', [])
    if problems:
        error = join_errors(*problems)
        # What did pass (flattened), so that a caller can check it further and report its
        # problems in the same round.
        error.passed = [x for r in results for x in (r if isinstance(r, list) else [r])] + passed
        raise error
    return results


def problems_of(items, check):
    """The lines of every ConfigError that check(item) raises, item after item (all of
    them, where collect_errors stops at MAX_ERRORS)."""
    problems = []
    for item in items:
        try:
            check(item)
        except ConfigError as e:
            problems += getattr(e, 'problems', None) or str(e).splitlines()
    return problems


def join_errors(*errors):
    """One ConfigError of the lines of every error or message given (None skipped), at most
    MAX_ERRORS of them, then how many more."""
    lines = [line for e in errors if e is not None
             for line in getattr(e, 'problems', None) or str(e).splitlines()]
    more = len(lines) - MAX_ERRORS
    error = ConfigError('\n'.join(lines[:MAX_ERRORS] + ([f'... and {more} more problems'] if more > 0 else [])))
    error.problems = lines  # all of them, for a caller that adds more
    return error
