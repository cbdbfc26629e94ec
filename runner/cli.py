"""`python run_experiments.py`: validate every experiment, smoke-test them, then train them in turn.

Exit status: 0 every run this process was responsible for finished or was pruned by its
search (runner.search; a search is one entry of the queue that trains trials) (or was skipped as
already finished, or as being trained by another live process holding its lock: processes
sharing one queue each answer for the runs they trained), 1 a run failed, diverged, was
interrupted or failed its smoke test, 2 an experiment file is wrong (nothing ran).
"""
import argparse
import dataclasses
import itertools
import os
import signal
import sys

from runner import rundir
from runner.queue import resume
from runner.common import DONE, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, did_you_mean, output_to, rate_text, text_table
from runner.training.distribute import quiet_tensorflow
from runner.rundir import RunDir

def build_parser():
    p = argparse.ArgumentParser(
        prog='run_experiments.py',
        description='Train the experiments of YAML files: validate all, smoke-test all, then train '
                    'each in turn, resuming unfinished runs from their last checkpoint.')
    p.add_argument('files', nargs='*', metavar='FILE', default=['experiments.yaml'],
                   help='experiment files (default: experiments.yaml)')
    p.add_argument('--only', metavar='NAME[,NAME]', action='append', default=[],
                   help='run only these run names')
    smoke = p.add_mutually_exclusive_group()
    smoke.add_argument('--smoke', action='store_true',
                       help='only run the smoke test (a few steps of every experiment) and stop')
    smoke.add_argument('--no-smoke', action='store_true', help='skip the smoke test')
    p.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], dest='overrides',
                   help='override a key in every selected experiment, e.g. '
                        'train_parameters.batch_size=64 (VALUE is YAML)')
    p.add_argument('--logdir', help='write runs under this directory (train_parameters.logdir)')
    p.add_argument('--list', action='store_true',
                   help='print run name, model, parameters, dataset and steps; train nothing')
    p.add_argument('--restart', metavar='NAME', action='append', default=[],
                   help='start this run over; its old directory is moved aside, not deleted')
    p.add_argument('--fail-fast', action='store_true',
                   help='stop at the first experiment that fails instead of going on')
    p.add_argument('--smoke-jobs', metavar='N', type=positive_int, default=None,
                   help='smoke-test N experiments at a time, each in a worker process '
                        '(default: one per CPU core)')
    share = p.add_mutually_exclusive_group()
    share.add_argument('--index', type=int, metavar='K',
                       help='train only run K (0-based, in file order after --only, repeats and '
                            'grid; --list shows it): one task of a job array')
    share.add_argument('--shard', metavar='I/N', help='train only the runs K with K mod N = I')
    return p


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return value


@dataclasses.dataclass
class Checked:
    exp: object
    params: int
    dataset: str
    data_ready: bool
    note: str = ''
    start_over: bool = False  # its settings changed before any checkpoint: moved aside, begun anew
    queue_index: int = 0  # its position among the selected runs: --index, --shard, --list
    num_classes: int = 10  # of its data, for the size of what it writes (rundir.run_bytes)
    corners: list = dataclasses.field(default_factory=list)  # a search's: what the smoke run tries

    @property
    def disk_bytes(self):
        """About how much the run writes: what its log directory must have free."""
        return rundir.run_bytes(self.exp, self.params, self.num_classes)


def load_all(files, overrides, only=()):
    """The experiments of the files, only those --only names when it is given. --set applies
    to the chosen ones alone: they are chosen by their names as the files give them, then
    loaded again with the overrides (which may rename them or change what they expand into).

    Every problem of every file at once: a ConfigError of all of them (config.collect_errors),
    whose `passed` holds the experiments without one, for validation to check further."""
    from runner.config.checks import check_unique_run_names
    from runner.config.errors import ConfigError, collect_errors, join_errors
    from runner.config.expand import load_experiments
    from runner.config.yaml_io import read_text
    try:
        # A file that cannot be read is said at once and alone: the command names a wrong
        # file, and nothing else is worth checking (TensorFlow's import included) until then.
        collect_errors(files, read_text)
    except ConfigError as e:
        raise join_errors(e) from None  # nothing `passed`: nothing is checked further
    problems = []

    def every(check, paths=files):
        """The experiments of every file that `check(path)` loads; a file's problems are kept."""
        try:
            return [e for exps in collect_errors(paths, check) for e in exps]
        except ConfigError as e:
            problems.append(e)
            return e.passed

    plain = every(load_experiments)
    try:
        chosen = select(plain, only)
    except ConfigError as e:
        raise join_errors(*problems, e) from None
    if overrides:
        # (file, document) -> its runs, and the places among them of the chosen ones
        runs, picked = {}, {}
        for e in plain:
            runs.setdefault((e.source, e.index), []).append(e)
        for e in chosen:
            group = runs[(e.source, e.index)]
            picked.setdefault((e.source, e.index), set()).add(next(n for n, x in enumerate(group) if x is e))
        # Only the files with a chosen document: the others' problems are said already.
        with_picked = [path for path in files if any(source == path for source, _ in picked)]
        loaded = every(lambda path: load_experiments(path, overrides,
                                                     {i for source, i in picked if source == path}),
                       with_picked)
        chosen = []
        for (source, i), group in itertools.groupby(loaded, key=lambda e: (e.source, e.index)):
            keep = picked[(source, i)]
            # A document chosen whole keeps every run it now expands into (--set repeats=3).
            whole = len(keep) == len(runs[(source, i)])
            chosen += [e for n, e in enumerate(group) if whole or n in keep]
    if problems:
        error = join_errors(*problems)
        error.passed = chosen
        raise error
    check_unique_run_names(chosen)
    return chosen


