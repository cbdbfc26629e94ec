"""Two processes on one search (issue 30): how much of its wall time a process spends not
training (claiming a trial, opening the study, between trials; goal: under 2%), and, on the
same budget and seed, what the median pruner saves against no pruner: the training steps
trained and the best validation error each search found.

    python benchmarks/search.py                                   # the ResNet-20 recipe, shortened
    python benchmarks/search.py FILE --set search.trials=12 ...   # any search, any overrides
    python benchmarks/search.py --pruners median                  # one of the two searches

Each search runs in a fresh log directory as `--processes` plain processes of
run_experiments.py (--no-smoke) started at once. A process's share not training is 1 - (the
wall seconds its trials' summaries record) / (its wall time from its first trial's first step
to its exit): every claim, wait, check of a trial's values and trial set-up (model, weights,
run directory) counts; the tracing of each trial's step is in its summary's seconds, which
start just before the first step. It is printed again from the first trial's start, which
adds the process's one reading of the dataset; start-up and validation before that are left
out. Each process's exit is printed too: the seconds from its results table to its end, in
which the interpreter waits for input iterators still being deleted (runner.training.release).
A benchmark, not a test: it asserts nothing. Record the figures in docs/benchmarks.md
with the machine.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, 'experiments', 'search_resnet20_cifar10.yaml')
# The recipe shortened to minutes a trial: 2,000 steps, an evaluation every 250.
SHORT = ['train_parameters.lr_boundaries=[1000, 1500, 2000]', 'train_parameters.val_interval=250',
         'search.trials=8', 'search.startup_trials=2']


def run_process(cmd, env, out):
    """Run one process; record (time of its first trial's start, exit time, trials it trained)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    first, first_step, trials, errors, last_line = None, None, [], [], None
    for line in proc.stdout:
        last_line = time.monotonic()
        if line.startswith('error:'):
            errors.append(line.strip())
        m = re.match(r'^(\S+/trial\d+): (starting|resuming) \(', line)
        if m:
            first = first or time.monotonic()
            trials.append(m.group(1))
        if first_step is None and re.match(r'^\S+/trial\d+ step \d+/\d+: training', line):
            first_step = time.monotonic()
    proc.wait()
    out.append({'first': first, 'first_step': first_step, 'end': time.monotonic(), 'trials': trials,
                'rc': proc.returncode, 'errors': errors, 'last_line': last_line})


def search(files, sets, processes, logdir):
    """Run the search with `processes` processes; (their records, {trial run: summary})."""
    cmd = [sys.executable, os.path.join(ROOT, 'run_experiments.py'), *files, '--no-smoke',
           '--logdir', logdir]
    for s in sets:
        cmd += ['--set', s]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
    records = []
    threads = [threading.Thread(target=run_process, args=(cmd, env, records)) for _ in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summaries = {}
    for path, _, names in os.walk(logdir):
        if 'summary.json' in names and re.search(r'/trial\d+$', path):
            with open(os.path.join(path, 'summary.json')) as f:
                summaries[os.path.relpath(path, logdir)] = json.load(f)
    return records, summaries


def idle_share(record, summaries, since='first'):
    """The share of a process's wall time not spent in its trials, from its first trial's start
    (since='first': the process reads the dataset then, once) or from that trial's first step
    (since='first_step': only claims, waits and what passes between trials)."""
    if record[since] is None:
        return None
    wall = record['end'] - record[since]
    busy = sum(summaries.get(t, {}).get('wall_seconds', 0.0) for t in set(record['trials']))
    return max(0.0, 1 - busy / wall) if wall > 0 else None


def outcome(summaries):
    """(steps trained by every trial, the best validation top-1 error, trials pruned)."""
    steps = sum(s.get('steps', 0) for s in summaries.values())
    errors = [1 - s['best_val_top1_accuracy'] for s in summaries.values()
              if s.get('status') == 'finished' and s.get('best_val_top1_accuracy') is not None]
    pruned = sum(s.get('status') == 'pruned' for s in summaries.values())
    return steps, (min(errors) if errors else None), pruned


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('files', nargs='*', default=[RECIPE])
    p.add_argument('--set', action='append', default=None, dest='sets',
                   help='overrides for both searches (default: the recipe shortened)')
    p.add_argument('--processes', type=int, default=2)
    p.add_argument('--pruners', default='median,none',
                   help='the searches to run, by pruner (default: median,none; compared if both)')
    args = p.parse_args(argv)
    sets = SHORT if args.sets is None else args.sets
    sys.path.insert(0, ROOT)
    from runner.training import distribute
    print(f'machine: {distribute.cpu_description()}, load average {os.getloadavg()[0]:.1f}; '
          f'{args.processes} processes; {" ".join(args.files)} {" ".join(sets)}')
    rows = []
    for pruner in args.pruners.split(','):
        with tempfile.TemporaryDirectory(prefix=f'search-{pruner}-') as logdir:
            start = time.monotonic()
            records, summaries = search(args.files, sets + [f'search.pruner={pruner}'], args.processes, logdir)
            wall = time.monotonic() - start
        steps, best, pruned = outcome(summaries)
        rows.append((pruner, steps, best, pruned))
        between, shown = (', '.join('-' if x is None else f'{100 * x:.2f}%'
                                    for x in (idle_share(r, summaries, since) for r in records))
                          for since in ('first_step', 'first'))
        exits = ', '.join(f"{r['end'] - r['last_line']:.1f} s" for r in records if r['last_line'])
        print(f'pruner {pruner}: {len(summaries)} trials in {wall / 60:.1f} min; not training: {between} '
              f'of each process\'s wall time between trials ({shown} with its reading of the dataset '
              f'before its first trial; its exit after its results table: {exits}); '
              f'{steps} steps trained, {pruned} trials pruned, best '
              f'validation top-1 error {"-" if best is None else f"{100 * best:.2f}%"}'
              + ('' if all(r['rc'] == 0 for r in records) else
                 f'; exit statuses {[r["rc"] for r in records]}: {" ".join(e for r in records for e in r["errors"][:1])}'))
    if [r[0] for r in rows] != ['median', 'none']:
        return
    (_, with_steps, with_best, _), (_, without_steps, without_best, _) = rows
    if without_steps:
        print(f'median pruner against none: {without_steps - with_steps} steps saved '
              f'({100 * (1 - with_steps / without_steps):.0f}%); best validation error '
              f'{"-" if with_best is None else f"{100 * with_best:.2f}%"} against '
              f'{"-" if without_best is None else f"{100 * without_best:.2f}%"}')


if __name__ == '__main__':
    main()
