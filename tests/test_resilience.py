"""Resilience of the runner: bit-exact resume, SIGKILL and SIGTERM at any moment, a NaN loss,
an experiment that crashes in training, an unwritable log directory, --restart, finished runs.

Most tests run `run_experiments.py` in a child process, as a user would, on a small image-folder
data set made once per session; the rest call `runner.cli.main` in this process to save the
five seconds of TensorFlow start-up. Every child process is bounded by a timeout.

Set RESILIENCE_SEED to replay the random kill times of test_sigkill_at_random_moments.
"""
import collections
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
for _p in (ROOT, TESTS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from conftest import make_image_folder, subprocess_env  # noqa: E402
from tiny_models import tiny_cnn  # noqa: E402

pytestmark = pytest.mark.slow

RUNNER = os.path.join(ROOT, 'run_experiments.py')
TOTAL = 200           # steps of the deterministic experiment
LOG_INTERVAL = 5
VAL_INTERVAL = 23     # evaluations (and so checkpoints) between two logging steps
START_TIMEOUT = 90    # seconds for a child to import TensorFlow, load the data and log a step
RUN_TIMEOUT = 180     # seconds for a child to train TOTAL steps


# ---------------------------------------------------------------------------
# Models for this file's experiments (`module: test_resilience`). They build fine, so they
# pass the runner's validation, and go wrong only once training has started.

class _CrashAfter(keras.layers.Layer):
    """Identity that counts training calls and raises (an op error) at call `steps`."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def build(self, input_shape):
        self.calls = self.add_weight(name='calls', shape=(), dtype='int64', initializer='zeros',
                                     trainable=False)

    def call(self, x, training=None):
        if not training:
            return x
        self.calls.assign_add(1)
        check = tf.debugging.assert_less(self.calls.value, tf.constant(self.steps, tf.int64),
                                         message='simulated failure in the model')
        with tf.control_dependencies([check]):
            return tf.identity(x)


def crashes_in_training(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, crash_at_step=8):
    """tiny_cnn whose forward pass fails at training step `crash_at_step` (like an OOM or a
    bad op that only shows on real batches)."""
    inputs = keras.Input(input_shape)
    x = _CrashAfter(crash_at_step)(inputs)
    return keras.Model(inputs, tiny_cnn(input_shape, num_classes, weight_decay)(x))


# ---------------------------------------------------------------------------
# Helpers

@pytest.fixture(scope='session')
def images(tmp_path_factory):
    """10 classes of 32x32 RGB PNGs told apart by colour: 240 to train on, 60 to test."""
    return make_image_folder(tmp_path_factory.mktemp('resilience-imgs'),
                             splits=(('train', 24), ('test', 6)), classes=10)


def experiment(images, logdir, run_name, model='tiny_cnn', module='tiny_models', model_parameters=None,
               **train):
    tp = dict(logdir=str(logdir), run_name=run_name, batch_size=16, eval_batch_size=64,
              log_interval=LOG_INTERVAL, val_interval=25, checkpoint_interval=5,
              lr_values=[0.1, 0.01], lr_boundaries=[120, TOTAL])
    tp.update(train)
    return {'module': module, 'model': model, 'model_parameters': model_parameters or {},
            'dataset': {'image_folder': images}, 'train_parameters': tp}


def det_experiment(images, logdir, **train):
    """The bit-exact experiment: deterministic ops, dropout (a random stream to restore)."""
    train = {'val_interval': VAL_INTERVAL, **train}
    return experiment(images, logdir, 'det', model_parameters={'dropout': 0.3}, deterministic=True,
                      **train)


def write_yaml(path, *docs):
    with open(path, 'w') as f:
        yaml.safe_dump_all(list(docs), f, sort_keys=False)
    return str(path)


class Child:
    """`run_experiments.py ARGS` in a child process; stdout read line by line as it comes."""

    def __init__(self, args, stderr_path):
        self.stderr_path = str(stderr_path)
        with open(self.stderr_path, 'w') as err:
            self.proc = subprocess.Popen([sys.executable, RUNNER, *map(str, args)], cwd=ROOT,
                                         env=subprocess_env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        self.lines = []
        self.eof = False
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip('\n'))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pattern, timeout=START_TIMEOUT, start=0):
        """The first match of `pattern` in stdout lines from index `start`; None if the process
        ended without printing it. Fails the test after `timeout` seconds."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                for line in self.lines[i:]:
                    m = rx.search(line)
                    if m:
                        return m
                i = len(self.lines)
                if self.eof:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    pytest.fail(f'no line matching {pattern!r} within {timeout}s; stdout:\n'
                                f'{self.stdout}\nstderr:\n{self.stderr}')
                self.cond.wait(left)

    def finish(self, timeout=RUN_TIMEOUT):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f'run_experiments.py did not end within {timeout}s; stdout:\n{self.stdout}')
        with self.cond:
            self.cond.wait_for(lambda: self.eof, timeout=10)
        return rc

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(30)

    @property
    def stdout(self):
        with self.cond:
            return '\n'.join(self.lines)

    @property
    def stderr(self):
        with open(self.stderr_path) as f:
            return f.read()


