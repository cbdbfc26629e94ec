"""Features run as a user runs them, in a real process of their own: `jit_compile: true` and
a cosine schedule (tiny_cnn for 10 steps on the coloured-squares image folder, two runs of
one file in one process), and `python -m runner keys`. Their units are tested elsewhere
(tests/test_schedule.py, the XLA step in benchmarks/train_throughput.py --jit); here the
whole path from the YAML to the run directory and the terminal."""
import dataclasses
import json
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env

STEPS, PEAK, WARMUP = 10, 0.05, 3
RUNS = """
module: tiny_models
model: tiny_cnn
dataset: {{image_folder: {images}}}
train_parameters:
  logdir: {logdir}
  run_name: cosine
  batch_size: 16
  log_interval: 1
  val_interval: 10
  lr_schedule: cosine
  warmup_steps: 3
  lr_values: [0.05]
  lr_boundaries: [10]
---
module: tiny_models
model: tiny_cnn
dataset: {{image_folder: {images}}}
train_parameters:
  logdir: {logdir}
  run_name: jit
  batch_size: 16
  log_interval: 1
  val_interval: 10
  lr_values: [0.05]
  lr_boundaries: [10]
  jit_compile: true
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory, image_folder):
    """The two runs trained by `run_experiments.py FILE --no-smoke` in one process, the cosine
    one first: (logdir, the process's stdout and stderr in the order written)."""
    root = tmp_path_factory.mktemp('e2e')
    path = root / 'runs.yaml'
    path.write_text(RUNS.format(images=image_folder, logdir=root / 'logs'))
    # TensorFlow's INFO lines on: XLA says when it compiles a cluster.
    env = subprocess_env(TF_CPP_MIN_LOG_LEVEL='0', PYTHONUNBUFFERED='1')
    p = subprocess.run([sys.executable, 'run_experiments.py', str(path), '--no-smoke'], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert p.returncode == 0, p.stdout
    return root / 'logs', p.stdout


def train_records(run_dir):
    with open(run_dir / 'metrics.jsonl') as f:
        return [r for r in map(json.loads, f) if r['kind'] == 'train']


def summary(run_dir):
    with open(run_dir / 'summary.json') as f:
        return json.load(f)


def test_jit_compile_true_trains_through_xla_to_the_same_first_loss(trained):
    """XLA compiles the train step of the jit run only (its line comes after that run starts),
    which computes the same first loss as the uncompiled run of the same seed and data, and
    trains: the loss falls and the run finishes."""
    logdir, out = trained
    xla = out.find('Compiled cluster using XLA')
    assert xla > out.find('jit: starting') > out.find(f'cosine step {STEPS}/{STEPS}: test top-1') > 0, out
    jit, plain = train_records(logdir / 'jit'), train_records(logdir / 'cosine')
    assert [r['step'] for r in jit] == list(range(1, STEPS + 1))
    assert jit[0]['loss'] == pytest.approx(plain[0]['loss'], rel=1e-4)
    assert jit[-1]['loss'] < 0.7 * jit[0]['loss'], [r['loss'] for r in jit]
    assert summary(logdir / 'jit')['status'] == 'finished'


def cosine_rate(step):
    """The rate of optimizer step `step` (from 0): a linear warm-up from 0 to the peak over
    WARMUP steps, then half a cosine down to 0 at the end (Loshchilov & Hutter 2017, SGDR,
    without restarts)."""
    if step < WARMUP:
        return PEAK * step / WARMUP
    return PEAK * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def test_a_cosine_run_trains_at_the_rates_of_the_curve(trained):
    """Every step of the run logs the rate it trained at (step n trains at the rate of
    optimizer step n - 1): up to the peak over the warm-up, then down the cosine to nearly 0."""
    logdir, out = trained
    records = train_records(logdir / 'cosine')
    assert [r['step'] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert r['lr'] == pytest.approx(cosine_rate(r['step'] - 1), rel=1e-5, abs=1e-9), r
    assert max(r['lr'] for r in records) == pytest.approx(PEAK) and records[-1]['lr'] < 0.05 * PEAK
    assert re.search(rf'^cosine step {WARMUP + 1}/{STEPS}: .* lr 0\.05 ', out, re.M), out
    assert summary(logdir / 'cosine')['status'] == 'finished'


def schema_keys():
    """Every key of the experiment schema, dotted, from its dataclasses."""
    from runner.config.schema import Experiment
    keys = []
    for f in dataclasses.fields(Experiment):
        if f.metadata.get('internal'):
            continue
        if dataclasses.is_dataclass(f.type):
            keys += [f'{f.name}.{g.name}' for g in dataclasses.fields(f.type)]
        else:
            keys.append(f.name)
    return keys


def test_keys_prints_every_key_with_its_type_default_and_meaning():
    p = subprocess.run([sys.executable, '-m', 'runner', 'keys'], cwd=ROOT, env=subprocess_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == '', p.stderr
    lines = p.stdout.splitlines()
    keys = schema_keys()
    assert len(keys) > 50 and {'repeats', 'grid'} <= set(re.findall(r'^  (\w+)  \(', p.stdout, re.M))
    section = None
    for i, line in enumerate(lines):
        if re.match(r'^\w+:  \S', line):                 # a section header
            section = line.split(':')[0]
        elif line.startswith('  ') and not line.startswith('   '):
            key = line.split()[0]
            # a key under a section header is that section's; the top-level keys come first
            assert key.startswith(f'{section}.') if section else '.' not in key, line
            assert re.match(rf'^  {re.escape(key)}  \([^,]+, default .+\)$', line), line
            assert lines[i + 1].startswith('      ') and len(lines[i + 1].strip()) > 10, lines[i + 1]
    printed = [l.split()[0] for l in lines if l.startswith('  ') and not l.startswith('   ')]
    assert sorted(printed) == sorted(set(printed)), 'a key printed twice'
    assert set(k for k in keys if k not in ('dataset', 'train_parameters', 'paper')) <= set(printed)
    assert ('  train_parameters.lr_schedule  (string, default piecewise, allowed: piecewise, linear, '
            'cosine, piecewise_linear)') in lines
    assert '  train_parameters.jit_compile  (true/false, default false)' in lines
