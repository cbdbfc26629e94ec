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


# ---------------------------------------------------------------------------
# Run names are names, not paths

def tiny_yaml(images, logdir, *names):
    return write_yaml(os.path.join(os.path.dirname(str(logdir)), 'names.yaml'),
                      *(experiment(images, logdir, n) for n in names))


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize('name', ['../../../tmp/x', 'a/../../b', '..', '.', './a', 'a/.', '/abs/x',
                                  'a//b', '.hidden', 'x/../y'])
def test_a_run_name_that_is_a_path_is_refused(images, tmp_path, capsys, name):
    """Every part of a run name is a plain name: nothing written anywhere, one line, exit 2."""
    logdir = tmp_path / 'box' / 'deep' / 'logs'
    logdir.parent.mkdir(parents=True)
    path = tiny_yaml(images, logdir, name)
    before = tree(tmp_path)
    rc = run_cli_code(capsys, path, '--no-smoke')
    one_line_error(capsys, rc, 2, 'train_parameters.run_name', repr(name))
    assert tree(tmp_path) == before and not os.path.exists('/abs')


def test_a_run_name_set_on_the_command_line_is_checked_too(images, tmp_path, capsys):
    path = tiny_yaml(images, tmp_path / 'logs', 'ok')
    rc = run_cli_code(capsys, path, '--no-smoke', '--set', 'train_parameters.run_name=x/../../y')
    one_line_error(capsys, rc, 2, 'train_parameters.run_name', "'x/../../y'")
    assert not os.path.exists(tmp_path / 'logs') and not os.path.exists(tmp_path.parent / 'y')


def test_two_names_for_one_run_directory_are_duplicates(images, tmp_path, capsys):
    """`logs` and `./logs/` (or a link to it) with one run name are one directory; a run
    inside another run's directory is refused as well."""
    os.symlink(tmp_path / 'logs', tmp_path / 'link')
    for second in (experiment(images, str(tmp_path / 'logs') + '/', 'a'),
                   experiment(images, str(tmp_path / 'link'), 'a'),
                   experiment(images, tmp_path / 'logs', 'a/inner')):
        path = write_yaml(tmp_path / 'dup.yaml', experiment(images, tmp_path / 'logs', 'a'), second)
        rc = run_cli_code(capsys, path, '--no-smoke')
        one_line_error(capsys, rc, 2, 'experiment 2', 'experiment 1', 'train_parameters.run_name')
        assert not os.path.exists(tmp_path / 'logs')


@pytest.mark.parametrize('name', ['../victim', '.', '..', '/', 'a/../../victim'])
def test_restart_moves_only_run_directories_inside_logdir(images, tmp_path, capsys, name):
    victim = tmp_path / 'victim'
    victim.mkdir()
    (victim / 'precious').write_text('keep me')
    logdir = tmp_path / 'logs'
    (logdir / 'a').mkdir(parents=True)
    path = tiny_yaml(images, logdir, 'a')
    before = tree(tmp_path)
    rc = run_cli_code(capsys, path, '--no-smoke', '--restart', name)
    one_line_error(capsys, rc, 2, f'--restart {name}')
    assert tree(tmp_path) == before