def select(experiments, only):
    from runner.config.errors import ConfigError
    if not only:
        return experiments
    names = [n.strip() for item in only for n in item.split(',') if n.strip()]
    known = {e.run_name: e for e in experiments}
    known.update({e.run_name.split('/')[0]: e for e in experiments})
    for n in names:
        if n not in known:
            hint = did_you_mean(n, known) or f"; run names: {', '.join(known)}"
            raise ConfigError(f"--only: no experiment is named '{n}'{hint}")
    # A name also selects the runs it expanded into (`resnet20` -> `resnet20/seed0`, ...).
    return [e for e in experiments
            if e.run_name in names or any(e.run_name.startswith(n + '/') for n in names)]


def validate(experiments, restarting=(), need_data=True):
    """Everything that can be checked before the first step; one ConfigError naming every
    problem of every experiment (config.collect_errors)."""
    import keras
    from runner.data import info as data_info, source as data_source
    from runner.config.errors import ConfigError, collect_errors
    from runner.registry import build_model, count_trainable, freeze_schedule, load_initial_weights
    from runner.search.run import checked_search, is_search

    def check(exp):
        if is_search(exp):  # checked at the corners of its space
            return checked_search(exp, check)
        try:
            try:
                info = data_info.describe(exp.dataset)
                data_info.check_sizes(exp.dataset, info, exp.train_parameters.batch_size)
                if need_data:  # with download on, TFDS fetches the data now, before the smoke run
                    data_source.download_if_needed(exp.dataset)
            except data_source.DataUnavailable as e:
                raise ConfigError(str(e)) from None
            model = build_model(exp, info.image_shape, info.num_classes)
            params = count_trainable(model)
            freeze_schedule(model, exp.train_parameters.freeze_after)
            if exp.train_parameters.init_weights:
                load_initial_weights(model, exp.train_parameters.init_weights,
                                     exp.train_parameters.init_skip_mismatch)
            del model
            keras.backend.clear_session()
            ready = data_source.data_ready(exp.dataset)
            if need_data and not ready:
                cfg = exp.dataset
                raise ConfigError(data_source.not_prepared_message(cfg, data_source.tfds_builder(cfg)))
            start_over = exp.run_name not in restarting and resume.check_resumable(exp)
        except ConfigError as e:
            raise ConfigError(f'{exp.label}: {e}') from None
        shape = 'x'.join(str(d) for d in info.image_shape)
        return Checked(exp, params, f'{info.description} ({shape}, {info.num_classes} classes)',
                       ready, start_over=start_over, num_classes=info.num_classes)
    return collect_errors(experiments, check)


def listed(experiments, restarting):
    """--list's rows: counted without TensorFlow where the registry can tell, else built."""
    from runner.registry import count_from_registry
    quick = [count_from_registry(exp) for exp in experiments]
    rest = [exp for exp, q in zip(experiments, quick) if q is None]
    built = iter(quiet_tensorflow() or validate(rest, restarting, need_data=False) if rest else ())
    return [Checked(exp, *q, data_ready=False) if q else next(built) for exp, q in zip(experiments, quick)]


