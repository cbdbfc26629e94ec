"""A search in the queue: its validation, its corners for the smoke run, the loop that trains
its trials one after another in this process, and its line in `--list`.

The queue (runner.cli) hands a search here as one entry. Every process given that entry
trains trials of the shared study until the study has none left for it: a new one while
fewer than `search.trials` exist, or one whose process died. A trial is a run like any
other (<run_name>/trial<k>: lock, checkpoints, exact resume, TensorBoard, summary); its
objective is the best validation top-1 error, the number that selects its best checkpoint
(Session.evaluate); each evaluation's error is reported to Optuna's pruner, and a trial the
pruner stops ends `pruned`. The test error is recorded as the trial's user attribute
`test_top1_error`, never told to the study.
"""
import dataclasses
import os
import re
import sys

from runner import rundir
from runner.common import DONE
from runner.config.errors import ConfigError
from runner.rundir import RunDir
from runner.search import space, study as study_lib



def is_search(exp):
    return bool(exp.search.space)


def check_search(exp, check_run):
    """Validate a search before anything runs: its space, the schema at every corner of it,
    each corner that changes what is built (through `check_run(exp)`, the queue's check of a
    run, which builds the model), and its study's storage. Returns the Checked of each built
    corner, the first being the largest (its params stand for the search's)."""
    dists = space.distributions_of(exp)
    for values in space.corners(dists):
        space.trial_experiment(exp, values, study_lib.trial_run_name(exp, 0))
    # The largest corner under the search's own name (the smoke run's line for it), the others
    # beside it.
    built = [check_run(space.trial_experiment(exp, values, f'{exp.run_name}/corner{k}' if k else exp.run_name))
             for k, values in enumerate(space.built_corners(dists))]
    try:
        study_lib.Search(exp, dists, create=False).check_space()
    except study_lib.StudyUnavailable as e:
        raise ConfigError(str(e)) from None
    return built


def checked_search(exp, check_run):
    """The queue's Checked of a search: its largest corner's, the search's experiment in it
    and every built corner beside (for the smoke run); a ConfigError labelled as any."""
    try:
        corners = check_search(exp, check_run)
    except ConfigError as e:
        # A corner's own check (check_run) has labelled its error already, with the corner's name.
        text = str(e)
        raise ConfigError(text if text.startswith(exp.position) else f'{exp.label}: {text}') from None
    return dataclasses.replace(corners[0], exp=exp, corners=corners)


def progress_text(exp):
    """`--list`'s status of a search: 'search: 3/24 trials (1 pruned), 1 running'."""
    try:
        found = study_lib.Search(exp, space.distributions_of(exp), create=False)
    except study_lib.StudyUnavailable as e:
        return f'search: {e}'
    counts = found.counts() if found.study is not None else {}
    done = counts.get('complete', 0) + counts.get('pruned', 0) + counts.get('fail', 0)
    extra = [f'{counts[k]} {k}' for k in ('pruned', 'fail') if counts.get(k)]
    text = f"search: {done}/{exp.search.trials} trials done" + (f" ({', '.join(extra)})" if extra else '')
    if counts.get('running'):
        text += f", {counts['running']} running or interrupted"
    return text


def run_search(exp, check_run, train_run):
    """Train trials of the search `exp` in this process until it has none left here; the
    summary of each. `check_run(exp)` validates a trial's run (the queue's Checked), and
    `train_run(checked, run_dir, on_evaluation, read=...)` trains that claimed run, reading its
    dataset with `read`; its summary."""
    from runner.data.loader import LastRead  # TensorFlow: not for `--list`'s progress_text
    search = study_lib.Search(exp, space.distributions_of(exp))
    # The trials of one process read the dataset once: reading CIFAR-10 again took each trial
    # seconds (docs/benchmarks.md, the search's share not training).
    read = LastRead()
    results = []
    while True:
        claim = search.claim_next()
        if claim is None:
            break
        try:
            run = space.trial_experiment(exp, claim.values, study_lib.trial_run_name(exp, claim.number))
            if claim.resumed:
                print(f'{run.run_name}: trial {claim.number} of the search was left unfinished by '
                      f'its process; resuming it', flush=True)
            summary = _train_trial(run, claim, check_run, lambda *a: train_run(*a, read=read))
            search.tell(claim, summary)
        finally:
            claim.lock.release()
        results.append(summary)
        if summary.get('status') == 'interrupted':
            break  # the person asked to stop; the trial stays claimable for the next process
    if not results:
        print(f'{exp.run_name}: search: all {exp.search.trials} trials are taken or done', flush=True)
    return results


def _train_trial(run, claim, check_run, train_run):
    """The trial's run, claimed: trained, or what it ended as if its process died before it
    told the study (finished, pruned) or left it unreadable."""
    run_dir = RunDir.of(run)
    previous = rundir.read_summary(run_dir)
    if rundir.is_finished(previous, run.total_steps) or (previous or {}).get('status') == 'pruned':
        return previous
    problem = rundir.damaged(run_dir)
    try:
        if problem:
            raise ConfigError(f'{problem}; the trial is told failed (its files are left for a look)')
        checked = check_run(run)
    except ConfigError as e:
        print(f'error: {run.run_name}: {e}', file=sys.stderr, flush=True)
        return {'run_name': run.run_name, 'status': 'failed', 'error': str(e)}
    summary = train_run(checked, run_dir, claim.reporter())
    if summary.get('status') == 'pruned':
        print(f'{run.run_name}: pruned at step {summary.get("steps")} (its validation error lags '
              f'the other trials\' at that step); its checkpoint is kept', flush=True)
    return summary


def trial_summaries(exp):
    """The summaries of the search's trials found in its directory, by trial number, and
    whether every trial of its budget has ended finished or pruned (`submit slurm --wait`)."""
    base = RunDir.of(exp)
    names = os.listdir(base) if os.path.isdir(base) else []
    numbers = sorted(int(n[len('trial'):]) for n in names if re.fullmatch(r'trial\d+', n))
    found = [rundir.read_summary(os.path.join(base, f'trial{k}')) for k in numbers]
    found = [s for s in found if s]
    return found, sum(s.get('status') in DONE for s in found) >= exp.search.trials
