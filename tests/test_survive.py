"""Runs that survive what users and machines do to them (issue 19): one process per run,
run names that stay inside logdir, checkpoints to fall back on, full disks, damaged files,
signals at any moment, bad experiment files.

Real processes where the behaviour is a process's: two runners on one queue, signals,
damaged checkpoints on disk. The data is test_resilience's small image folder.
"""
import glob
import os
import re
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import one_line_error
from test_resilience import Child, event_steps, images, metrics, run_cli, summary, write_yaml  # noqa: F401
from test_resilience import experiment as resilience_experiment
from tiny_models import tiny_cnn

pytestmark = pytest.mark.slow


def experiment(images, logdir, run_name, steps=30, **train):
    return resilience_experiment(images, logdir, run_name, lr_values=[0.05], lr_boundaries=[steps],
                                 **train)


def assert_trained_once(run_dir, steps):
    """One event file of training (beside runner.training.tboard's overview, which every session
    rewrites), every logged step once and in order, finished at `steps`."""
    from runner import rundir
    trained = set(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))) - {rundir.RunDir(run_dir).overview}
    assert len(trained) == 1, os.listdir(run_dir)
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
        assert re.search(rf'^0 +a .*running in \S+ pid {a.proc.pid}$', out, re.M), out
        assert re.search(r'^1 +b .* -$', out, re.M), out
        from runner.commands import report
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


# ---------------------------------------------------------------------------
# Checkpoints to fall back on

@pytest.fixture
def trained_20(images, tmp_path, capsys):
    """A run trained to step 20 (checkpoints 10, 15 and 20 kept), to be extended to 30."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'r', steps=20, keep_checkpoints=3))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 0, out + err
    run_dir = os.path.join(logdir, 'r')
    assert sorted(os.listdir(os.path.join(run_dir, 'checkpoints'))) == [
        'checkpoint', *(f'ckpt-{n}.{ext}' for n in (10, 15, 20) for ext in ('data-00000-of-00001', 'index'))]
    return path, run_dir


def extend_to_30(capsys, path):
    return run_cli(capsys, path, '--no-smoke', '--set', 'train_parameters.steps=30')


def damage(prefix, how):
    if how == 'missing index':
        os.remove(prefix + '.index')
    elif how == 'truncated data':
        data = prefix + '.data-00000-of-00001'
        os.truncate(data, os.path.getsize(data) // 2)
    else:  # a flipped byte inside the data: only the CRC32C can tell
        data = prefix + '.data-00000-of-00001'
        with open(data, 'r+b') as f:
            f.seek(os.path.getsize(data) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize('how', ['missing index', 'truncated data', 'flipped byte'])
def test_an_unreadable_latest_checkpoint_is_moved_aside_and_the_one_before_restored(trained_20, capsys, how):
    """One line names the damaged checkpoint; its files are kept in checkpoints-unreadable/;
    the run resumes from step 15 (not 0), keeps its history up to 15 and finishes at 30."""
    path, run_dir = trained_20
    bad = os.path.join(run_dir, 'checkpoints', 'ckpt-20')
    files = sorted(os.path.basename(p) for p in glob.glob(bad + '.*'))
    damage(bad, how)
    kept = sorted(os.path.basename(p) for p in glob.glob(bad + '.*'))
    rc, out, err = extend_to_30(capsys, path)
    assert rc == 0, out + err
    lines = [line for line in err.splitlines() if 'ckpt-20' in line]
    assert len(lines) == 1 and lines[0].startswith(f'r: checkpoint {bad} is unreadable ('), err
    assert 'checkpoints-unreadable' in lines[0] and 'Traceback' not in err
    assert sorted(os.listdir(os.path.join(run_dir, 'checkpoints-unreadable'))) == kept and kept
    assert re.search(r'^r step 15/30: resuming from .*ckpt-15$', out, re.M), out
    logged = [r['step'] for r in metrics(run_dir) if r['kind'] == 'train']
    assert logged == [5, 10, 15, 20, 25, 30], logged
    assert summary(run_dir)['status'] == 'finished' and summary(run_dir)['steps'] == 30
    assert files  # the damaged checkpoint had files to keep


def test_a_run_whose_checkpoints_are_all_unreadable_fails_rather_than_start_over(trained_20, capsys):
    path, run_dir = trained_20
    before = open(os.path.join(run_dir, 'metrics.jsonl')).read()
    for n in (10, 15, 20):
        damage(os.path.join(run_dir, 'checkpoints', f'ckpt-{n}'), 'truncated data')
    rc, out, err = extend_to_30(capsys, path)
    assert rc == 1, out + err
    assert 'Traceback' not in err and 'step 5/' not in out
    assert re.search(r'^r: failed: NoReadableCheckpoint: no readable checkpoint in .*--restart r starts '
                     r'the run over', err, re.M), err
    assert open(os.path.join(run_dir, 'metrics.jsonl')).read() == before
    assert summary(run_dir)['status'] == 'failed'
    assert len(os.listdir(os.path.join(run_dir, 'checkpoints-unreadable'))) == 6


# ---------------------------------------------------------------------------
# "Last good checkpoint" means finite weights

class _OverflowAfter(keras.layers.Layer):
    """x * scale, where the update of training call `steps` leaves `scale` infinite (its
    constraint, applied after the optimizer's update): the loss and gradient of that step are
    finite, the weights after it are not, as with a learning rate that overflows them."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def build(self, input_shape):
        self.calls = self.add_weight(name='calls', shape=(), dtype='int64', initializer='zeros',
                                     trainable=False)
        self.scale = self.add_weight(name='scale', shape=(), initializer='ones', constraint=self.overflow)

    def overflow(self, w):
        return tf.where(self.calls >= self.steps, tf.constant(np.inf, w.dtype), w)

    def call(self, x, training=None):
        if training:
            self.calls.assign_add(1)
        return x * self.scale


def overflows_in_training(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, at_step=10):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, tiny_cnn(input_shape, num_classes, weight_decay)(_OverflowAfter(at_step)(inputs)))