def print_list(checked):
    from runner.queue import runlock
    from runner.registry import canonical_model_name
    rows = [('index', 'run', 'model', 'params', 'dataset', 'steps', 'status')]
    from runner.search.run import is_search, progress_text
    for c in checked:
        held = runlock.holder(RunDir.of(c.exp))
        status = progress_text(c.exp) if is_search(c.exp) else f'running in {runlock.describe(held)}' if held else '-'
        rows.append((str(c.queue_index), c.exp.run_name, canonical_model_name(c.exp),
                     f'{c.params / 1e6:.2f}M ({c.params:,})', c.dataset, str(c.exp.total_steps),
                     status))
    _table(rows)


def claim(exp):
    """The RunLock this process holds while it trains `exp` (held or not), or None for a
    worker of a multi-worker run other than the chief: it writes to its own scratch
    directory, and the chief's claim stands for the whole cluster."""
    from runner.queue import runlock
    from runner.training import distribute
    tp = exp.train_parameters
    if distribute.is_multi_worker(tp.distribution) and not distribute.task_is_chief():
        return None
    lock = runlock.RunLock(RunDir.of(exp))
    lock.acquire()
    return lock


def held_elsewhere(exp):
    """'<run>: running in <holder>; skipped' and its result entry, for a run whose lock
    another live process holds."""
    from runner.queue import runlock
    who = runlock.describe(runlock.holder(RunDir.of(exp))) or 'another process'
    print(f'{exp.run_name}: running in {who}; skipped', flush=True)
    return {'run_name': exp.run_name, 'status': 'running', 'held_by': who}


def finished_before(exp):
    """The summary of a run that has already trained all its steps, or None."""
    previous = rundir.read_summary(RunDir.of(exp))
    if rundir.is_finished(previous, exp.total_steps):
        print(f'{exp.run_name}: finished at step {previous["steps"]}; skipped '
              f'(--restart {exp.run_name} trains it again)', flush=True)
        return previous
    return None


def _table(rows):
    print(text_table(rows))


def train_all(checked, fail_fast):
    """Train each run this process can claim; a run another live process holds is skipped
    (see the module docstring for what that means for the exit status)."""
    from runner.search.run import is_search, run_search
    results = []
    for c in checked:
        exp = c.exp
        run_dir = RunDir.of(exp)
        if is_search(exp):  # trains trials of the study until it has none left for this process
            results += run_search(exp, lambda e: validate([e])[0], train_one)
            if results and results[-1]['status'] == 'interrupted':
                break
            continue
        previous = finished_before(exp)
        if previous:
            results.append(previous)
            continue
        problem = rundir.check_writable(exp.train_parameters.logdir, c.disk_bytes,
                                        run_dir)
        lock = None
        if not problem:
            try:
                lock = claim(exp)
            except OSError as e:
                problem = f"cannot create '{run_dir}': {e.strerror}"
        if problem:
            print(f'error: {exp.label}: {problem}', file=sys.stderr, flush=True)
            results.append({'run_name': exp.run_name, 'status': 'failed', 'error': problem})
            if fail_fast:
                break
            continue
        if lock is not None and not lock.held:
            results.append(held_elsewhere(exp))
            continue
        try:
            # Under the lock: another process may have finished the run meanwhile.
            previous = finished_before(exp)
            if previous:
                results.append(previous)
                continue
            problem = rundir.damaged(run_dir)
            if problem:
                # Only this run is blocked; its files are left as they are for a look.
                problem += f'; --restart {exp.run_name} starts the run over (the old one is kept)'
                print(f'error: {exp.label}: {problem}', file=sys.stderr, flush=True)
                summary = {'run_name': exp.run_name, 'status': 'failed', 'error': problem}
            else:
                summary = train_one(c, run_dir)
        finally:
            if lock is not None:
                lock.release()
        results.append(summary)
        if summary['status'] == 'interrupted':
            break  # the person asked to stop: do not start the next experiment
        if summary['status'] not in DONE and fail_fast:
            break
    return results


