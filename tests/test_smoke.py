"""The smoke run (runner/queue/smoke.py): passes remembered under a key and invalidated by what
changes a test, shared keys tested once, failures in parallel workers reported in file
order while the others finish, SIGTERM and Ctrl-C stopping it at once, no smoke run where
nothing is left to train, no re-test of an interrupted run's resume, no retracing warning, and
a graph-only failure caught though the steps run eagerly."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, subprocess_env
from runner import cli
from runner.queue import smoke
from runner.training import distribute, session, signals
from runner.training.trainer import Trainer
from runner.config.expand import load_experiments

# A user's model module, written per test (its file's contents are part of the key).
MODELS = '''
import multiprocessing
import os
import signal
import time

import keras


def small(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, width=4):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, padding='same')(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


class FailsInTraining(keras.layers.Layer):
    def call(self, x, training=None):
        if training:
            raise ValueError('this layer cannot train')
        return x


def fails_in_training(input_shape=(32, 32, 3), num_classes=10):
    """Builds (validation passes) but fails in the smoke test's train step."""
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(FailsInTraining()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


class NeedsEager(keras.layers.Layer):
    def call(self, x, training=None):
        if training:
            x.numpy()  # a value in Python: fine eagerly, impossible in a graph
        return x


def fails_as_a_graph(input_shape=(32, 32, 3), num_classes=10):
    """Trains eagerly, but training's traced step cannot hold it."""
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(NeedsEager()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def in_smoke_worker():
    return multiprocessing.parent_process() is not None


def dies_in_worker(input_shape=(32, 32, 3), num_classes=10):
    """Kills the smoke worker that builds it, as the kernel's out-of-memory killer would."""
    if in_smoke_worker():
        os.kill(os.getpid(), signal.SIGKILL)
    return small(input_shape, num_classes)


def slow_in_worker(input_shape=(32, 32, 3), num_classes=10, seconds=120):
    """A smoke test that takes minutes (as ResNet-1001's once did) in a worker."""
    if in_smoke_worker():
        time.sleep(seconds)
    return small(input_shape, num_classes)
'''


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A model module of the test's own, importable here and in the smoke workers."""
    folder = tmp_path / 'models_here'
    folder.mkdir()
    name = f'smoke_models_{abs(hash(str(tmp_path))) % 10**8}'
    path = folder / f'{name}.py'
    path.write_text(MODELS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(folder), ROOT, os.path.join(ROOT, 'tests'),
                                                      os.environ.get('PYTHONPATH', '')]))
    return name, path


def experiment(module, logdir, run_name, model='small', seed=0, **model_parameters):
    return {'module': module, 'model': model, 'model_parameters': model_parameters,
            'dataset': {'name': 'cifar10', 'data_dir': None},
            'train_parameters': {'logdir': str(logdir), 'run_name': run_name, 'seed': seed,
                                 'batch_size': 8, 'log_interval': 1, 'val_interval': 4,
                                 'lr_values': [0.01], 'lr_boundaries': [4]}}


def write(path, *docs):
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


@pytest.fixture(autouse=True)
def no_data(tmp_path, monkeypatch):
    # No CIFAR-10 here: the smoke tests use random images of its shape.
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no-data'))


def checked_of(path, *overrides):
    distribute.quiet_tensorflow()
    return cli.validate(load_experiments(path, list(overrides)), need_data=False)


def test_a_changed_model_parameter_or_model_file_invalidates_a_remembered_pass(tmp_path, models):
    module, model_file = models
    logdir = tmp_path / 'logs'
    path = write(tmp_path / 'e.yaml', experiment(module, logdir, 'a'), experiment(module, logdir, 'b', width=8))
    a, b = checked_of(path)
    key = smoke.smoke_key(a.exp, a.data_ready)
    assert smoke.smoke_key(b.exp, b.data_ready) != key, 'model_parameters are part of the key'
    assert smoke.remember_pass(a.exp, key, 1.0)
    assert os.listdir(logdir / smoke.PASSED_DIR) == [key + '.json'], 'stored inside the logdir'
    items, todo = smoke.plan([a, b])
    assert 'passed before' in items[0].skip and todo == [items[1]]
    # What does not change the test leaves the key alone: where, under which name, how
    # long, how often it logs, and the seed (repeats share a test).
    moved, = checked_of(path, ('train_parameters.logdir', str(tmp_path / 'elsewhere')),
                        ('train_parameters.run_name', 'renamed'), ('train_parameters.steps', 3),
                        ('train_parameters.log_interval', 2), ('train_parameters.seed', 7))[:1]
    assert smoke.smoke_key(moved.exp, moved.data_ready) == key
    # What does: a model parameter, the model's file, the versions, the data being here.
    wider, = checked_of(path, ('model_parameters.width', 5))[:1]
    assert smoke.smoke_key(wider.exp, wider.data_ready) != key
    assert smoke.smoke_key(a.exp, not a.data_ready) != key
    other_tf = dict(smoke.versions(), tensorflow='0.0.0')
    assert smoke.smoke_key(a.exp, a.data_ready, other_tf) != key
    model_file.write_text(MODELS + '\n# an edit\n')
    assert smoke.smoke_key(a.exp, a.data_ready) != key
    items, todo = smoke.plan([a])
    assert not items[0].skip and todo == items, 'the edited model file is tested again'
    # --smoke on its own tests a remembered experiment anyway.
    model_file.write_text(MODELS)
    items, todo = smoke.plan([a], every=True)
    assert not items[0].skip and todo == items


def test_parallel_workers_report_in_file_order_and_a_failure_does_not_stop_the_others(
        tmp_path, models, capsys):
    module, _ = models
    logdir = tmp_path / 'logs'
    path = write(tmp_path / 'e.yaml',
                 experiment(module, logdir, 'a'),
                 experiment(module, logdir, 'twin', seed=3),              # a's key: tested once
                 experiment(module, logdir, 'bad', model='fails_in_training'),
                 experiment(module, logdir, 'dies', model='dies_in_worker'),
                 experiment(module, logdir, 'c', width=6))
    code = cli.main([path, '--smoke', '--smoke-jobs', '2'])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED, out + err
    lines = [l.strip() for l in out.splitlines() if l.startswith('  ')]
    assert [l.split()[:2] for l in lines] == [['ok', 'a'], ['ok', 'twin'], ['FAIL', 'bad:'],
                                              ['FAIL', 'dies:'], ['ok', 'c']], out
    assert '4 to test in 2 worker processes' in out and 'same test as a' in lines[1]
    assert 'ValueError: this layer cannot train' in lines[2]
    assert 'the smoke worker died' in lines[3] and 'killed by a signal' in lines[3]
    assert 'smoke test failed for 2 experiment(s)' in err
    assert err.index('(bad)') < err.index('(dies)'), 'failures listed in file order'
    # The passes are remembered, inside the logdir; the failures are not.
    assert len(os.listdir(logdir / smoke.PASSED_DIR)) == 2
    assert sorted(os.listdir(logdir)) == [smoke.PASSED_DIR]


def test_a_model_that_only_runs_eagerly_fails_the_smoke_test_as_training_would(
        tmp_path, models, image_folder, capsys):
    """The smoke test runs its two steps eagerly, but traces the step first: a model that
    training's graph cannot hold fails here, in one line, as its first training step would."""
    module, _ = models
    logdir = tmp_path / 'logs'
    exp = experiment(module, logdir, 'eager_only', model='fails_as_a_graph')
    exp['dataset'] = {'image_folder': image_folder}  # it trains: real (tiny) data
    path = write(tmp_path / 'e.yaml', exp)
    code = cli.main([path, '--smoke', '--smoke-jobs', '1'])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED, out + err
    line = next(l.strip() for l in out.splitlines() if 'eager_only' in l)
    assert line.startswith('FAIL') and 'numpy' in line, out
    code = cli.main([path, '--no-smoke', '--set', 'train_parameters.steps=1'])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED and 'numpy' in out + err, out + err


def test_no_smoke_run_when_finished_and_no_retest_of_an_interrupted_runs_resume(
        tmp_path, models, image_folder, capsys, monkeypatch):
    module, _ = models
    logdir = tmp_path / 'logs'
    exp = experiment(module, logdir, 'r')
    exp['dataset'] = {'image_folder': image_folder}  # it trains: real (tiny) data
    path = write(tmp_path / 'e.yaml', exp)
    exp, = load_experiments(path)
    # An interrupted run, stopped as a Ctrl-C during its first step stops it: at the end of
    # that step, with a checkpoint.
    stop = signals.StopRequest()
    first_step = Trainer.train_step

    def step_then_ctrl_c(trainer, iterator):
        first_step(trainer, iterator)
        stop.signal = signal.SIGINT
    monkeypatch.setattr(Trainer, 'train_step', step_then_ctrl_c)
    assert session.run(exp, quiet=True, stop=stop)['status'] == 'interrupted'
    monkeypatch.setattr(Trainer, 'train_step', first_step)
    assert cli.main([path]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert 'skip  r: resuming an interrupted run' in out and '0 to test' in out, out
    assert 'r: resuming' in out
    # Everything finished: no smoke run at all, only the training queue's "skipped".
    assert cli.main([path]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert 'smoke test' not in out and 'r: finished at step 4; skipped' in out, out
    # --smoke on its own still tests it.
    assert cli.main([path, '--smoke', '--smoke-jobs', '1']) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert '1 to test' in out and 'ok    r ' in out, out


def test_no_retracing_warning_over_many_smoke_tests_in_one_process(tmp_path, models, capfd, caplog):
    """A worker runs many smoke tests; each builds a Trainer whose step and evaluation
    functions are traced once and called a few times. TensorFlow's frequent-retracing
    detector once counted them all as one function retraced."""
    module, _ = models
    path = write(tmp_path / 'e.yaml', *[experiment(module, tmp_path / 'logs', f'w{w}', width=w)
                                        for w in range(2, 7)])
    for exp in load_experiments(path):
        smoke.smoke_test(exp)
    out, err = capfd.readouterr()
    assert 'triggered tf.function retracing' not in out + err + caplog.text


def _children(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.parametrize('how', ['SIGTERM', 'SIGINT to the process group',
                                 'SIGINT to the process group as the workers start'])
def test_a_signal_stops_the_smoke_run_and_its_workers_within_seconds(tmp_path, models, image_folder, how):
    module, _ = models
    logdir = tmp_path / 'logs'
    docs = [experiment(module, logdir, f's{k}', model='slow_in_worker', seconds=120 + k) for k in range(4)]
    for doc in docs:
        doc['dataset'] = {'image_folder': image_folder}  # a plain run: the data must be here
    path = write(tmp_path / 'e.yaml', *docs)
    env = subprocess_env(PYTHONPATH=os.environ['PYTHONPATH'], TFDS_DATA_DIR=str(tmp_path / 'no-data'))
    child = subprocess.Popen([sys.executable, 'run_experiments.py', path, '--smoke-jobs', '2'], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        # Both workers started and inside a test (they sleep in it for minutes).
        deadline = time.monotonic() + 120
        while len(_children(child.pid)) < 2 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(child.pid)
        assert child.poll() is None and len(workers) >= 2, child.communicate()
        if how != 'SIGINT to the process group as the workers start':
            time.sleep(8)  # the workers import TensorFlow and reach the test
        start = time.monotonic()
        if how == 'SIGTERM':
            child.send_signal(signal.SIGTERM)
        else:
            os.killpg(child.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole group
        out, err = child.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert took < 10, f'{took:.1f}s to stop'
    assert child.returncode == cli.EXIT_FAILED, out + err
    assert 'interrupted' in err and 'FAIL' not in out + err and 'ok  ' not in out, out + err
    assert 'Traceback' not in err, err
    assert not os.path.exists(logdir / smoke.PASSED_DIR)
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], 'a smoke worker outlived the command'
