"""`python -m runner submit slurm` on a real single-node Slurm (conftest `slurm`: munged,
slurmctld, slurmd started for the session), as a user runs it: in a child process, with
`--wait`. Job arrays with at most N tasks at once, `scontrol requeue` in mid-training (the
run resumes bit for bit), a time limit shorter than the training (the run continues in the
next allocation), and the smoke test before anything is submitted.

Slurm's timing sets the pace: a requeued task waits cred_expire (5 s here) before it may
start again, and a one-minute limit (Slurm's smallest) leaves 20-50 s of each allocation;
the time-limit test's job is submitted first and runs while the others do.
"""
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, subprocess_env
from test_resilience import (assert_same_records, assert_same_weights, eval_records, experiment,  # noqa: F401
                             images, metrics, summary, train_records, write_yaml)

pytestmark = [pytest.mark.slow, pytest.mark.needs('slurm')]

SUBMIT_TIMEOUT = 420  # seconds for a whole submission: TensorFlow start-ups, Slurm's delays


class Submission:
    """`python -m runner submit slurm ARGS --wait` in a child process."""

    def __init__(self, tmp_path, *args):
        self.out_path = tmp_path / 'submit.out'
        with open(self.out_path, 'w') as out:
            self.proc = subprocess.Popen([sys.executable, '-m', 'runner', 'submit', 'slurm', *map(str, args),
                                          '--wait'], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env=subprocess_env(), stdin=subprocess.DEVNULL)

    @property
    def out(self):
        with open(self.out_path) as f:
            return f.read()

    def job_id(self, timeout=120):
        """The array's job id, once submit has printed it."""
        def submitted():
            m = re.search(r'^submitted Slurm job array (\d+)', self.out, re.M)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                pytest.fail(f'submit ended without submitting:\n{self.out}')
        return wait_for(submitted, timeout, 'submission')

    def finish(self):
        try:
            return self.proc.wait(SUBMIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f'submit --wait did not end within {SUBMIT_TIMEOUT}s:\n{self.out}')


def wait_for(value, timeout, what):
    """The first true value() within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = value()
        if v:
            return v
        time.sleep(0.2)
    pytest.fail(f'no {what} within {timeout}s')


def allocations(run_dir):
    """The header lines the job script writes to the task's output, one per allocation."""
    with open(os.path.join(run_dir, 'slurm.out')) as f:
        return re.findall(r'^=== .* Slurm job (\d+_\d+) on .*, allocation (\d+)$', f.read(), re.M)


def task_output(run_dir):
    with open(os.path.join(run_dir, 'slurm.out')) as f:
        return f.read()


def status_rows(capsys, logdir):
    from runner.queue import status
    capsys.readouterr()
    assert status.main([str(logdir)]) == 0
    out = capsys.readouterr().out
    return {line.split()[0]: line.split() for line in out.splitlines()[1:] if not line.startswith(' ')}, out


@pytest.fixture(scope='module', autouse=True)
def time_limited(request, tmp_path_factory):
    """The time-limit test's submission, started as this module starts when that test is
    selected: its job spends its minutes mostly waiting (for Slurm's signal, its requeue
    delay, paced steps), so the other tests run meanwhile. (submission, logdir, steps)."""
    name = test_time_limit_shorter_than_training_continues_in_the_next_allocation.__name__
    if not any(item.name == name for item in request.session.items):
        yield None
        return
    request.getfixturevalue('slurm')
    root = tmp_path_factory.mktemp('time-limit')
    logdir, steps = root / 'logs', 500
    path = write_yaml(root / 'c.yaml', experiment(
        request.getfixturevalue('images'), logdir, 'long', model='paced_cnn',
        model_parameters={'step_seconds': 0.1}, lr_values=[0.05], lr_boundaries=[steps],
        val_interval=250, log_interval=10))
    sub = Submission(root, path, '--time', '00:01:00', '--signal-lead', '10', '--no-smoke')
    yield sub, logdir, steps
    if sub.proc.poll() is None:
        sub.proc.kill()
        sub.proc.wait()