def train_one(c, run_dir, on_evaluation=None, read=None):
    """Train one claimed run (its RunDir); its summary, whatever happens. `read`: how it reads
    its dataset (session.run)."""
    from runner.data import source as data_source
    from runner.training import checkpoints, failures, session
    import keras
    exp = c.exp
    verb = 'resuming' if checkpoints.present(run_dir.checkpoints) else 'starting'
    print(f'{exp.run_name}: {verb} ({exp.model}, {c.params / 1e6:.2f}M params, '
          f'{exp.total_steps} steps) in {run_dir}', flush=True)
    try:
        summary = session.run(exp, on_evaluation=on_evaluation, read=read)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM outside the steps (loading data, the final evaluation), where
        # there is no step to finish: the last checkpoint stands and is resumed from.
        summary = failures.record_failure(
            exp, KeyboardInterrupt('stopped outside the training steps (loading data or '
                                   'evaluating); the last checkpoint is kept'), status='interrupted')
    except data_source.DataUnavailable as e:
        summary = failures.record_failure(exp, e)
    except Exception as e:  # one experiment's failure does not stop the others
        summary = failures.record_failure(exp, e)
        where = summary.get('not_recorded') or f'traceback in {run_dir.error_log}'
        print(f'{exp.run_name}: failed: {summary["error"]} ({where})', file=sys.stderr, flush=True)
    if summary['status'] != 'interrupted':
        # Memory for the next experiment. An interrupted run ends the queue, and collecting
        # an evaluation's abandoned input iterator can block for seconds on its threads.
        keras.backend.clear_session()
    if summary['status'] == 'diverged':
        print(f'{exp.run_name}: diverged: {summary["error"]}', file=sys.stderr, flush=True)
    if summary['status'] == 'interrupted':
        print(f'{exp.run_name}: interrupted at step {summary.get("steps", 0)}; run the same '
              f'command again to resume', flush=True)
    return summary


def print_results(results):
    rows = [('run', 'status', 'steps', 'test top-1 err', 'best top-1 err', 'img/s', 'time')]
    for s in results:
        def err(key):
            v = s.get(key)
            return f'{100 * (1 - v):.2f}%' if isinstance(v, (int, float)) else '-'
        best = err('best_test_top1_accuracy')
        if best != '-':
            best += f" ({s.get('selection_split', 'test')}-selected)"
        rate = s.get('train_images_per_second')
        status = (s.get('status') or '?') + (f" in {s['held_by']}" if s.get('held_by') else '')
        rows.append((s.get('run_name', '?'), status, str(s.get('steps', '-')),
                     err('test_top1_accuracy'), best, rate_text(rate),
                     f"{s['wall_seconds'] / 60:.1f} min" if s.get('wall_seconds') else '-'))
    print()
    _table(rows)
    for s in results:
        if s.get('status') not in DONE + (None,) and s.get('error'):
            print(f"  {s['run_name']}: {s['error']}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    # SIGTERM (a job scheduler's stop) as Ctrl-C: inside the training steps both checkpoint
    # and stop at the step's end (signals.StopRequest), elsewhere both end the command cleanly.
    # SIGINT too: a process started in the background of a script (`cmd &`, CI, `timeout -s
    # INT` run from one) inherits SIGINT ignored, which Python leaves ignored; a Ctrl-C or
    # `kill -INT` before the training loop installs its own handler was then lost, and the
    # run trained to its end.
    try:
        old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
        old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        old_term = old_int = None
    try:
        return output_to(_main, args)
    except KeyboardInterrupt:
        print('\ninterrupted', file=sys.stderr)
        return EXIT_FAILED
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)


def _main(args):
    """The command's steps: load and check everything (nothing is written before all passed),
    then --list, or the smoke run, then move aside what starts over, then train."""
    from runner.config.errors import ConfigError
    try:
        checked, restarting = checked_share(args)
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f'error: {line}', file=sys.stderr)
        return EXIT_CONFIG
    if args.list:
        print_list(checked)
        return EXIT_OK
    if not args.smoke:
        problem = unwritable(checked)
        if problem:
            print(f'error: {problem}', file=sys.stderr)
            return EXIT_CONFIG
    if not args.no_smoke:
        if smoke_failed(checked, every=args.smoke, restarting=restarting, jobs=args.smoke_jobs):
            return EXIT_FAILED
        if args.smoke:
            return EXIT_OK
    code = start_over(checked, restarting)
    if code is not None:
        return code
    results = train_all(checked, args.fail_fast)
    print_results(results)
    # A run held by another live process is that process's to answer for.
    return EXIT_OK if all(s.get('status') in DONE or s.get('held_by') for s in results) else EXIT_FAILED


def checked_share(args):
    """(this process's share of the validated runs, the run names --restart stands for);
    a ConfigError of every problem of every experiment otherwise."""
    from runner.config.errors import ConfigError, join_errors
    from runner.queue.shares import select_indices
    experiments, load_error = load_selected(args)
    restarting = restarted_runs(args.restart, experiments)
    need_data = not (args.smoke or args.list)
    if load_error and not experiments:
        raise load_error  # nothing to validate further: no TensorFlow to wait for
    if load_error:
        # Mistakes in the files: the experiments without one are validated too, so that
        # every problem is reported in this one round (without TensorFlow when none is left).
        if not experiments:
            raise load_error
        quiet_tensorflow([])
        try:
            validate(experiments, restarting, need_data=need_data)
        except ConfigError as more:
            raise join_errors(load_error, more) from None
        raise load_error
    share = select_indices(len(experiments), args.index, args.shard)
    if args.list:
        checked = listed(experiments, restarting)
    else:
        quiet_tensorflow([experiments[k] for k in share])
        checked = validate(experiments, restarting, need_data=need_data)
    for k, c in enumerate(checked):
        c.queue_index = k
    return [checked[k] for k in share], restarting