def run_child(args, stderr_path, timeout=RUN_TIMEOUT):
    c = Child(args, stderr_path)
    return c.finish(timeout), c


def run_cli(capsys, *argv):
    """`run_experiments.py ARGV` in this process: (exit status, stdout, stderr)."""
    from runner import cli
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in argv])
    finally:
        keras.backend.clear_session()
    out, err = capsys.readouterr()
    return rc, out, err


def summary(run_dir, missing_ok=False):
    path = os.path.join(run_dir, 'summary.json')
    if missing_ok and not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def metrics(run_dir):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]   # every line must parse: no torn records


def h5_arrays(path):
    out = {}
    with h5py.File(path, 'r') as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                     else None)
    return out


def assert_same_weights(path_a, path_b):
    a, b = h5_arrays(path_a), h5_arrays(path_b)
    assert sorted(a) == sorted(b), 'the two weight files hold different variables'
    differ = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
              or a[k].tobytes() != b[k].tobytes()]
    assert not differ, (f'weights differ bitwise from the uninterrupted run in {differ}; largest '
                        f'difference {max(float(np.max(np.abs(a[k] - b[k]))) for k in differ):g}')


def train_records(records):
    return [(r['step'], r['loss'], r['reg_loss'], r['error'], r['lr'])
            for r in records if r['kind'] == 'train']


def eval_records(records, skip_steps=()):
    return [(r['step'], r['loss'], r['top1_error'], r['top5_error'])
            for r in records if r['kind'] != 'train' and r['step'] not in skip_steps]


def assert_same_records(got, want, what):
    if got == want:
        return
    first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    raise AssertionError(f'{what} differ from the uninterrupted run from record {first} on:\n'
                         f'  resumed:       {got[first:first + 3]}\n'
                         f'  uninterrupted: {want[first:first + 3]}\n  ({len(got)} vs {len(want)} records)')


def checkpoint_step(prefix):
    return int(tf.train.load_checkpoint(prefix).get_tensor('optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE'))


def event_steps(run_dir):
    """{tag: [step, ...]} over every TensorBoard event file of the run, in file order."""
    from tensorboard.compat.proto import event_pb2
    steps = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():  # DataLossError if torn
            event = event_pb2.Event.FromString(raw)
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return steps


def checkpoint_debris(ckpt_dir):
    """Files of a checkpoint write that did not finish: temporary files, or a checkpoint newer
    than the one the state file names (written, but the save was cut before it was recorded)."""
    if not os.path.isdir(ckpt_dir):
        return set()
    latest = tf.train.latest_checkpoint(ckpt_dir)
    newest = int(latest.rsplit('-', 1)[1]) if latest else 0
    out = set()
    for name in os.listdir(ckpt_dir):
        m = re.match(r'ckpt-(\d+)', name)
        if '_temp' in name or name.endswith('.tmp') or (m and int(m.group(1)) > newest):
            out.add(name)
    return out


def expected_steps(interval, total):
    return sorted(set(range(interval, total + 1, interval)) | {total})


# ---------------------------------------------------------------------------
# The uninterrupted reference run, started once and shared; it trains while other runs start.

class Reference:
    def __init__(self, images, root):
        self.logdir = root / 'logs'
        self.yaml = write_yaml(root / 'det.yaml', det_experiment(images, self.logdir))
        self.child = Child([self.yaml, '--no-smoke'], root / 'stderr.txt')
        self._done = False

    @property
    def run_dir(self):
        if not self._done:
            rc = self.child.finish()
            assert rc == 0, f'reference run failed:\n{self.child.stdout}\n{self.child.stderr}'
            self._done = True
        return os.path.join(self.logdir, 'det')


