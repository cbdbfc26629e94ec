"""The benchmark scripts still run and say what they measured on: a few steps of each
contender, not a timing (their figures belong in docs/benchmarks.md, with the machine)."""
import importlib
import os
import re
import subprocess
import sys

from conftest import ROOT, subprocess_env
import runner
from runner.training import distribute


def test_train_throughput_runs_every_contender_and_names_the_kernels():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'train_throughput.py'), '--model',
         'cifar_resnet20', '--batch', '8', '--steps', '4', '--warmup', '1', '--rounds', '2'],
        env=subprocess_env(), capture_output=True, text=True, timeout=300, check=True).stdout
    # on x86 the runner switches TensorFlow's oneDNN kernels on, and every contender gets them
    assert ('oneDNN kernels on' if runner.on_x86() else 'oneDNN kernels ') in out.splitlines()[0], out
    rates = dict(re.findall(r'^(\S.*?)\s{2,}(\d+)', out, re.M))
    assert set(rates) == {'input pipeline alone', 'runner train_step', 'bare tf.function loop',
                          'keras Model.fit'}, out
    assert all(int(r) > 0 for r in rates.values())
    assert re.search(r'^bare tf.function loop\s+\d+\s+1.00$', out, re.M), out
    # the runner and fit with their round-by-round ratio to the bare loop, and its spread
    for name in ('runner train_step', 'keras Model.fit'):
        assert re.search(rf'^{name}\s+\d+\s+\d\.\d\d\s+\d\.\d\d \(\d\.\d\d-\d\.\d\d\) of 2$', out, re.M), out
    assert 'peak resident memory of this process (all contenders):' in out


def benchmark(name):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(os.path.join(ROOT, 'benchmarks'))


def test_time_to_accuracy_names_the_machine():
    time_to_accuracy = benchmark('time_to_accuracy')
    line = time_to_accuracy.machine()
    assert line.startswith(distribute.cpu_description() + ', no GPU in use, oneDNN kernels ')
    assert 'load average' in line


def test_paired_ratios_are_the_quartiles_of_round_by_round_ratios():
    train_throughput = benchmark('train_throughput')
    bare = [1.0, 2.0, 1.0, 1.0, 1.0]
    runner_seconds = [1.0, 1.0, 2.0, 0.5, 1.25]   # ratios 1, 2, 0.5, 2, 0.8
    assert train_throughput.paired_ratios(bare, runner_seconds) == (0.8, 1.0, 2.0)
    assert train_throughput.paired_ratios([1.0], [2.0]) == [0.5, 0.5, 0.5]


def test_smoke_phases_prints_a_row_of_phases_for_resnet20():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'smoke_phases.py'), '--only',
                          'he2015_resnet20'], env=subprocess_env(), capture_output=True, text=True,
                         timeout=600, check=True).stdout
    assert out.splitlines()[0].startswith('network | build | trace | steps'), out
    assert re.search(r'^cifar_resnet20( \| \d+\.\d){7}$', out, re.M), out
