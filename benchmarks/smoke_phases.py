"""Where one smoke test's time goes, per phase (data, build, trace, steps, evaluation,
checkpoint, restore), for a few of the shipped networks; then the goals of the smoke run
(issue 24) measured on the shipped experiment files.

    python benchmarks/smoke_phases.py                         # the five networks, one process each
    python benchmarks/smoke_phases.py --only he2015_resnet20  # one of them
    python benchmarks/smoke_phases.py --goals                 # also the whole smoke run, cold and warm
    python benchmarks/smoke_phases.py --goals --no-phases --files experiments.yaml   # a subset

Each network's smoke test runs in a fresh process, as a smoke worker does (TensorFlow
imported, nothing traced yet), on synthetic data of the dataset's shape (no data needed).
`trace` is the Python trace of the train step alone; the first execution of its graph
(TensorFlow instantiating and optimising it, oneDNN creating its kernels) falls into `steps`, the evaluation step's trace into `evaluation`, the fresh model the
checkpoint is restored into into `restore`. The goals run the smoke run in this process as
the command does (validation, then the workers), on a fresh logdir, then again. A benchmark, not a test: it asserts nothing.
Results and the machine they were measured on: docs/smoke.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (run name, file): ResNet-20, pre-activation ResNet-1001, WRN-28-10, DenseNet-BC-190, ResNet-50.
NETWORKS = [('he2015_resnet20', 'experiments/he2015_resnet_cifar10.yaml'),
            ('he2016_preact_resnet1001', 'experiments/he2016_preact_resnet_cifar.yaml'),
            ('wrn_28_10', 'experiments/zagoruyko2016_wrn_cifar.yaml'),
            ('densenet_bc190_k40', 'experiments/huang2017_densenet_cifar.yaml'),
            ('resnet50_imagenet', 'experiments/imagenet_resnet.yaml')]
GOAL_COLD_SECONDS = 300       # every shipped experiment, nothing remembered, 2 cores
GOAL_WARM_SECONDS = 10        # the same again, nothing changed
GOAL_RESNET1001_SECONDS = 60  # one ResNet-1001 smoke test


def no_data_env():
    """The environment of a run with no data here: smoke tests use synthetic batches."""
    env = dict(os.environ, PYTHONPATH=ROOT, TFDS_DATA_DIR=tempfile.mkdtemp(prefix='no-data-'))
    return env


def measure_one(name, path):
    """In this process: the phases of one smoke test, as JSON on stdout."""
    from runner.queue import smoke
    from runner.config.expand import load_experiments
    exp = next(e for e in load_experiments(path, [('dataset.data_dir', None)]) if e.run_name == name)
    smoke.prepare_process()
    phases = smoke.Phases(echo=True)
    start = time.perf_counter()
    smoke.smoke_test(exp, phases)
    total = time.perf_counter() - start
    print(json.dumps({'name': name, 'model': exp.model, 'total': total, **phases.seconds}))


def phases_table(names):
    rows = []
    for name, path in NETWORKS:
        if names and name not in names:
            continue
        p = subprocess.run([sys.executable, __file__, '--one', name, path], cwd=ROOT, env=no_data_env(),
                           stdout=subprocess.PIPE, text=True)
        if p.returncode:
            print(p.stdout, file=sys.stderr)
            continue
        row = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(' | '.join([row['model']] + [f"{row.get(k, 0):.1f}" for k in
                                           ('build', 'trace', 'steps', 'evaluation', 'checkpoint',
                                            'restore', 'total')]), flush=True)
    return rows


def shipped_files():
    return (['experiments.yaml'] + sorted(os.path.join('experiments', f)
                                          for f in os.listdir(os.path.join(ROOT, 'experiments'))
                                          if f.endswith('.yaml')))


def goals(files, jobs):
    """The smoke run of `files` as the command runs it (validation first), cold (nothing
    remembered) and again with nothing changed; seconds of each."""
    from runner import cli
    from runner.queue import smoke
    from runner.training import distribute
    os.environ['TFDS_DATA_DIR'] = no_data_env()['TFDS_DATA_DIR']
    logdir = tempfile.mkdtemp(prefix='smoke-goals-')
    overrides = [('dataset.data_dir', None), ('train_parameters.logdir', logdir)]
    start = time.perf_counter()
    distribute.quiet_tensorflow()
    checked = cli.validate(cli.load_all([os.path.join(ROOT, f) for f in files], overrides), need_data=False)
    validation = time.perf_counter() - start
    times = []
    for _ in ('cold', 'warm'):
        start = time.perf_counter()
        failures = smoke.run_smoke(checked, jobs=jobs)
        times.append(time.perf_counter() - start)
        if failures:
            print(f'{len(failures)} failed', file=sys.stderr)
    return validation, times[0], times[1], len(checked)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--only', action='append', default=[], help='run name(s) of NETWORKS to measure')
    p.add_argument('--goals', action='store_true', help='also time the smoke run of every shipped file')
    p.add_argument('--files', nargs='*', default=[], help='with --goals: these files instead')
    p.add_argument('--jobs', type=int, default=None, help='with --goals: --smoke-jobs (default: cores)')
    p.add_argument('--no-phases', action='store_true', help='only the goals')
    p.add_argument('--one', nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        measure_one(*args.one)
        return
    rows = []
    if not args.no_phases:
        print('network | build | trace | steps | evaluation | checkpoint | restore | total (s)')
        rows = phases_table(args.only)
    for row in rows:
        if row['model'] == 'cifar_resnet1001':
            print(f"goal: ResNet-1001 smoke test under {GOAL_RESNET1001_SECONDS} s: {row['total']:.0f} s "
                  f"({'met' if row['total'] < GOAL_RESNET1001_SECONDS else 'missed'})")
    if args.goals:
        files = args.files or shipped_files()
        validation, cold, warm, n = goals(files, args.jobs)
        print(f'{n} experiments of {len(files)} file(s): validation {validation:.0f} s (not the smoke run)')
        print(f'goal: every experiment smoke-tested cold under {GOAL_COLD_SECONDS} s: {cold:.0f} s '
              f"({'met' if cold < GOAL_COLD_SECONDS else 'missed'})")
        print(f'goal: nothing changed under {GOAL_WARM_SECONDS} s: {warm:.1f} s '
              f"({'met' if warm < GOAL_WARM_SECONDS else 'missed'})")

if __name__ == '__main__':
    main()