@pytest.fixture(scope='module')
def reference(images, tmp_path_factory):
    ref = Reference(images, tmp_path_factory.mktemp('reference'))
    yield ref
    ref.child.kill()


STOP_AT = 45          # the first leg of the resume chain: --set train_parameters.steps=45
SIGTERM_AT = 3 * VAL_INTERVAL  # 69: an evaluation step, between two logging steps


@pytest.fixture(scope='module')
def resume_chain(images, reference, tmp_path_factory):
    """The deterministic experiment trained in three legs, as a user would: `--set
    train_parameters.steps=45` (a logging step, not an evaluation step); the plain command,
    stopped by SIGTERM as it prints the evaluation of step 69 (so the stop lands there or a
    step later, part-way through a logging interval: what a resume has to carry over); the
    plain command again, to the end. What tests 1 and 3 look at, recorded after every leg."""
    root = tmp_path_factory.mktemp('resume-chain')
    logdir = root / 'logs'
    run_dir = os.path.join(logdir, 'det')
    ckpt_dir = os.path.join(run_dir, 'checkpoints')
    path = write_yaml(root / 'det.yaml', det_experiment(images, logdir))
    legs = {}

    rc, child = run_child([path, '--no-smoke', '--set', f'train_parameters.steps={STOP_AT}'],
                          root / 'stderr-1.txt')
    legs['steps'] = {'rc': rc, 'stdout': child.stdout, 'stderr': child.stderr,
                     'summary': summary(run_dir, missing_ok=True)}

    second = Child([path, '--no-smoke'], root / 'stderr-2.txt')
    if second.wait_for(rf'^det step {SIGTERM_AT}/\d+: test top-1'):
        second.kill(signal.SIGTERM)
    rc = second.finish()
    latest = tf.train.latest_checkpoint(ckpt_dir)
    legs['sigterm'] = {'rc': rc, 'stdout': second.stdout, 'stderr': second.stderr,
                       'summary': summary(run_dir, missing_ok=True), 'latest': latest,
                       'latest_step': checkpoint_step(latest) if latest else None}
    print(f"SIGTERM stopped the run at step {legs['sigterm']['summary'].get('steps')}")

    rc, child = run_child([path, '--no-smoke'], root / 'stderr-3.txt')
    legs['end'] = {'rc': rc, 'stdout': child.stdout, 'stderr': child.stderr}
    return {'run_dir': run_dir, **legs}


# ---------------------------------------------------------------------------
# 1. Bit-exact resume

def test_resume_is_bit_exact(resume_chain, reference):
    """A run stopped by `--set train_parameters.steps=45`, then by SIGTERM part-way through a
    logging interval, and resumed each time, ends with the same weights, bit for bit, and logs
    the same per-step train losses and evaluations as one uninterrupted run (the extra
    evaluation at the end of the 45-step leg aside)."""
    for leg in ('steps', 'sigterm', 'end'):
        assert resume_chain[leg]['rc'] == (1 if leg == 'sigterm' else 0), (
            f"{leg} leg: exit status {resume_chain[leg]['rc']}\n{resume_chain[leg]['stdout']}\n"
            f"{resume_chain[leg]['stderr']}")
    assert resume_chain['steps']['summary']['steps'] == STOP_AT
    stops = f"stopped at step {STOP_AT} (--set) and at step {resume_chain['sigterm']['summary']['steps']} (SIGTERM)"
    run_dir = resume_chain['run_dir']
    assert_same_weights(os.path.join(run_dir, 'final.weights.h5'),
                        os.path.join(reference.run_dir, 'final.weights.h5'))
    assert_same_records(train_records(metrics(run_dir)), train_records(metrics(reference.run_dir)),
                        f'train metrics (loss, reg_loss, error, lr per logged step) of the run {stops}')
    assert_same_records(eval_records(metrics(run_dir), skip_steps={STOP_AT}),
                        eval_records(metrics(reference.run_dir)), f'evaluation metrics of the run {stops}')


# ---------------------------------------------------------------------------
# 2. SIGKILL at random moments

