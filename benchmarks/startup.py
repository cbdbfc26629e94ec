"""Start-up: seconds from the command to a run's first training step (issue 31: at most twice
airbench's own start-up), the first time in a log directory and then again.

    python benchmarks/startup.py                          # cifar10_fast_muon: once cold, twice warm
    python benchmarks/startup.py FILE --only RUN --warm 3 --set KEY=VALUE ...

Each start is a fresh process of `run_experiments.py FILE --only RUN --no-smoke` in one log
directory, under a new run name each time, stopped (SIGTERM) as soon as it says that its
first step starts. The first start is cold for that log directory and for the decoded data
(`--cold-data` also gives it an empty cache directory; by default the decoded copies in the
user's cache are kept, as a second experiment on the same data would find them); the warm
ones find the `precision: fastest` verdict and the decoded data of the first. Each start is
split by the times of the lines it prints:

    checked          python, TensorFlow imported, the file and experiment checked: to its
                     `starting` line
    data             from its `reading the data` line to its next line (its `data:` notes
                     are the reading's)
    precision probe  `precision: fastest` timing both precisions, when it does
    the rest         model, initial weights or checkpoint, input pipeline, TensorBoard's
                     overview, to its first step

The floor, `python -c "import tensorflow"`, is printed too. A benchmark, not a test: it
asserts nothing. Record the figures in docs/benchmarks.md with the machine.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECIPE = os.path.join(ROOT, 'experiments', 'cifar10_fast_muon.yaml')


def start_once(cmd, env, run):
    """Start the run, stop it at its first step; [(seconds since the command, line)]."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        lines.append((time.monotonic() - t0, line.rstrip()))
        if re.match(rf'^{re.escape(run)} step \d+/\d+: training', line):
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate()
    if not re.match(rf'^{re.escape(run)} step ', lines[-1][1] if lines else ''):
        sys.exit(f'{run} did not reach its first step (exit {proc.returncode}):\n' +
                 '\n'.join(line for _, line in lines[-8:]))
    return lines


def phases(lines, run):
    """(checked, data, precision probe, the rest, total) in seconds from a start's lines: the
    data from `reading the data` to the next line of the run's own, the probe from its
    `timing` line to the next one."""
    def at(pattern, after=0.0):
        return next((t for t, line in lines if t >= after and re.match(pattern, line)), None)
    own = rf'^{re.escape(run)}[: ]'
    checked = at(rf'^{re.escape(run)}: (starting|resuming) \(')
    step = lines[-1][0]
    spans = []
    for begins in (rf'^{re.escape(run)}: reading the data', rf'^{re.escape(run)}: precision \w+: timing'):
        start = at(begins)
        end = None if start is None else next(t for t, line in lines if t > start and re.match(own, line))
        spans.append(0.0 if start is None else end - start)
    data, probe = spans
    return checked, data, probe, step - checked - data - probe, step


def import_seconds(env):
    start = time.monotonic()
    subprocess.run([sys.executable, '-c', 'import tensorflow'], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('file', nargs='?', default=RECIPE)
    p.add_argument('--only', default='cifar10_fast_muon', help='the run to start (default: %(default)s)')
    p.add_argument('--warm', type=int, default=2, help='warm starts after the cold one (default 2)')
    p.add_argument('--cold-data', action='store_true',
                   help='the cold start also decodes the data (an empty cache directory for all starts)')
    p.add_argument('--set', action='append', default=[], dest='overrides', metavar='KEY=VALUE')
    a = p.parse_args(argv)

    from time_to_accuracy import machine
    print(f'machine: {machine()}', flush=True)
    logdir = tempfile.mkdtemp(prefix='startup-')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    if a.cold_data:
        env['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='startup-cache-')
    print(f'python -c "import tensorflow": {import_seconds(env):.1f} s', flush=True)
    print('start | checked | data | precision probe | the rest | to step 1 (s)')
    for k in range(1 + a.warm):
        run = f'{a.only}_start{k}'
        cmd = [sys.executable, os.path.join(ROOT, 'run_experiments.py'), a.file, '--only', a.only,
               '--no-smoke', '--logdir', logdir, '--set', f'train_parameters.run_name={run}']
        for s in a.overrides:
            cmd += ['--set', s]
        figures = ' | '.join(f'{x:.1f}' for x in phases(start_once(cmd, env, run), run))
        print(f"{'cold' if k == 0 else 'warm'} | {figures}", flush=True)

if __name__ == '__main__':
    main()