def load_selected(args):
    """(the experiments --only selects with --set and --logdir applied, the ConfigError of the
    files' mistakes or None): the experiments without a mistake are kept for validation."""
    from runner.config.errors import ConfigError
    from runner.config.expand import parse_overrides
    overrides = parse_overrides(args.overrides)
    if args.logdir:
        overrides.append(('train_parameters.logdir', args.logdir))
    try:
        return load_all(args.files, overrides, args.only), None
    except ConfigError as e:
        if not hasattr(e, 'passed'):
            raise
        return e.passed, e


def restarted_runs(names, experiments):
    """The run names the --restart NAMEs stand for (a name also stands for the runs it
    expanded into, as with --only); a ConfigError for a name that is no selected run's or
    a run that another live process trains."""
    from runner.queue import runlock
    from runner.config.checks import run_name_problem
    from runner.config.errors import ConfigError
    restarting = set()
    for arg in names:
        name = arg.rstrip('/')
        problem = run_name_problem(name)
        if problem:
            raise ConfigError(f"--restart {arg}: '{name}' {problem}; --restart only moves "
                              f"run directories inside logdir")
        runs = {e.run_name for e in experiments
                if e.run_name == name or e.run_name.startswith(name + '/')}
        if not runs:
            raise ConfigError(f"--restart: no selected experiment is named '{name}'")
        restarting |= runs
    for exp in experiments:
        if exp.run_name in restarting and runlock.holder(RunDir.of(exp)) is not None:
            raise ConfigError(locked_restart(exp))
    return restarting


def unwritable(checked):
    """'<experiment>: <why>' for the first run whose logdir cannot take it, or None."""
    for c in checked:
        problem = rundir.check_writable(c.exp.train_parameters.logdir, c.disk_bytes,
                                        RunDir.of(c.exp))
        if problem:
            return f'{c.exp.label}: {problem}'
    return None


def start_over(checked, restarting):
    """Move aside the run directories of the runs --restart names and of those whose settings
    changed before their first checkpoint; an exit status if that failed, else None."""
    from runner.queue import runlock
    for c in checked:
        run_dir = RunDir.of(c.exp)
        restart = c.exp.run_name in restarting and os.path.exists(run_dir)
        if not (restart or c.start_over):
            continue
        # Moved aside under the run's lock, which moves with it: never from under a process
        # that trains it.
        with runlock.RunLock(run_dir) as lock:
            if not lock.held:
                if restart:
                    print(f'error: {locked_restart(c.exp)}', file=sys.stderr)
                    return EXIT_CONFIG
                continue  # its holder trains it; this process will skip it
            try:
                moved = rundir.move_aside(run_dir)
            except OSError as e:
                print(f'error: {c.exp.label}: cannot move {run_dir} aside: {e.strerror}', file=sys.stderr)
                return EXIT_FAILED
        if restart:
            print(f'{c.exp.run_name}: old run moved to {moved}')
        else:
            print(f'{c.exp.run_name}: settings changed before its first checkpoint; starting it '
                  f'over (old run moved to {moved})')
    return None


def smoke_failed(checked, every=False, restarting=(), jobs=None, nothing='trained'):
    """The smoke run of `checked`; its failures listed on stderr. True if any failed."""
    from runner.queue import smoke
    # A search is smoke-tested at the corners of its space that change what is built.
    tried = [corner for c in checked for corner in (c.corners or [c])]
    failures = smoke.run_smoke(tried, every=every, restarting=restarting, jobs=jobs)
    if failures:
        print(f'\nsmoke test failed for {len(failures)} experiment(s); nothing was {nothing}:',
              file=sys.stderr)
        for exp, msg in failures:
            print(f'  {exp.label}: {msg}', file=sys.stderr)
    return bool(failures)


def locked_restart(exp):
    from runner.queue import runlock
    who = runlock.describe(runlock.holder(RunDir.of(exp))) or 'another process'
    return f"--restart {exp.run_name}: the run is training in {who}; stop it first"


if __name__ == '__main__':
    sys.exit(main())