def test_array_of_three_with_max_parallel_two_trains_each_run_once(slurm, images, tmp_path, capsys):
    """(a) Three short experiments, --max-parallel 2: the third task waits (status: not
    started, with its array task), then every run finishes, each trained once, by its own
    task; --wait prints the results table and exits 0."""
    logdir = tmp_path / 'logs'
    names = ['one', 'two', 'three']
    path = write_yaml(tmp_path / 'a.yaml', *(
        experiment(images, logdir, name, lr_values=[0.05], lr_boundaries=[10], val_interval=10)
        for name in names))
    sub = Submission(tmp_path, path, '--max-parallel', '2', '--cpus-per-run', '1', '--mem-per-run', '1G',
                     '--no-smoke')
    job = sub.job_id()
    rows, out = status_rows(capsys, logdir)
    assert rows['three'][1:3] == ['not', 'started'] and rows['three'][-1] == f'{job}_2', out
    rc = sub.finish()
    assert rc == 0, sub.out
    assert re.search(r'^run +status .*\n(\S+ +finished .*\n){3}', sub.out, re.M), sub.out
    for k, name in enumerate(names):
        run_dir = os.path.join(logdir, name)
        s = summary(run_dir)
        assert s['status'] == 'finished' and s['steps'] == 10 and len(s['sessions']) == 1, s
        assert allocations(run_dir) == [(f'{job}_{k}', '1')], task_output(run_dir)
        assert task_output(run_dir).count(f'{name}: starting') == 1, task_output(run_dir)
        steps = [r['step'] for r in metrics(run_dir) if r['kind'] == 'train']
        assert steps == sorted(set(steps)) and steps[-1] == 10, steps
    rows, out = status_rows(capsys, logdir)
    assert [rows[n][1:3] for n in names] == [['finished', '10/10']] * 3, out
    assert [rows[n][-2:] for n in names] == [[socket.gethostname(), f'{job}_{k}'] for k in range(3)], out


