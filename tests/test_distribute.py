"""tf.distribute on the CPU: MirroredStrategy over two logical devices, and two
MultiWorkerMirroredStrategy workers on loopback."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from runner import rundir

EXPERIMENT = """
module: tiny_models
model: {model}
dataset: {{image_folder: {images}}}
train_parameters:
  logdir: {logdir}
  run_name: dist
  batch_size: 16
  log_interval: 1
  val_interval: 6
  checkpoint_interval: 3
  lr_values: [0.1]
  lr_boundaries: [6]
  distribution: {distribution}
"""

# Split the CPU into two logical devices before TensorFlow starts, then run the CLI.
TWO_CPUS = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(args, env=None, timeout=300):
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def train_losses(run_dir, key='loss'):
    return [r[key] for r in rundir.read_metrics(run_dir) if r['kind'] == 'train']


@pytest.mark.slow
def test_mirrored_over_two_cpu_devices_matches_one_device(tmp_path, image_folder):
    # decayed_linear has no batch norm, whose statistics are per replica: the summed
    # gradient of two half-batches must then equal the gradient of the whole batch, and
    # the weight-decay term, which each replica carries 1/2 of, must add up to the same.
    losses, reg_losses = {}, {}
    for distribution in ('none', 'mirrored'):
        path = tmp_path / f'{distribution}.yaml'
        path.write_text(EXPERIMENT.format(model='decayed_linear', images=image_folder,
                                          logdir=tmp_path / distribution, distribution=distribution))
        p = run(['-c', TWO_CPUS, str(path), '--no-smoke'])
        assert p.returncode == 0, p.stdout + p.stderr
        s = json.loads((tmp_path / distribution / 'dist' / 'summary.json').read_text())
        assert s['replicas'] == (2 if distribution == 'mirrored' else 1) and s['status'] == 'finished'
        losses[distribution] = train_losses(str(tmp_path / distribution / 'dist'))
        reg_losses[distribution] = train_losses(str(tmp_path / distribution / 'dist'), 'reg_loss')
    assert len(losses['none']) == 6 and min(reg_losses['none']) > 0
    assert losses['mirrored'] == pytest.approx(losses['none'], rel=1e-4)
    assert reg_losses['mirrored'] == pytest.approx(reg_losses['none'], rel=1e-4)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_loopback_train_checkpoint_and_finish(tmp_path, image_folder):
    # decayed_linear, without batch norm's per-replica statistics: two workers of half a
    # batch each must train as one device on the whole batch (measured: 2e-7 relative).
    path = tmp_path / 'mw.yaml'
    path.write_text(EXPERIMENT.format(model='decayed_linear', images=image_folder,
                                      logdir=tmp_path / 'logs', distribution='multi_worker'))
    one = tmp_path / 'one.yaml'
    one.write_text(EXPERIMENT.format(model='decayed_linear', images=image_folder,
                                     logdir=tmp_path / 'one', distribution='none'))
    p = run(['run_experiments.py', str(one), '--no-smoke'])
    assert p.returncode == 0, p.stdout + p.stderr
    workers = [f'127.0.0.1:{p}' for p in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}
        procs.append(subprocess.Popen(
            [sys.executable, 'run_experiments.py', str(path), '--no-smoke'], cwd=ROOT,
            env=subprocess_env(TF_CONFIG=json.dumps(tf_config)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], '\n'.join(outputs)
    run_dir = tmp_path / 'logs' / 'dist'
    s = json.loads((run_dir / 'summary.json').read_text())
    assert s['status'] == 'finished' and s['steps'] == 6 and s['replicas'] == 2
    # only the chief writes the run directory; the other worker's scratch copy is gone
    assert sorted(p.name for p in (run_dir / 'checkpoints').iterdir() if p.suffix == '.index') == \
        ['ckpt-3.index', 'ckpt-6.index']
    assert not any((tmp_path / 'logs' / '.workers' / 'dist').glob('*'))
    assert len(train_losses(str(run_dir))) == 6
    single = str(tmp_path / 'one' / 'dist')
    assert train_losses(str(run_dir)) == pytest.approx(train_losses(single), rel=1e-5)
    assert train_losses(str(run_dir), 'reg_loss') == pytest.approx(train_losses(single, 'reg_loss'), rel=1e-5)
    test_error = [r['top1_error'] for r in rundir.read_metrics(str(run_dir)) if r['kind'] == 'test']
    assert test_error == pytest.approx(
        [r['top1_error'] for r in rundir.read_metrics(single) if r['kind'] == 'test'], abs=1e-6)


@pytest.mark.parametrize('index, writes_chief_dir', [(0, True), (1, False)])
def test_only_the_chief_records_a_failure_in_the_run_directory(tmp_path, monkeypatch, index,
                                                               writes_chief_dir):
    from runner.training import failures
    from runner.config.expand import experiment_from_dict
    monkeypatch.setenv('TF_CONFIG', json.dumps({
        'cluster': {'worker': ['127.0.0.1:1', '127.0.0.1:2']}, 'task': {'type': 'worker', 'index': index}}))
    exp = experiment_from_dict({'model': 'cifar_resnet20', 'train_parameters': {
        'logdir': str(tmp_path), 'run_name': 'r', 'distribution': 'multi_worker'}})
    summary = failures.record_failure(exp, RuntimeError('out of memory'))
    assert summary['status'] == 'failed' and 'out of memory' in summary['error']
    chief_log = tmp_path / 'r' / 'error.log'
    worker_log = tmp_path / '.workers' / 'r' / f'worker{index}' / 'error.log'
    assert chief_log.exists() == writes_chief_dir
    assert worker_log.exists() == (not writes_chief_dir)
    assert 'out of memory' in (chief_log if writes_chief_dir else worker_log).read_text()


# A step that float16 loss scaling skips, under MirroredStrategy: the step counter is a
# mirrored variable, counted in the cross-replica part of the step.
SKIPPED_STEP = TWO_CPUS.split('from runner.cli')[0] + """
sys.path.insert(0, 'tests')
import keras
from runner.training import distribute, precision, failures
from runner.training.trainer import Trainer
from test_fast import make_data, make_exp
exp = make_exp(sys.argv[1], precision='mixed_float16', distribution='mirrored')
keras.backend.clear_session()
precision.set_policy('mixed_float16')
strategy = distribute.strategy_for('mirrored')
trainer = Trainer(exp, make_data(), strategy, 'mixed_float16')
trainer.start_input()
steps = []
for scale in (1024.0, 3e38, 1024.0):  # the middle one overflows: that step is skipped
    trainer.optimizer.dynamic_scale.assign(scale)
    trainer.train_step(trainer.iterator)
    steps.append(trainer.step)
print('replicas', strategy.num_replicas_in_sync, 'steps', *steps,
      'scale', float(trainer.optimizer.dynamic_scale.numpy()))
"""


@pytest.mark.slow
def test_a_skipped_float16_step_counts_under_mirrored(tmp_path):
    p = run(['-c', SKIPPED_STEP, str(tmp_path)])
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'replicas 2 steps 1 2 3 scale 1024.0' in p.stdout, p.stdout + p.stderr[-2000:]