def test_sigkill_at_random_moments(images, reference, tmp_path):
    """kill -9 the run ten times -- while it loads and restores, at random moments of training,
    and just as it writes a checkpoint (one every step) -- and run the same command again each
    time; the finished run is whole: the latest checkpoint readable, metrics.jsonl and
    TensorBoard with every logged step exactly once, and the weights and logged losses of the
    uninterrupted run bit for bit."""
    # A fixed seed draws the kill times, so a failure replays (RESILIENCE_SEED=<n> tries
    # others); it is printed, and pytest shows it with a failure.
    seed = int(os.environ.get('RESILIENCE_SEED', 22))
    rng = random.Random(seed)
    print(f'RESILIENCE_SEED={seed}')
    logdir = tmp_path / 'logs'
    run_dir = os.path.join(logdir, 'det')
    ckpt_dir = os.path.join(run_dir, 'checkpoints')
    path = write_yaml(tmp_path / 'det.yaml', det_experiment(images, logdir, checkpoint_interval=1))
    loss_line = r'^det step (\d+)/\d+: loss'
    # Start-up and tracing (~5 s) come before the first logged loss and are not part of the
    # random draw: 'training' kills come a random time after it, 'checkpoint' kills a few ms
    # after a later logged step, when that step's checkpoint is being written, 'start-up'
    # kills while the data is loaded, the checkpoint restored and the history trimmed.
    plan = ['training', 'checkpoint', 'start-up', 'training', 'checkpoint', 'training', 'start-up',
            'checkpoint', 'training', 'checkpoint']
    deadline = time.monotonic() + 240
    kills = []   # (where, last step logged, files of a checkpoint write the kill cut short)
    debris = set()

    def pause(child, seconds):
        """Sleep, but not past step TOTAL - 25 on a fast machine: every kill must come in time."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            steps = re.findall(loss_line, child.stdout, re.M)
            if steps and int(steps[-1]) >= TOTAL - 25:
                return
            time.sleep(0.01)

    for cycle, where in enumerate(plan, 1):
        assert time.monotonic() < deadline, f'out of time after {len(kills)} kills: {kills}'
        child = Child([path, '--no-smoke'], tmp_path / f'stderr-{cycle}.txt')
        m = child.wait_for(r'^det: (starting|resuming)' if where == 'start-up' else loss_line)
        if m and where == 'checkpoint':
            pause(child, rng.uniform(0.05, 0.5))
            m = child.wait_for(loss_line, start=len(child.lines))
            time.sleep(rng.uniform(0, 0.06))  # a save of this model takes 25-60 ms
        elif m:
            pause(child, rng.uniform(0, 0.4) if where == 'start-up' else rng.uniform(0.05, 0.8))
        if not m or child.proc.poll() is not None:
            child.kill()
            pytest.fail(f'the run ended by itself before kill {cycle} ({kills}, RESILIENCE_SEED={seed}):\n{child.stdout}\n'
                        f'{child.stderr}')
        child.kill(signal.SIGKILL)
        steps = [int(m) for m in re.findall(loss_line, child.stdout, re.M)]
        now = checkpoint_debris(ckpt_dir)
        kills.append((where, steps[-1] if steps else None, sorted(now - debris)))
        debris = now
    print(f'{len(kills)} kills (where, last step logged, unfinished checkpoint files): {kills}')

    rc, child = run_child([path, '--no-smoke'], tmp_path / 'stderr-final.txt')
    assert rc == 0, f'{child.stdout}\n{child.stderr}'
    s = summary(run_dir)
    assert s['status'] == 'finished' and s['steps'] == TOTAL, s
    latest = tf.train.latest_checkpoint(ckpt_dir)
    assert latest and latest.endswith(f'ckpt-{TOTAL}'), latest
    assert tf.train.list_variables(latest)
    assert checkpoint_step(latest) == TOTAL
    for prefix in tf.train.get_checkpoint_state(ckpt_dir).all_model_checkpoint_paths:
        tf.train.load_checkpoint(prefix)  # every checkpoint the state file lists is readable

    # The rest is checked in full and reported together: one run of this test is costly.
    problems = []

    def check(fn, *args):
        try:
            fn(*args)
        except AssertionError as e:
            problems.append(str(e))

    records = metrics(run_dir)
    train_steps = [r['step'] for r in records if r['kind'] == 'train']

    def metrics_steps():
        for kind in ('train', 'test'):
            steps = [r['step'] for r in records if r['kind'] == kind]
            assert all(a < b for a, b in zip(steps, steps[1:])), (
                f'metrics.jsonl {kind} steps not strictly increasing: {steps}')
        assert train_steps == expected_steps(LOG_INTERVAL, TOTAL), f'metrics.jsonl train steps {train_steps}'
        test_steps = [r['step'] for r in records if r['kind'] == 'test']
        assert test_steps == expected_steps(VAL_INTERVAL, TOTAL), f'metrics.jsonl test steps {test_steps}'

    def tensorboard():
        tb = event_steps(run_dir)
        dup = {tag: sorted(st for st, n in collections.Counter(steps).items() if n > 1)
               for tag, steps in tb.items()}
        assert not any(dup.values()), f'TensorBoard steps written more than once: {dup}'

    def tensorboard_complete():
        tb = event_steps(run_dir)
        for tag, want in (('train/loss', train_steps), ('train/learning_rate', train_steps),
                          ('test/top1_error', expected_steps(VAL_INTERVAL, TOTAL))):
            missing = sorted(set(want) - set(tb[tag]))
            assert not missing, (f'TensorBoard tag {tag} lacks steps {missing} that metrics.jsonl '
                                 f'has (events not yet flushed when a kill came)')

    check(metrics_steps)
    check(tensorboard)
    check(tensorboard_complete)
    check(assert_same_weights, os.path.join(run_dir, 'final.weights.h5'),
          os.path.join(reference.run_dir, 'final.weights.h5'))
    check(assert_same_records, train_records(records), train_records(metrics(reference.run_dir)),
          'train metrics after the kills')
    assert not problems, f'after the kills {kills} (RESILIENCE_SEED={seed}):\n' + '\n'.join(problems)


# ---------------------------------------------------------------------------
# 3. SIGTERM

def test_sigterm_checkpoints_and_the_same_command_resumes(resume_chain):
    """SIGTERM: status interrupted, exit status 1, a checkpoint at the step reached; the same command again continues from that step (none trained twice) to the end."""
    st = resume_chain['sigterm']
    k = st['summary']['steps']
    assert st['rc'] == 1, f"{st['stdout']}\n{st['stderr']}"
    assert re.search(rf'^det: resuming .* in {re.escape(resume_chain["run_dir"])}$', st['stdout'], re.M)
    assert st['summary']['status'] == 'interrupted'
    assert st['summary']['error'] == f'stopped by SIGTERM at step {k}'
    assert f'det: interrupted at step {k}; run the same command again to resume' in st['stdout']
    assert st['latest'] and st['latest'].endswith(f'ckpt-{k}'), st['latest']
    assert st['summary']['last_checkpoint'] == st['latest']
    assert st['latest_step'] == k
    assert 'weights' not in st['summary']  # the final weights are written only at the end
    assert SIGTERM_AT <= k < TOTAL

    end = resume_chain['end']
    assert end['rc'] == 0, f"{end['stdout']}\n{end['stderr']}"
    assert 'det: resuming' in end['stdout'] and f'resuming from {st["latest"]}' in end['stdout']
    trained = [int(m) for m in re.findall(r'^det step (\d+)/\d+: loss', end['stdout'], re.M)]
    assert trained and trained[0] == (k // LOG_INTERVAL + 1) * LOG_INTERVAL, trained[:3]
    s = summary(resume_chain['run_dir'])
    assert s['status'] == 'finished' and s['steps'] == TOTAL and 'error' not in s, s
    steps = [r['step'] for r in metrics(resume_chain['run_dir']) if r['kind'] == 'train']
    assert steps == expected_steps(LOG_INTERVAL, TOTAL)


# ---------------------------------------------------------------------------
# 4. NaN

def test_nan_loss_is_diverged_and_the_next_experiment_runs(images, tmp_path, capsys):
    """An lr of 1e30 from step 11 on: status diverged, the message names the step and the last
    good checkpoint (finite, earlier than that step), nothing non-finite is logged, and the next
    experiment of the file still trains to the end. Exit status 1."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'nan.yaml',
                      experiment(images, logdir, 'nan', lr_values=[0.05, 1e30], lr_boundaries=[10, 40],
                                 log_interval=2, checkpoint_interval=4),
                      experiment(images, logdir, 'after', lr_values=[0.05], lr_boundaries=[12]))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 1, out + err
    nan_dir = os.path.join(logdir, 'nan')
    s = summary(nan_dir)
    assert s['status'] == 'diverged', s
    m = re.search(r'at step (\d+); last good checkpoint: (\S+)$', s['error'])
    assert m, s['error']
    bad_step, ckpt = int(m.group(1)), m.group(2)
    assert 11 <= bad_step <= 13, s['error']
    assert ckpt == s['last_checkpoint'] == tf.train.latest_checkpoint(os.path.join(nan_dir, 'checkpoints'))
    good = checkpoint_step(ckpt)
    assert 8 <= good < bad_step
    reader = tf.train.load_checkpoint(ckpt)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating and 'best_error' not in name:
            assert np.isfinite(reader.get_tensor(name)).all(), f'{name} is not finite in the "last good" checkpoint'
    saved = [int(p.rsplit('-', 1)[1].split('.')[0])
             for p in glob.glob(os.path.join(nan_dir, 'checkpoints', 'ckpt-*.index'))]
    assert max(saved) == good
    assert all(np.isfinite(r['loss']) for r in metrics(nan_dir) if r['kind'] == 'train')
    assert not os.path.exists(os.path.join(nan_dir, 'final.weights.h5'))
    assert f'nan: diverged: {s["error"]}' in err
    after = summary(os.path.join(logdir, 'after'))
    assert after['status'] == 'finished' and after['steps'] == 12