def det(images, logdir, name, steps):
    """test_resilience's bit-exact experiment (deterministic ops, dropout), paced so that
    Slurm's stop lands in the middle of it."""
    return experiment(images, logdir, name, model='paced_cnn', deterministic=True,
                      model_parameters={'dropout': 0.3, 'step_seconds': 0.05},
                      lr_values=[0.1, 0.01], lr_boundaries=[steps // 2, steps], val_interval=23)


def test_scontrol_requeue_in_mid_training_resumes_bit_exact(slurm, images, tmp_path, capsys):
    """(b) `scontrol requeue` of a task in mid-training: the runner checkpoints on Slurm's
    SIGTERM (status: interrupted, with its array task), the task is requeued and resumes from
    that step in its second allocation, and the run ends bit-identical -- weights, train and
    evaluation records -- to the same deterministic run trained without a stop in the other task."""
    logdir = tmp_path / 'logs'
    steps = 120
    path = write_yaml(tmp_path / 'b.yaml', det(images, logdir, 'requeued', steps),
                      det(images, logdir, 'uninterrupted', steps))
    sub = Submission(tmp_path, path, '--max-parallel', '2', '--cpus-per-run', '1', '--no-smoke')
    job = sub.job_id()
    run_dir = os.path.join(logdir, 'requeued')
    wait_for(lambda: (summary(run_dir, missing_ok=True).get('steps') or 0) >= 30, 180, 'step 30')
    rows, out = status_rows(capsys, logdir)
    assert rows['requeued'][1] == 'running' and rows['requeued'][-2:] == [socket.gethostname(), f'{job}_0'], out
    slurm.scontrol('requeue', f'{job}_0')
    stopped = wait_for(lambda: summary(run_dir).get('status') == 'interrupted' and summary(run_dir), 60,
                       'interrupted summary')
    assert 30 <= stopped['steps'] < steps, stopped
    # Between its process's exit and the next allocation's claim (Slurm's requeue delay and
    # TensorFlow's start): interrupted, with the array task it belongs to.
    rows = wait_for(lambda: (lambda r: r[0]['requeued'][1] != 'running' and r)(status_rows(capsys, logdir)),
                    30, 'the stopped process to exit')
    assert rows[0]['requeued'][1] == 'interrupted' and rows[0]['requeued'][-1] == f'{job}_0', rows[1]

    rc = sub.finish()
    assert rc == 0, sub.out + task_output(run_dir)
    s = summary(run_dir)
    assert s['status'] == 'finished' and s['steps'] == steps, s
    assert [x['start_step'] for x in s['sessions']] == [0, stopped['steps']], s['sessions']
    assert [a[1] for a in allocations(run_dir)] == ['1', '2'], task_output(run_dir)
    assert "resuming from" in task_output(run_dir), task_output(run_dir)
    ref = os.path.join(logdir, 'uninterrupted')
    assert len(summary(ref)['sessions']) == 1
    assert_same_weights(os.path.join(run_dir, 'final.weights.h5'), os.path.join(ref, 'final.weights.h5'))
    assert_same_records(train_records(metrics(run_dir)), train_records(metrics(ref)),
                        f"train metrics of the run requeued at step {stopped['steps']}")
    assert_same_records(eval_records(metrics(run_dir)), eval_records(metrics(ref)),
                        f"evaluation metrics of the run requeued at step {stopped['steps']}")


def test_smoke_test_failure_submits_nothing(slurm, images, tmp_path):
    """The smoke test runs before anything is submitted: an experiment whose model fails at
    its first training step stops the submission (exit 1, its name and error), and Slurm has
    no job."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'bad.yaml', experiment(images, logdir, 'ok'), {
        **experiment(images, logdir, 'bad', module='test_resilience', model='crashes_in_training'),
        'model_parameters': {'crash_at_step': 1}})
    before = set(slurm.squeue('-o', '%A'))  # the time-limit test's job may be there
    r = subprocess.run([sys.executable, '-m', 'runner', 'submit', 'slurm', path], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r'^  \S*bad\.yaml: experiment 2 \(bad\): InvalidArgumentError', r.stderr, re.M), r.stderr
    assert 'nothing was submitted' in r.stderr
    assert set(slurm.squeue('-o', '%A')) <= before and not os.path.exists(logdir / 'slurm-jobs')


def test_what_sbatch_refuses_is_one_line(slurm, images, tmp_path):
    """An option Slurm refuses (a partition it does not have) is sbatch's own message in one
    `error:` line, exit 2."""
    path = write_yaml(tmp_path / 'p.yaml', experiment(images, tmp_path / 'logs', 'p'))
    r = subprocess.run([sys.executable, '-m', 'runner', 'submit', 'slurm', path, '--no-smoke',
                        '--partition', 'nosuch'], cwd=ROOT, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.startswith('error:')]
    assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stdout + r.stderr
    assert 'nosuch' in lines[0] and lines[0].startswith('error: sbatch: '), lines


def test_time_limit_shorter_than_training_continues_in_the_next_allocation(time_limited):
    """(c) --time 00:01:00 (Slurm's smallest) and 50 s of training: Slurm's warning signal
    (asked for 10 s before the limit; Slurm may send it earlier, sbatch(1)) stops the run at
    a checkpoint, the task requeues itself, and a later allocation resumes and finishes it --
    no step trained twice, never killed by the limit, exit 0. (Submitted as the module
    starts: see time_limited.)"""
    sub, logdir, steps = time_limited
    job = sub.job_id()
    rc = sub.finish()
    run_dir = os.path.join(logdir, 'long')
    assert rc == 0, sub.out + task_output(run_dir)
    s = summary(run_dir)
    assert s['status'] == 'finished' and s['steps'] == steps, s
    out = task_output(run_dir)
    assert len(allocations(run_dir)) >= 2, out
    assert 'stopped before the time limit; requeued' in out, out
    with open(logdir / 'slurm-jobs' / f'{job}_0.out') as f:  # Slurm's own messages
        assert 'DUE TO TIME LIMIT' not in f.read()  # stopped by the signal, never by the limit
    assert len(s['sessions']) >= 2 and s['sessions'][1]['start_step'] > 0, s['sessions']
    logged = [r['step'] for r in metrics(run_dir) if r['kind'] == 'train']
    assert logged == list(range(10, steps + 1, 10)), logged