def test_a_checkpoint_of_non_finite_weights_is_never_saved_as_last_good(images, tmp_path, capsys):
    """The weights overflow in the update of step 10, a checkpoint step: no ckpt-10 is saved,
    the run is diverged in one line naming ckpt-5 as the last good checkpoint, which is finite."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'blow', module='test_survive',
                                                      model='overflows_in_training'))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 1, out + err
    run_dir = os.path.join(logdir, 'blow')
    ckpt_dir = os.path.join(run_dir, 'checkpoints')
    assert tf.train.latest_checkpoint(ckpt_dir) == os.path.join(ckpt_dir, 'ckpt-5'), os.listdir(ckpt_dir)
    assert not glob.glob(os.path.join(ckpt_dir, 'ckpt-10*'))
    s = summary(run_dir)
    assert s['status'] == 'diverged' and s['steps'] == 10, s
    assert s['error'] == (f'weights or optimizer state became NaN/inf at step 10; last good checkpoint: '
                          f'{ckpt_dir}/ckpt-5'), s['error']
    assert re.search(r'^blow: diverged: weights or optimizer state became NaN/inf', err, re.M), err
    reader = tf.train.load_checkpoint(os.path.join(ckpt_dir, 'ckpt-5'))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if name.startswith(('model/', 'optimizer/')) and np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name


@pytest.mark.parametrize('value', ['.nan', '.inf', '-.inf'])
def test_non_finite_numbers_are_refused_in_validation(images, tmp_path, capsys, value):
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, tmp_path / 'logs', 'r'))
    for key in ('train_parameters.lr_values=[%s, 0.1]', 'train_parameters.momentum=%s',
                'model_parameters.dropout=%s'):
        rc = run_cli_code(capsys, path, '--no-smoke', '--set', key % value)
        one_line_error(capsys, rc, 2, key.split('=')[0].replace('lr_values', 'lr_values[0]'), 'finite')
    assert not os.path.exists(tmp_path / 'logs')


# ---------------------------------------------------------------------------
# A full or unwritable disk

@pytest.fixture
def mount_tmpfs():
    """mount(size, path, *options): a tmpfs of `size` at `path`, unmounted at the end. Needs
    root (CI runs the tests as root): a test using it is marked needs('root')."""
    mounted = []

    def mount(size, path, *options):
        import subprocess
        os.makedirs(path, exist_ok=True)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', ','.join([f'size={size}', *options]), 'none',
                        str(path)], check=True)
        mounted.append(str(path))
        return str(path)
    yield mount
    import subprocess
    for path in reversed(mounted):
        subprocess.run(['umount', '-l', path], check=False)


def fill(directory):
    """Write a file into `directory` until the disk is full; its path."""
    path = os.path.join(directory, 'filler')
    with open(path, 'wb', buffering=0) as f:
        for chunk in (2**20, 4096, 1):
            try:
                while True:
                    f.write(b'\0' * chunk)
            except OSError:
                pass
    return path


@pytest.mark.parametrize('fail_fast', [False, True])
@pytest.mark.needs('root')
def test_a_disk_filling_up_fails_that_run_in_one_line_and_the_queue_goes_on(images, tmp_path, mount_tmpfs,
                                                                            fail_fast):
    """The disk of the first run's logdir fills up while it trains: that run fails with one
    line naming the path it could not write (and whether it could be marked failed), no
    traceback; the next run, on another disk, trains (not under --fail-fast); every file
    left behind reads whole."""
    full = mount_tmpfs('70m', tmp_path / 'full')
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, full, 'big', steps=2000),
                      experiment(images, tmp_path / 'logs', 'next', steps=10))
    child = Child([path, '--no-smoke', *(['--fail-fast'] if fail_fast else [])], tmp_path / 'err.txt')
    child.wait_for(r'^big step 10/')
    filler = fill(full)
    rc = child.finish()
    assert rc == 1, child.stdout + child.stderr
    assert 'Traceback' not in child.stderr + child.stdout
    failed = [line for line in child.stderr.splitlines() if line.startswith('big: failed: ')]
    assert len(failed) == 1, child.stderr
    assert 'No space left on device' in failed[0] and str(full) in failed[0], failed[0]
    assert '{{function_node' not in failed[0] and '[Op:' not in failed[0], failed[0]
    run_dir = os.path.join(full, 'big')
    os.remove(filler)
    s = summary(run_dir)  # the last one written whole
    assert s['status'] == ('running' if 'could not mark the run failed' in failed[0] else 'failed'), (s, failed)
    assert metrics(run_dir)  # every line parses: no torn record
    assert not glob.glob(os.path.join(run_dir, '*.tmp'))
    if fail_fast:
        assert not re.search(r'^next: starting', child.stdout, re.M)
        assert not os.path.exists(tmp_path / 'logs' / 'next')
    else:
        assert summary(os.path.join(tmp_path, 'logs', 'next'))['status'] == 'finished'


@pytest.mark.needs('root')
def test_an_unwritable_existing_run_directory_is_found_before_training(images, tmp_path, capsys, mount_tmpfs):
    """logdir is writable, the run directory in it (a run to resume) is not: one line naming
    it before anything trains, exit 2."""
    logdir = tmp_path / 'logs'
    mount_tmpfs('1m', logdir / 'r', 'ro')
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'r'))
    rc = run_cli_code(capsys, path, '--no-smoke')
    one_line_error(capsys, rc, 2, str(logdir / 'r'), 'Read-only file system')


# ---------------------------------------------------------------------------
# Damaged files in a run directory

def test_a_damaged_config_or_summary_blocks_only_its_own_run(images, tmp_path, capsys):
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', *(experiment(images, logdir, n, steps=10) for n in 'abc'))
    assert run_cli(capsys, path, '--no-smoke')[0] == 0
    config_a = os.path.join(logdir, 'a', 'config.yaml')
    with open(config_a, 'w') as f:
        f.write('model: [tiny_cnn\n  dataset: {')
    summary_b = os.path.join(logdir, 'b', 'summary.json')
    os.truncate(summary_b, os.path.getsize(summary_b) // 2)
    damaged_b = open(summary_b).read()

    rc, out, err = run_cli(capsys, path, '--no-smoke', '--set', 'train_parameters.steps=20')
    assert rc == 1, out + err
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 2, err
    assert config_a in lines[0] and '--restart a' in lines[0] and 'experiment 1 (a)' in lines[0], lines[0]
    assert summary_b in lines[1] and '--restart b' in lines[1], lines[1]
    assert summary(os.path.join(logdir, 'c'))['steps'] == 20
    assert open(summary_b).read() == damaged_b  # left as it was

    rc, out, err = run_cli(capsys, path, '--no-smoke', '--set', 'train_parameters.steps=20',
                           '--restart', 'a', '--restart', 'b')
    assert rc == 0, out + err
    for name in 'ab':
        assert summary(os.path.join(logdir, name))['steps'] == 20


# ---------------------------------------------------------------------------
# Bad experiment files and options

def test_a_file_that_is_not_utf8_is_one_line_with_the_byte_position(images, tmp_path, capsys):
    path = tmp_path / 'latin1.yaml'
    path.write_bytes(open(write_yaml(tmp_path / 'e.yaml', experiment(images, tmp_path / 'logs', 'r')), 'rb').read()
                     + '# r\xe9sum\xe9\n'.encode('latin-1'))
    size = len(path.read_bytes())
    rc = run_cli_code(capsys, path, '--no-smoke')
    one_line_error(capsys, rc, 2, str(path), 'not UTF-8', f'byte 0xe9 at byte position {size - 6}')


def test_a_huge_file_is_refused_before_parsing_and_a_huge_value_by_its_unknown_key(images, tmp_path, capsys):
    """A 2 MB file is refused for its size before it is parsed: its YAML is broken past the
    limit, and the one line names the size, not the syntax. A value of 0.9 MB under an
    unknown key is refused by the key's name, in one line that does not echo the value."""
    base = experiment(images, tmp_path / 'logs', 'r')
    for size in (2 << 20, 900 << 10):
        doc = dict(base, train_parameters=dict(base['train_parameters'], colour=['x' * 64] * (size // 70)))
        path = write_yaml(tmp_path / 'huge.yaml', doc)
        with open(path, 'a') as f:
            f.write('broken: [yaml\n' if size > 1 << 20 else '')
        rc = run_cli_code(capsys, path, '--no-smoke')
        line = one_line_error(capsys, rc, 2, str(path))
        said = line[len(f'error: {path}: '):]
        if size > 1 << 20:
            assert said.startswith('larger than 1024 KiB;'), line
        else:
            assert 'train_parameters.colour: unknown key' in said, line
        assert 'xxxx' not in line, 'the value is not echoed'


def test_list_piped_into_head_ends_quietly(images, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT, subprocess_env
    path = write_yaml(tmp_path / 'e.yaml', *(experiment(images, tmp_path / 'logs', f'r{i}') for i in range(40)))
    p = subprocess.run(f'{sys.executable} run_experiments.py {path} --list | head -1', shell=True, cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert p.stdout.split()[:2] == ['index', 'run'] and p.stdout.count('\n') == 1, p.stdout
    assert p.stderr.strip() == '', p.stderr


# ---------------------------------------------------------------------------
# Signals

class _Sleep(keras.layers.Layer):
    """Identity that sleeps `train_seconds` in each training call and `eval_seconds` in each
    inference call (a slow step, a slow evaluation), adding a byte to $SURVIVE_EVAL_MARKER for
    each evaluation batch."""

    def __init__(self, train_seconds, eval_seconds, **kwargs):
        super().__init__(**kwargs)
        self.train_seconds, self.eval_seconds = train_seconds, eval_seconds

    def call(self, x, training=None):
        import time

        def sleep(v):
            if not training and os.environ.get('SURVIVE_EVAL_MARKER'):
                with open(os.environ['SURVIVE_EVAL_MARKER'], 'a') as f:
                    f.write('.')  # one byte per evaluation batch
            time.sleep(self.train_seconds if training else self.eval_seconds)
            return v
        seconds = self.train_seconds if training else self.eval_seconds
        if not seconds:
            return x
        return tf.reshape(tf.numpy_function(sleep, [x], x.dtype), tf.shape(x))


def sleepy(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, train_seconds=0.0, eval_seconds=0.0):
    inputs = keras.Input(input_shape)
    x = _Sleep(train_seconds, eval_seconds)(inputs)
    return keras.Model(inputs, tiny_cnn(input_shape, num_classes, weight_decay)(x))


def spawn(args, tmp_path, ignore_sigint=False, **env):
    """run_experiments.py ARGS; with ignore_sigint, started as from the background of a script
    (SIGINT ignored, inherited)."""
    import subprocess
    import sys
    from conftest import ROOT, subprocess_env
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'run_experiments.py'), *map(str, args)], cwd=ROOT,
        env=subprocess_env(**env), stdout=open(tmp_path / 'out.txt', 'w'), stderr=open(tmp_path / 'err.txt', 'w'),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None)


def wait_until(condition, proc, timeout=90):
    import time
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, 'the process ended before the moment came'
        assert time.monotonic() < deadline, f'not within {timeout} s'
        time.sleep(0.005)


def ended_within(proc, seconds):
    import subprocess
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f'still running {seconds} s after the signal')


@pytest.mark.parametrize('moment, signum', [('importing', 'SIGINT'), ('config.yaml appears', 'SIGINT'),
                                            ('config.yaml appears', 'SIGTERM'), ('first step', 'SIGINT')])
def test_a_stop_at_the_start_of_a_run_is_honoured(images, tmp_path, moment, signum):
    """Started with SIGINT ignored (as from a script's background), signalled at each moment of
    the start: the process ends within seconds, not after its 100000 steps; no traceback."""
    import time
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'r', steps=100000))
    proc = spawn([path, '--no-smoke'], tmp_path, ignore_sigint=True)
    try:
        if moment == 'importing':
            time.sleep(1.0)
        elif moment == 'config.yaml appears':
            wait_until(lambda: os.path.exists(logdir / 'r' / 'config.yaml'), proc)
        else:
            wait_until(lambda: os.path.exists(logdir / 'r' / 'metrics.jsonl'), proc)
        proc.send_signal(getattr(signal, signum))
        rc = ended_within(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = (tmp_path / 'out.txt').read_text(), (tmp_path / 'err.txt').read_text()
    assert rc == 1 and 'Traceback' not in out + err, out + err
    if moment != 'importing':
        s = summary(logdir / 'r')
        assert s['status'] == 'interrupted' and s.get('steps', 0) < 1000, s


def test_a_second_ctrl_c_inside_one_step_exits_at_once_and_says_interrupted(images, tmp_path):
    """Steps of 3 s; two Ctrl-C 50 ms apart inside one: the process exits at once (not at the
    step's end, which would save a checkpoint), and summary.json says interrupted."""
    import time
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'r', steps=100, module='test_survive',
                                                      model='sleepy', model_parameters={'train_seconds': 3.0},
                                                      log_interval=1, checkpoint_interval=1))
    proc = spawn([path, '--no-smoke'], tmp_path)
    try:
        wait_until(lambda: os.path.exists(logdir / 'r' / 'checkpoints' / 'ckpt-1.index'), proc, timeout=120)
        time.sleep(0.5)  # inside step 2
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rc = ended_within(proc, 2.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / 'err.txt').read_text()
    assert rc == 130 and 'second interrupt: exiting now' in err, err
    s = summary(logdir / 'r')
    assert s['status'] == 'interrupted' and 'second SIGINT' in s['error'] and 'ckpt-1' in s['error'], s
    assert not os.path.exists(logdir / 'r' / 'checkpoints' / 'ckpt-2.index')