def test_a_streamed_test_split_of_unreadable_files_fails_rather_than_reporting_nan(tmp_path, capsys):
    """Streamed, a test split whose every file is unreadable yields no batch at all: the run
    is `failed` with one line naming the split, not `finished` with a NaN error."""
    root = make_image_folder(tmp_path / 'imgs', splits=(('train', 8), ('test', 2)), classes=2)
    for path in glob.glob(os.path.join(root, 'test', '*', '*.png')):
        with open(path, 'wb') as f:
            f.write(b'not an image')
    logdir = tmp_path / 'logs'
    exp = experiment(root, logdir, 'blind', lr_values=[0.05], lr_boundaries=[4], val_interval=4)
    exp['dataset']['cache_budget_mb'] = 0
    rc, out, err = run_cli(capsys, write_yaml(tmp_path / 'blind.yaml', exp), '--no-smoke')
    assert rc == 1, out + err
    s = summary(os.path.join(logdir, 'blind'))
    assert s['status'] == 'failed', s
    assert "no readable image in split 'test'" in s['error'], s['error']
    assert 'nan' not in out + err


def test_a_failed_evaluation_keeps_the_steps_before_it(images, tmp_path, capsys, monkeypatch):
    """An evaluation that raises (here: out of memory at eval_batch_size) fails the run, but
    the steps since the last checkpoint are saved first: the same command resumes from the
    evaluation's step, not from the checkpoint before it."""
    from runner.training.trainer import Trainer
    evaluate = Trainer.evaluate
    failed = []

    def out_of_memory_once(self, split, max_batches=None, **kwargs):
        if self.step == 15 and not failed:
            failed.append(self.step)
            raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')
        return evaluate(self, split, max_batches, **kwargs)
    monkeypatch.setattr(Trainer, 'evaluate', out_of_memory_once)
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'oom.yaml', experiment(images, logdir, 'oom', lr_values=[0.05],
                                                        lr_boundaries=[20], val_interval=15,
                                                        checkpoint_interval=10))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 1 and failed == [15], out + err
    s = summary(os.path.join(logdir, 'oom'))
    assert s['status'] == 'failed' and 'OOM' in s['error'], s
    assert checkpoint_step(tf.train.latest_checkpoint(os.path.join(logdir, 'oom', 'checkpoints'))) == 15
    assert s.get('best_step', -1) != 15, 'the failed evaluation chose no best checkpoint'
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 0 and 'resuming' in out and 'step 15' in out, out + err
    assert summary(os.path.join(logdir, 'oom'))['status'] == 'finished'
    assert not os.path.exists(os.path.join(logdir, 'oom', 'error.log')), 'a stale failure'


