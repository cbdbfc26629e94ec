"""Runs that survive what users and machines do to them (issue 19): one process per run,
run names that stay inside logdir, checkpoints to fall back on, full disks, damaged files,
signals at any moment, bad experiment files.

Real processes where the behaviour is a process's: two runners on one queue, signals,
damaged checkpoints on disk. The data is test_resilience's small image folder.
"""
import glob
import json
import os
import re
import signal

import pytest

from conftest import one_line_error
from test_resilience import Child, event_steps, images, metrics, run_cli, summary, write_yaml  # noqa: F401
from test_resilience import experiment as resilience_experiment

pytestmark = pytest.mark.slow


def experiment(images, logdir, run_name, steps=30, **train):
    return resilience_experiment(images, logdir, run_name, lr_values=[0.05], lr_boundaries=[steps],
                                 **train)


def assert_trained_once(run_dir, steps):
    """One event file, every logged step once and in order, finished at `steps`."""
    assert len(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))) == 1, os.listdir(run_dir)
    logged = [r['step'] for r in metrics(run_dir) if r['kind'] == 'train']
    assert logged == sorted(set(logged)) and logged[-1] == steps, logged
    assert event_steps(run_dir)['train/loss'] == logged
    assert summary(run_dir)['status'] == 'finished'


# ---------------------------------------------------------------------------
# One process per run

def test_two_processes_on_one_queue_never_train_a_run_twice(images, tmp_path, capsys):
    """Process A trains `a` and is paused (SIGSTOP) while it holds the run. Meanwhile --list
    and report show `a` running, --restart a is refused in one line, and process B, on the
    same file and logdir, skips `a` in one line and trains `b` and `c`. A, continued, finishes
    `a` and skips the runs B finished. Both exit 0; every run was trained by one process."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'q.yaml', *(experiment(images, logdir, name) for name in 'abc'))
    a = Child([path, '--no-smoke'], tmp_path / 'a.err')
    try:
        a.wait_for(r'^a step 10/')  # after its first checkpoint and summary
        a.kill(signal.SIGSTOP)

        rc, out, err = run_cli(capsys, path, '--list')
        assert rc == 0, err
        assert re.search(rf'^a .*running in \S+ pid {a.proc.pid}$', out, re.M), out
        assert re.search(r'^b .* -$', out, re.M), out
        from runner import report
        runs, _ = report.find_runs(str(logdir))
        assert [r['status'] for r in runs if r['name'] == 'a'] == ['running'], runs

        rc = run_cli_code(capsys, path, '--no-smoke', '--restart', 'a')
        line = one_line_error(capsys, rc, 2, '--restart a', f'pid {a.proc.pid}')
        assert 'stop it first' in line
        assert not glob.glob(str(logdir / 'a.restarted-*'))

        b = Child([path, '--no-smoke'], tmp_path / 'b.err')
        assert b.finish() == 0, b.stdout + b.stderr
        assert re.search(rf'^a: running in \S+ pid {a.proc.pid}; skipped$', b.stdout, re.M), b.stdout
        assert not re.search(r'^a: (starting|resuming)', b.stdout, re.M), b.stdout
        for name in 'bc':
            assert re.search(rf'^{name}: starting ', b.stdout, re.M), b.stdout
    finally:
        a.kill(signal.SIGCONT)
    assert a.finish() == 0, a.stdout + a.stderr
    for name in 'bc':
        assert re.search(rf'^{name}: finished at step 30; skipped', a.stdout, re.M), a.stdout
    assert not re.search(r'^[bc]: (starting|resuming)', a.stdout, re.M), a.stdout
    for name in 'abc':
        assert_trained_once(os.path.join(logdir, name), 30)


def run_cli_code(capsys, *argv):
    """Exit status of `run_experiments.py ARGV` in this process, its output left for capsys."""
    from runner import cli
    capsys.readouterr()
    return cli.main([str(a) for a in argv])