def sigterm_during_evaluation(path, tmp_path, began, signum=signal.SIGTERM):
    """Run PATH's run `r` with $SURVIVE_EVAL_MARKER at tmp_path/evaluating, send SIGTERM (or
    `signum`) once `began()`, and demand its 'interrupted' line within 4 s; the exit status."""
    import time
    proc = spawn([path, '--no-smoke'], tmp_path, SURVIVE_EVAL_MARKER=str(tmp_path / 'evaluating'))
    try:
        wait_until(began, proc, timeout=120)
        proc.send_signal(signum)
        start = time.monotonic()
        wait_until(lambda: 'r: interrupted at step' in (tmp_path / 'out.txt').read_text(), proc, timeout=4)
        print(f'stopped {time.monotonic() - start:.1f} s after {signal.Signals(signum).name}')
        return ended_within(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stop_during_an_evaluation_ends_it_within_seconds(images, tmp_path):
    """An evaluation of 30 batches of 0.3 s: SIGTERM once it has begun stops the run (its
    'interrupted' line) within a few seconds, with the checkpoint of the step evaluated. (The
    process then takes as long to exit as any: TensorFlow's teardown, seconds here.)"""
    logdir = tmp_path / 'logs'
    marker = tmp_path / 'evaluating'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'r', steps=30, module='test_survive',
                                                      model='sleepy', model_parameters={'eval_seconds': 0.3},
                                                      val_interval=10, eval_batch_size=2))
    rc = sigterm_during_evaluation(path, tmp_path, marker.exists)
    s = summary(logdir / 'r')
    assert rc == 1 and s['status'] == 'interrupted' and s['steps'] == 10, s
    assert s['last_checkpoint'].endswith('ckpt-10')