# ---------------------------------------------------------------------------
# 5. An experiment that fails in training

def _three(images, logdir):
    return (experiment(images, logdir, 'good1', lr_values=[0.05], lr_boundaries=[10]),
            experiment(images, logdir, 'bad', module='test_resilience', model='crashes_in_training',
                       lr_values=[0.05], lr_boundaries=[20]),
            experiment(images, logdir, 'good2', lr_values=[0.05], lr_boundaries=[10]))


def test_failing_experiment_between_two_good_ones(images, tmp_path, capsys):
    """The middle experiment passes validation but its model raises at step 8: it is `failed`
    with its error (the model's message, not a generic first line) and error.log; both good
    ones finish; exit status 1."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'three.yaml', *_three(images, logdir))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 1, out + err
    for name in ('good1', 'good2'):
        s = summary(os.path.join(logdir, name))
        assert s['status'] == 'finished' and s['steps'] == 10, s
    bad_dir = os.path.join(logdir, 'bad')
    s = summary(bad_dir)
    assert s['status'] == 'failed', s
    with open(os.path.join(bad_dir, 'error.log')) as f:
        log = f.read()
    assert 'Traceback' in log and 'simulated failure in the model' in log
    assert s['error'].startswith('InvalidArgumentError')
    assert 'simulated failure in the model' in s['error'], (
        f"summary.json error says {s['error']!r}: the model's message is only in error.log")
    assert re.search(r'^bad: failed: .*simulated failure in the model.*error\.log', err, re.M), err
    assert tf.train.latest_checkpoint(os.path.join(bad_dir, 'checkpoints')).endswith('ckpt-5')


def test_failing_experiment_with_fail_fast_stops(images, tmp_path, capsys):
    """--fail-fast: the good first one finishes, the failing one is `failed`, the third is not
    run (no run directory); exit status 1."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'three.yaml', *_three(images, logdir))
    rc, out, err = run_cli(capsys, path, '--no-smoke', '--fail-fast')
    assert rc == 1, out + err
    assert summary(os.path.join(logdir, 'good1'))['status'] == 'finished'
    assert summary(os.path.join(logdir, 'bad'))['status'] == 'failed'
    assert os.path.exists(os.path.join(logdir, 'bad', 'error.log'))
    assert not os.path.exists(os.path.join(logdir, 'good2'))
    assert 'good2' not in out


