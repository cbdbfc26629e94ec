"""A share of the queue and the queue's state (issue 21), without Slurm: --index (a Kubernetes
Indexed Job's task), --shard, --list's index column, `python -m runner status` on runs in
every state, `submit slurm --dry-run`, and the workstation recipe -- one plain process per
GPU on one file and one logdir, kept apart by the run claims.

The Slurm side (job arrays, requeue, time limits) is in test_slurm.py, on a real Slurm.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, one_line_error, subprocess_env
from test_resilience import experiment, images, metrics, run_cli, summary, write_yaml  # noqa: F401

pytestmark = pytest.mark.slow


def short(images, logdir, name, steps=4, **train):
    train = {'lr_values': [0.05], 'lr_boundaries': [steps], 'log_interval': 2,
             'val_interval': steps, 'checkpoint_interval': 2, **train}
    return experiment(images, logdir, name, **train)


def three_runs(images, tmp_path, **train):
    """`a` repeated twice (a/seed0, a/seed1) and `b`: indices 0, 1, 2."""
    logdir = tmp_path / 'logs'
    a = {**short(images, logdir, 'a', **train), 'repeats': 2}
    return write_yaml(tmp_path / 'q.yaml', a, short(images, logdir, 'b', **train)), logdir


def trained(logdir):
    return sorted(os.path.relpath(os.path.dirname(p), logdir)
                  for p in _walk(logdir) if p.endswith('summary.json'))


def _walk(root):
    for path, _, files in os.walk(root):
        for f in files:
            yield os.path.join(path, f)


def test_index_and_shard_select_runs_in_file_order(images, tmp_path, capsys):
    """--list numbers the runs in file order after `repeats` expands; --index K trains run K
    alone (as a Kubernetes Indexed Job's task does with --index $JOB_COMPLETION_INDEX);
    --shard I/N trains the runs K with K mod N = I; an index out of range, or a shard that is
    not I/N, is one line and exit 2."""
    path, logdir = three_runs(images, tmp_path)
    rc, out, err = run_cli(capsys, path, '--list')
    assert rc == 0, err
    rows = [line.split()[:2] for line in out.splitlines()[1:]]
    assert rows == [['0', 'a/seed0'], ['1', 'a/seed1'], ['2', 'b']], out
    rc, out, err = run_cli(capsys, path, '--list', '--shard', '1/2')
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [['1', 'a/seed1']], out

    os.environ['JOB_COMPLETION_INDEX'] = '2'  # what Kubernetes sets in an Indexed Job's pod
    try:
        rc, out, err = run_cli(capsys, path, '--no-smoke', '--index', os.environ['JOB_COMPLETION_INDEX'])
    finally:
        del os.environ['JOB_COMPLETION_INDEX']
    assert rc == 0, out + err
    assert trained(logdir) == ['b'], out
    rc, out, err = run_cli(capsys, path, '--no-smoke', '--shard', '0/2')
    assert rc == 0, out + err
    assert trained(logdir) == ['a/seed0', 'b'], out
    assert re.search(r'^b: finished at step 4; skipped', out, re.M), out  # trained once

    from runner import cli
    one_line_error(capsys, cli.main([path, '--index', '3']), 2, '--index 3', 'out of range', '3 runs')
    one_line_error(capsys, cli.main([path, '--shard', '2/2']), 2, '--shard', "'2/2'")
    one_line_error(capsys, cli.main([path, '--shard', 'x']), 2, '--shard', "'x'")


def status_lines(capsys, logdir):
    from runner.queue import status
    capsys.readouterr()
    assert status.main([str(logdir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ['run', 'status', 'steps', 'last', 'error', 'host', 'Slurm', 'job'], out
    return {line.split()[0]: line for line in lines[1:] if not line.startswith('  ')}, out


def test_status_shows_each_run_as_it_is(images, tmp_path, capsys):
    """`python -m runner status LOGDIR`: finished (step of total, test error), failed and
    diverged (with their message), running (a live process holds the run's lock: its host),
    interrupted (summary says running but no process holds it: killed), and a directory that
    is not a log directory is one line, exit 2. It imports no TensorFlow."""
    import socket
    from runner.queue import runlock
    logdir = tmp_path / 'logs'
    path = write_yaml(
        tmp_path / 's.yaml',
        short(images, logdir, 'done', steps=6),
        short(images, logdir, 'nan', steps=10, lr_values=[0.05, 1e30], lr_boundaries=[4, 10]),
        {**short(images, logdir, 'crash', steps=6), 'module': 'test_resilience',
         'model': 'crashes_in_training', 'model_parameters': {'crash_at_step': 3}},
        short(images, logdir, 'killed', steps=6))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 1, out + err
    # A process killed by SIGKILL leaves its summary saying `running`.
    killed = summary(os.path.join(logdir, 'killed'))
    killed.update(status='running', steps=4)
    with open(os.path.join(logdir, 'killed', 'summary.json'), 'w') as f:
        json.dump(killed, f)

    with runlock.RunLock(os.path.join(logdir, 'done')) as lock:  # as a second training process
        assert lock.held
        rows, out = status_lines(capsys, logdir)
        assert rows['done'].split()[1:3] == ['running', '6/6'], out
    host = socket.gethostname()
    rows, out = status_lines(capsys, logdir)
    assert sorted(rows) == ['crash', 'done', 'killed', 'nan'], out
    done = summary(os.path.join(logdir, 'done'))
    assert rows['done'].split()[:6] == ['done', 'finished', '6/6', 'test',
                                        f"{100 * (1 - done['test_top1_accuracy']):.2f}%", host], out
    assert rows['nan'].split()[1] == 'diverged', out
    assert rows['crash'].split()[1:3] == ['failed', '2/6'], out
    assert rows['killed'].split()[1:3] == ['interrupted', '4/6'], out
    assert re.search(r'^  nan: loss or gradient became NaN', out, re.M), out
    assert re.search(r'^  crash: .*simulated failure in the model', out, re.M), out
    assert re.search(r'^  killed: its process ended at step 4', out, re.M), out

    # Fast: no TensorFlow (a login node, a watch loop).
    code = ('import sys, runner.__main__ as m; rc = m.main(["status", sys.argv[1]]); '
            'assert "tensorflow" not in sys.modules, "status imported TensorFlow"; sys.exit(rc)')
    r = subprocess.run([sys.executable, '-c', code, str(logdir)], capture_output=True, text=True,
                       env=subprocess_env(), cwd=ROOT, timeout=60)
    assert r.returncode == 0 and 'finished' in r.stdout, r.stdout + r.stderr
    from runner.queue import status
    one_line_error(capsys, status.main([str(tmp_path / 'nowhere')]), 2, 'nowhere')


def test_submit_dry_run_prints_the_job_script_of_the_unfinished_runs(images, tmp_path, capsys):
    """--dry-run prints the job script and submits nothing: an array over the runs not finished
    (run 1 is), at most --max-parallel at once, requeue, the stop signal half a one-minute
    limit before it, append mode, the resources asked for, and each task's command: the same
    files, --only, --set and --logdir, plus --index K --no-smoke. A wrong option is one line."""
    from runner import rundir
    from runner.queue import slurm
    path, logdir = three_runs(images, tmp_path)
    rc, out, err = run_cli(capsys, path, '--no-smoke', '--index', '1')
    assert rc == 0, out + err
    capsys.readouterr()
    other = tmp_path / 'elsewhere'
    rc = slurm.main(['slurm', path, '--only', 'a,b', '--set', 'train_parameters.log_interval=1',
                     '--logdir', str(other), '--dry-run', '--time', '00:01:00', '--max-parallel', '2',
                     '--cpus-per-run', '1', '--mem-per-run', '2G', '--gpus-per-run', '1',
                     '--partition', 'gpu', '--account', 'lab', '--qos', 'normal',
                     '--sbatch', 'constraint=a100'])
    out, err = capsys.readouterr()
    assert rc == 0, err
    # --logdir elsewhere: nothing there is finished yet, so all three.
    assert '#SBATCH --array=0-2%2' in out, out
    rc = slurm.main(['slurm', path, '--dry-run', '--time', '00:01:00', '--max-parallel', '2'])
    script, err = capsys.readouterr()
    assert rc == 0, err
    for line in ('#SBATCH --array=0,2%2', '#SBATCH --requeue', '#SBATCH --open-mode=append',
                 '#SBATCH --signal=B:USR1@30', '#SBATCH --time=00:01:00', '#SBATCH --ntasks=1'):
        assert line in script.splitlines(), f'{line} missing:\n{script}'
    assert re.search(r"-m runner train \S*q\.yaml --no-smoke --index \"\$SLURM_ARRAY_TASK_ID\" &$",
                     script, re.M), script
    assert f"[0]={logdir / 'a' / 'seed0'}" in script and f"[2]={logdir / 'b'}" in script, script
    assert subprocess.run(['bash', '-n'], input=script, text=True).returncode == 0
    for line in ('#SBATCH --cpus-per-task=1', '#SBATCH --mem=2G', '#SBATCH --gres=gpu:1',
                 '#SBATCH --partition=gpu', '#SBATCH --account=lab', '#SBATCH --qos=normal',
                 '#SBATCH --constraint=a100'):
        assert line in out.splitlines(), f'{line} missing:\n{out}'
    assert "--only a,b --set train_parameters.log_interval=1 --logdir " in out, out
    assert not os.path.exists(os.path.join(logdir, rundir.SLURM_JOBS_DIR))  # nothing submitted

    one_line_error(capsys, slurm.main(['slurm', path, '--time', '5x']), 2, '--time', "'5x'")
    one_line_error(capsys, slurm.main(['slurm', path, '--sbatch', 'array=0-3']), 2, "'array'")
    one_line_error(capsys, slurm.main(['slurm', path, '--mem-per-run', 'lots']), 2, '--mem-per-run')
    one_line_error(capsys, slurm.main(['pbs', path]), 2, "'pbs'")


def test_workstation_recipe_two_processes_split_the_queue(images, tmp_path):
    """README's workstation recipe, as written: one plain process per GPU, started at once on
    one file and one logdir. The run claims split the queue: each run is trained by exactly
    one of them, once, both take part, and both exit 0."""
    logdir = tmp_path / 'logs'
    runs = ['r0', 'r1', 'r2', 'r3']
    path = write_yaml(tmp_path / 'w.yaml', *(
        {**short(images, logdir, name, steps=40), 'model': 'paced_cnn',
         'model_parameters': {'step_seconds': 0.05}} for name in runs))
    # README: `for gpu in 0 1; do CUDA_VISIBLE_DEVICES=$gpu python run_experiments.py FILE
    # --no-smoke > gpu$gpu.log 2>&1 & done; wait`
    procs = []
    for gpu in (0, 1):
        with open(tmp_path / f'gpu{gpu}.log', 'w') as log:
            procs.append(subprocess.Popen(
                [sys.executable, 'run_experiments.py', path, '--no-smoke'], cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, env=subprocess_env(CUDA_VISIBLE_DEVICES=str(gpu))))
    codes = [p.wait(300) for p in procs]
    outs = [open(tmp_path / f'gpu{gpu}.log').read() for gpu in (0, 1)]
    assert codes == [0, 0], '\n'.join(outs)
    starts = {name: [gpu for gpu in (0, 1) if re.search(rf'^{name}: starting', outs[gpu], re.M)]
              for name in runs}
    assert all(len(by) == 1 for by in starts.values()), (starts, outs)
    assert {by[0] for by in starts.values()} == {0, 1}, f'one process trained everything: {starts}'
    for name in runs:
        s = summary(os.path.join(logdir, name))
        assert s['status'] == 'finished' and len(s['sessions']) == 1, s
        steps = [m['step'] for m in metrics(os.path.join(logdir, name)) if m['kind'] == 'train']
        assert steps == sorted(set(steps)) and steps[-1] == 40, steps