def test_a_ctrl_c_during_the_final_evaluation_ends_it_within_seconds_and_a_resume_finishes(images, tmp_path):
    """The final evaluation (after the loop; with a validation split it reads the test split
    anew) says it begins, and a real SIGINT once it has said so cuts it short as in a periodic
    one: the run is interrupted at its last step within seconds, and the same command again
    does the final evaluation, says so, writes the final weights and finishes."""
    logdir = tmp_path / 'logs'
    doc = experiment(images, logdir, 'r', steps=10, module='test_survive', model='sleepy',
                     model_parameters={'eval_seconds': 0.3}, val_interval=10, eval_batch_size=2)
    doc['dataset']['validation_fraction'] = 0.1
    path = write_yaml(tmp_path / 'e.yaml', doc)
    test_images = len(glob.glob(os.path.join(images, 'test', '*', '*')))
    said = f'r: final evaluation: {test_images} images of the test split'
    rc = sigterm_during_evaluation(path, tmp_path, lambda: said in (tmp_path / 'out.txt').read_text(),
                                   signum=signal.SIGINT)
    s = summary(logdir / 'r')
    assert rc == 1 and s['status'] == 'interrupted' and s['steps'] == 10, s
    assert 'weights' not in s and not (logdir / 'r' / 'final.weights.h5').exists()
    proc = spawn([path, '--no-smoke'], tmp_path)
    assert ended_within(proc, 180) == 0, (tmp_path / 'err.txt').read_text()
    out = (tmp_path / 'out.txt').read_text()
    assert said in out and 'r: writing the final weights' in out, out
    s = summary(logdir / 'r')
    assert s['status'] == 'finished' and s['steps'] == 10 and 'test_top1_accuracy' in s, s
    assert (logdir / 'r' / 'final.weights.h5').exists()


def test_set_applies_to_the_selected_experiments_only(images, tmp_path, capsys):
    """--only small_a --set run_name=x renames small_a alone (no duplicate of small_b), and an
    override that would be wrong for an experiment left out does not stop the chosen one."""
    from runner import cli
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, logdir, 'small_a'), experiment(images, logdir, 'small_b'),
                      dict(experiment(images, logdir, 'group'), repeats=2))
    exps = cli.load_all([path], [('train_parameters.run_name', 'x')], ['small_a'])
    assert [e.run_name for e in exps] == ['x']
    exps = cli.load_all([path], [('train_parameters.batch_size', 8)], ['group/seed1', 'small_b'])
    assert [(e.run_name, e.train_parameters.batch_size) for e in exps] == [('small_b', 8), ('group/seed1', 8)]
    exps = cli.load_all([path], [('repeats', 3)], ['group'])
    assert [e.run_name for e in exps] == ['group/seed0', 'group/seed1', 'group/seed2']
    rc = run_cli_code(capsys, path, '--list', '--only', 'small_a', '--set', 'train_parameters.run_name=x')
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert [line.split()[1] for line in out.splitlines()[1:]] == ['x']