# ---------------------------------------------------------------------------
# 6. Unwritable log directory

def _unwritable_parent(tmp_path):
    """A directory nothing can be created in: chmod 0500 where that binds (not root), else a
    path under a regular file (root ignores permission bits)."""
    ro = tmp_path / 'read-only'
    ro.mkdir()
    ro.chmod(0o500)
    try:
        (ro / 'probe').write_text('x')
    except PermissionError:
        return ro, 'Permission denied'
    (ro / 'probe').unlink()
    ro.chmod(0o700)
    a_file = tmp_path / 'a-file'
    a_file.write_text('not a directory')
    return a_file, 'Not a directory'


def test_unwritable_logdir_fails_before_training(images, tmp_path):
    """A log directory that cannot be created: one clear line on stderr naming the key, the
    path and the reason, no traceback, no training, no run directory, exit status non-zero."""
    parent, reason = _unwritable_parent(tmp_path)
    logdir = parent / 'logs'
    path = write_yaml(tmp_path / 'e.yaml', experiment(images, tmp_path / 'unused', 'ro'))
    try:
        rc, child = run_child([path, '--no-smoke', '--logdir', logdir], tmp_path / 'stderr.txt')
    finally:
        if parent.is_dir():
            parent.chmod(0o700)
    assert rc != 0
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f'expected one line on stderr, got:\n{child.stderr}'
    assert lines[0].startswith('error: ') and 'train_parameters.logdir' in lines[0]
    assert str(logdir) in lines[0] and reason in lines[0], lines[0]
    assert 'Traceback' not in child.stdout
    assert not re.search(r'^ro: (starting|resuming)|^ro step', child.stdout, re.M), child.stdout
    assert not os.path.exists(logdir)
    assert not os.path.exists(tmp_path / 'unused')


def test_workers_check_one_logdir_at_once(tmp_path):
    """The workers of a multi-worker run check the shared log directory at the same moment;
    a probe file shared between them was removed by one under another (a flaky failure of
    the two-worker test). Four threads, 300 checks each, none may fail."""
    from runner import rundir
    problems = []

    def check():
        for _ in range(300):
            problem = rundir.check_writable(str(tmp_path), 0)
            if problem:
                problems.append(problem)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == [] and os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# 7. --restart

