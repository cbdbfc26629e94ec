"""Wall-clock time to 90 / 93 / 94% CIFAR-10 test accuracy of a recipe, trained by the runner.

    python ../shared/tools/make_tfds_cifar10.py .cache/tfds    # once
    python benchmarks/time_to_accuracy.py                       # experiments/cifar10_fast.yaml
    python benchmarks/time_to_accuracy.py --only cifar10_fast --eval-every 25
    python benchmarks/time_to_accuracy.py --steps 4 --eval-every 2   # a quick check that it works

Trains every experiment of the recipe (or those named by --only) from scratch in a fresh
log directory, with an evaluation of the test split every --eval-every steps (default:
an epoch of CIFAR-10's 50,000 training images) so that the moment a target is passed is
seen; the recipe's own eval_tta and ema_decay apply to these evaluations. Then prints, per
target, the first evaluation at or above it:

    step, epoch        where it happened
    train s            training time to that step: the run's wall time (metrics.jsonl
                       wall_seconds) less the time spent in the measuring evaluations
                       (eval_seconds of each), i.e. as if the run had not been watched
    time to target     start-up (data loading, model building: the process time outside
                       the training loop) + train s + one evaluation: what a run that
                       stopped there and checked would take

and the final test accuracy of the averaged/TTA weights, as the run reports it. It states
the machine it ran on; run it on an otherwise idle machine. A benchmark, not a test: it
asserts nothing.
"""
import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CIFAR10_TRAIN_IMAGES = 50000


def machine():
    """One line naming the CPU, its widest vector instructions, its cores, whether
    TensorFlow runs its oneDNN kernels, and the load when the benchmark started."""
    import runner.compat  # first: it sets TensorFlow's CPU-kernel switch before TensorFlow loads
    from runner.training.distribute import cpu_description
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'
    kernels = 'on' if runner.compat.onednn_enabled() else 'off'
    return f'{cpu_description()}, no GPU in use, oneDNN kernels {kernels}; load average {load}'


def crossings(records, targets):
    """{target: (eval record, train seconds)} for the first evaluation at or above each target."""
    evals = sorted((r for r in records if r.get('kind') == 'test'), key=lambda r: r['step'])
    out, measuring = {}, 0.0
    for r in evals:
        measuring += r.get('eval_seconds', 0.0)
        for t in targets:
            if t not in out and r['top1_accuracy'] >= t / 100:
                out[t] = (r, r['wall_seconds'] - measuring)
    return out, evals


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('recipe', nargs='?', default=os.path.join(ROOT, 'experiments', 'cifar10_fast.yaml'))
    p.add_argument('--data-dir', default=os.path.join(ROOT, '.cache', 'tfds'),
                   help='TFDS data_dir holding cifar10 (default: .cache/tfds of the repository)')
    p.add_argument('--only', help='run names to train (comma-separated; default: all of the recipe)')
    p.add_argument('--eval-every', type=int, help='steps between evaluations (default: one epoch)')
    p.add_argument('--steps', type=int, help='stop after this many steps (a quick check; the '
                                             'schedule is still the recipe\'s)')
    p.add_argument('--targets', default='90,93,94', help='accuracies in %% (default 90,93,94)')
    p.add_argument('--logdir', help='where the runs go (default: a new temporary directory)')
    p.add_argument('--set', action='append', default=[], dest='overrides', metavar='KEY=VALUE',
                   help='further overrides, as run_experiments.py --set')
    a = p.parse_args()
    targets = [float(t) for t in a.targets.split(',')]
    logdir = a.logdir or tempfile.mkdtemp(prefix='time-to-accuracy-')

    print(f'machine: {machine()}', flush=True)
    from runner import cli, rundir
    from runner.config.expand import load_experiments, parse_overrides
    experiments = load_experiments(a.recipe, parse_overrides(a.overrides))
    names = a.only.split(',') if a.only else [e.run_name for e in experiments]
    import tensorflow as tf
    print(f'TensorFlow {tf.__version__}; recipe {a.recipe}; runs in {logdir}', flush=True)

    results = []
    for exp in experiments:
        if exp.run_name not in names:
            continue
        tp = exp.train_parameters
        epoch = CIFAR10_TRAIN_IMAGES / tp.batch_size
        every = a.eval_every or math.ceil(epoch)
        sets = [f'dataset.data_dir={a.data_dir}', f'train_parameters.val_interval={every}'] + a.overrides
        if a.steps:
            sets.append(f'train_parameters.steps={a.steps}')
        argv = [a.recipe, '--no-smoke', '--only', exp.run_name, '--logdir', logdir]
        for s in sets:
            argv += ['--set', s]
        print(f'\n== {exp.run_name}: {exp.model}, batch {tp.batch_size}, {exp.total_steps} steps '
              f'(~{exp.total_steps / epoch:.1f} epochs), eval_tta {tp.eval_tta}, ema_decay '
              f'{tp.ema_decay}; evaluating every {every} steps', flush=True)
        start = time.time()
        code = cli.main(argv)
        elapsed = time.time() - start
        run_dir = os.path.join(logdir, exp.run_name)
        summary = rundir.read_summary(run_dir) or {}
        found, evals = crossings(rundir.read_metrics(run_dir), targets)
        startup = max(elapsed - summary.get('wall_seconds', elapsed), 0.0)
        results.append((exp, code, summary, found, evals, startup, elapsed, epoch))

    print(f'\nmachine: {machine()}')
    for exp, code, summary, found, evals, startup, elapsed, epoch in results:
        mean_eval = sum(r['eval_seconds'] for r in evals) / max(len(evals), 1)
        print(f'\n{exp.run_name} ({summary.get("status", "no summary")}, exit {code}): '
              f'{summary.get("steps")} steps, {summary.get("train_images_per_second")} train images/s, '
              f'start-up {startup:.0f} s, one evaluation {mean_eval:.0f} s '
              f'(weights: {summary.get("evaluated_weights")}, TTA {summary.get("eval_tta")})')
        print(f'  {"target":>7}  {"step":>5}  {"epoch":>6}  {"accuracy":>8}  {"train s":>8}  '
              f'{"time to target":>14}')
        for t in targets:
            if t not in found:
                print(f'  {t:>6g}%  {"not reached":>38}')
                continue
            r, train_s = found[t]
            total = startup + train_s + r.get('eval_seconds', 0.0)
            print(f'  {t:>6g}%  {r["step"]:>5}  {r["step"] / epoch:>6.2f}  {r["top1_accuracy"]:>8.2%}  '
                  f'{train_s:>8.0f}  {total:>9.0f} s = {total / 60:.1f} min')
        if 'test_top1_accuracy' in summary:
            print(f'  final test accuracy {summary["test_top1_accuracy"]:.2%} at step '
                  f'{summary["steps"]}; whole run {elapsed:.0f} s with {len(evals)} evaluations')


if __name__ == '__main__':
    main()