def test_restart_moves_the_old_run_aside_and_starts_from_zero(images, tmp_path, capsys):
    """--restart NAME: the old run directory is moved, whole, to NAME.restarted-<timestamp> and
    the new run starts at step 0 (not from the old checkpoint)."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml',
                      experiment(images, logdir, 'r', lr_values=[0.05], lr_boundaries=[15], log_interval=1))
    run_dir = os.path.join(logdir, 'r')
    rc, out, _ = run_cli(capsys, path, '--no-smoke')
    assert rc == 0
    old_metrics = open(os.path.join(run_dir, 'metrics.jsonl')).read()
    old_files = sorted(os.path.relpath(p, run_dir) for p in glob.glob(os.path.join(run_dir, '**'), recursive=True))

    rc, out, err = run_cli(capsys, path, '--no-smoke', '--restart', 'r')
    assert rc == 0, err
    m = re.search(r'^r: old run moved to (\S+)$', out, re.M)
    assert m, out
    moved = m.group(1)
    assert re.fullmatch(re.escape(run_dir) + r'\.restarted-\d{8}-\d{6}', moved), moved
    assert sorted(os.path.relpath(p, moved) for p in glob.glob(os.path.join(moved, '**'), recursive=True)) == old_files
    assert open(os.path.join(moved, 'metrics.jsonl')).read() == old_metrics
    assert summary(moved)['status'] == 'finished'
    assert re.search(r'^r: starting ', out, re.M) and 'resuming' not in out
    steps = [r['step'] for r in metrics(run_dir) if r['kind'] == 'train']
    assert steps == list(range(1, 16))
    assert re.search(r'^r step 1/15: loss', out, re.M)
    assert summary(run_dir)['status'] == 'finished'


def test_restart_twice_in_the_same_second_keeps_both_old_runs(images, tmp_path, capsys, monkeypatch):
    """Two --restart of one run within a second (a script, a fast run): each old run is kept
    where the message says, not nested inside the other."""
    import datetime
    from runner import rundir

    class FrozenClock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 2, 3, 4, 5)

    monkeypatch.setattr(rundir.datetime, 'datetime', FrozenClock)
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml',
                      experiment(images, logdir, 'r', lr_values=[0.05], lr_boundaries=[3], log_interval=1))
    run_dir = os.path.join(logdir, 'r')
    assert run_cli(capsys, path, '--no-smoke')[0] == 0
    moved = []
    for _ in range(2):
        rc, out, _ = run_cli(capsys, path, '--no-smoke', '--restart', 'r')
        assert rc == 0
        moved.append(re.search(r'^r: old run moved to (\S+)$', out, re.M).group(1))
    nested = os.path.join(moved[0], 'r')
    assert moved[0] != moved[1], (f'both old runs reported at {moved[0]}; the second one is '
                                  f'{"nested inside the first, at " + nested if os.path.isdir(nested) else "lost"}')
    for target in moved:
        assert summary(target)['status'] == 'finished'
        assert not os.path.exists(os.path.join(target, 'r')), f'an old run was nested in {target}'
    assert summary(run_dir)['status'] == 'finished'


# ---------------------------------------------------------------------------
# 8. A finished run is skipped

def test_finished_run_is_skipped_and_says_so(images, tmp_path, capsys):
    """Running again after a run finished trains nothing, says so (and how to train it again),
    changes nothing in the run directory, and exits 0."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 'e.yaml',
                      experiment(images, logdir, 'done', lr_values=[0.05], lr_boundaries=[10]))
    run_dir = os.path.join(logdir, 'done')
    assert run_cli(capsys, path, '--no-smoke')[0] == 0

    def snapshot():
        out = {}
        for p in sorted(glob.glob(os.path.join(run_dir, '**'), recursive=True)):
            if os.path.isfile(p):
                with open(p, 'rb') as f:
                    out[os.path.relpath(p, run_dir)] = (f.read(), os.stat(p).st_mtime_ns)
        return out

    before = snapshot()
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 0, err
    assert 'done: finished at step 10; skipped (--restart done trains it again)' in out
    assert not re.search(r'^done: (starting|resuming)|^done step', out, re.M), out
    assert snapshot() == before
