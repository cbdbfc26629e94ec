"""Every script of benchmarks/ runs in CI with tiny arguments, so the code behind each figure
of docs/benchmarks.md, docs/smoke.md and docs/tensorboard.md runs: it prints its table and
says what it measured on. A few steps of each, not a timing (the figures belong in the docs,
with the machine); nothing here asserts a speed."""
import importlib
import os
import re
import subprocess
import sys

import pytest

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


def bench(script, *args, cwd=ROOT):
    """The stdout of benchmarks/SCRIPT run with these arguments (it must exit 0)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *map(str, args)], cwd=cwd,
                       env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_smoke_phases_prints_a_row_of_phases_for_resnet20_and_the_goals():
    out = bench('smoke_phases.py', '--only', 'he2015_resnet20', '--goals', '--files', 'experiments.yaml',
                '--jobs', '1')
    assert out.splitlines()[0].startswith('network | build | trace | steps'), out
    assert re.search(r'^cifar_resnet20( \| \d+\.\d){7}$', out, re.M), out
    # the goals: the smoke run of a file as the command runs it, cold, then with nothing changed
    assert re.search(r'^1 experiments of 1 file\(s\): validation \d+ s', out, re.M), out
    assert re.search(r'^goal: every experiment smoke-tested cold under 300 s: \d+ s \((met|missed)\)$', out, re.M), out
    assert re.search(r'^goal: nothing changed under 10 s: \d+\.\d s \((met|missed)\)$', out, re.M), out


@pytest.mark.needs('cifar10-tfds')
def test_time_to_accuracy_prints_each_target_crossed_or_not(cifar10_tfds_dir):
    """Two steps of cifar10_fast_90 (float32, batch 16, a slice of CIFAR-10) evaluated after
    each: 0% is crossed at the first evaluation, 99% is not reached."""
    out = bench('time_to_accuracy.py', '--data-dir', cifar10_tfds_dir, '--only', 'cifar10_fast_90',
                '--steps', 2, '--eval-every', 1, '--targets', '0,99',
                '--set', 'train_parameters.batch_size=16', '--set', 'train_parameters.precision=float32',
                '--set', 'dataset.train_split=train[:256]', '--set', 'dataset.test_split=test[:64]')
    assert out.startswith(f'machine: {distribute.cpu_description()}, no GPU in use'), out
    assert re.search(r'^cifar10_fast_90 \(finished, exit 0\): 2 steps, .* start-up \d+ s, one evaluation \d+ s', out, re.M), out
    assert re.search(r'^ +0%  +1  +0\.00  +\d+\.\d\d%  +\d+  +\d+ s = \d+\.\d min$', out, re.M), out
    assert re.search(r'^ +99%  +not reached$', out, re.M), out
    assert re.search(r'^  final test accuracy \d+\.\d\d% at step 2; whole run \d+ s with 2 evaluations$', out, re.M), out


def test_roofline_prints_the_peak_each_layer_and_the_step_against_them():
    """airbench94 at batch 4 in float32 and bfloat16: each kernel timed once."""
    out = bench('roofline.py', '--models', 'cifar_airbench94', '--precisions', 'float32,bfloat16',
                '--matmul', 128, '--batch', 4, '--repeats', 1, '--steps', 2, '--min-seconds', 0)
    assert out.startswith(distribute.cpu_description() + '; TensorFlow '), out
    for prec in ('float32', 'bfloat16'):
        assert re.search(rf'^matmul 128\^3 {prec} +\d+\.\d GFLOP/s$', out, re.M), out
        # the six 3x3 convs and the whitening layer, forward and training rates
        block = out.split(f'  {prec}: layer, shapes')[1]
        rows = re.findall(r'^    (\w+) +\(.*\) +\(.*\) +\d+\.\d +\d+\.\d$', block, re.M)
        assert rows[:7] == ['stem_whiten'] + [f'block{i}_conv{j}' for i in (1, 2, 3) for j in (1, 2)], out
        assert re.search(rf'^cifar_airbench94 +{prec} +\d+\.\d +\d+\.\d +\d+\.\d +\d+\.\d +\d+% +\d+%$', out, re.M), out
        for budget in ('airbench94 (9.9 epochs)', 'airbench94_muon (8 epochs)'):
            assert re.search(rf'^{re.escape(budget)} of cifar_airbench94 in {prec}: minutes of training at the '
                             r'peak \d+\.\d, floor \d+\.\d, step \d+\.\d \(\d\.\d\d PFLOP\)$', out, re.M), out
    assert re.search(r'^cifar_airbench94, batch 4: \d+\.\d MFLOP forward per image', out, re.M), out
    assert re.search(r'^attainable peak \(best of matmul and conv kernels\): float32 \d+\.\d GFLOP/s, '
                     r'bfloat16 \d+\.\d GFLOP/s$', out, re.M), out


@pytest.mark.needs('cifar10-tfds')
def test_runner_vs_plain_loop_prints_both_accuracies_and_rates(cifar10_tfds_dir):
    out = bench('runner_vs_plain_loop.py', '--data-dir', cifar10_tfds_dir, '--steps', 4, '--batch', 8,
                '--train-split', 'train[:64]', '--test-split', 'test[:32]')
    assert 'ResNet-20, 4 steps of batch 8, LR [0.01, 0.1] until [2, 4]' in out, out
    for name in ('runner', 'plain loop'):
        acc, rate = re.search(rf'^{name} +(\d\.\d{{4}}) +(\d+)$', out, re.M).groups()
        assert 0 <= float(acc) <= 1 and int(rate) > 0, out


def tiny_file(path, image_folder, train_parameters):
    """An experiment file of tiny_cnn on the image folder with these train_parameters."""
    path.write_text(f'module: tiny_models\nmodel: tiny_cnn\ndataset: {{image_folder: {image_folder}}}\n'
                    f'train_parameters: {{{train_parameters}}}\n')
    return path


def test_tensorboard_cost_prints_each_extra_against_the_run(image_folder, tmp_path):
    """The first experiment of a file of tiny_cnn on the image folder, 2 timed steps."""
    path = tiny_file(tmp_path / 'tb.yaml', image_folder, f"logdir: {tmp_path / 'logs'}, run_name: tb, "
                     'batch_size: 16, val_interval: 10, lr_values: [0.05], lr_boundaries: [40]')
    out = bench('tensorboard_cost.py', path, '--steps', 2)
    assert out.startswith('tb: tiny_cnn, 40 steps of batch 16, 4 evaluations\n'), out
    for line in (r'training step +\d+\.\d ms +whole run \d+\.\d\d h', r'overview \(per session\) +\d+\.\d{3} s +[\d.]+% of the run',
                 r'confusion image \(each\) +\d+\.\d{3} s', r'confusion counts \(each\) *\d+\.\d{3} s +\(40 test images\)',
                 r'all extras, one session *\d+\.\d{3} s +[\d.]+% of the run'):
        assert re.search(rf'^  {line}$', out, re.M), (line, out)
    assert not (tmp_path / 'logs').exists(), 'it writes into a temporary directory only'


def test_input_pipeline_prints_a_row_per_thread_setting_and_the_memory(tmp_path):
    """16 generated JPEGs at 64 px, streamed (a cache budget of 1 MB), 2 timed batches of 4."""
    out = bench('input_pipeline.py', '--images', 16, '--size', 64, '--batch', 4, '--batches', 2,
                '--warmup', 1, '--budget-mb', 1, '--dir', tmp_path / 'jpegs')
    assert re.search(r'^generated 16 JPEGs in ', out, re.M), out
    assert re.search(r'^16 training images, \d+ MB of JPEG, about \d+ MB decoded; cache budget 1 MB: streamed$', out, re.M), out
    cores = len(os.sched_getaffinity(0))
    threads = re.findall(r'^\| (\d+) \| \d+ \| \d+\.\d\d \| \d+ \|$', out, re.M)
    assert threads == sorted({'1', str(cores)}, key=int), out
    assert re.search(r'^resident memory while streaming \(\d+\.\d epochs of 16 images, .* peak \d+ MB', out, re.M), out
    assert len(os.listdir(tmp_path / 'jpegs' / 'train')) == 10


def test_search_prints_each_pruners_time_not_training_and_what_it_saved(image_folder, tmp_path):
    """A search of two tiny_cnn trials of 4 steps, one process, with the median pruner and
    without."""
    path = tmp_path / 's.yaml'
    path.write_text(f"""
module: tiny_models
model: tiny_cnn
dataset: {{image_folder: {image_folder}, validation_fraction: 0.25}}
train_parameters: {{run_name: s, batch_size: 16, val_interval: 2, lr_values: [0.05], lr_boundaries: [4]}}
search:
  trials: 2
  pruner: median
  startup_trials: 1
  space:
    train_parameters.lr_values[0]: {{low: 0.01, high: 0.1, log: true}}
""")
    out = bench('search.py', path, '--set', 'search.trials=2', '--processes', 1)
    assert out.startswith(f'machine: {distribute.cpu_description()}, load average '), out
    # without a pruner both trials train their 4 steps; the median rule may stop the second
    for pruner, trained in (('median', r'[68] steps trained, [01]'), ('none', '8 steps trained, 0')):
        assert re.search(rf'^pruner {pruner}: 2 trials in \d+\.\d min; not training: \d+\.\d\d% of each '
                         r"process's wall time between trials \(\d+\.\d\d% with its reading of the "
                         r"dataset before its first trial; its exit after its results table: \d+\.\d s\); "
                         rf"{trained} trials pruned, best validation top-1 "
                         r'error \d+\.\d\d%$', out, re.M), out
    assert re.search(r'^median pruner against none: [02] steps saved \(\d+%\); best validation error '
                     r'\d+\.\d\d% against \d+\.\d\d%$', out, re.M), out


def test_startup_prints_a_cold_and_a_warm_start_split_into_phases(image_folder, tmp_path):
    """tiny_cnn on the colour-coded images, started once cold and once warm."""
    path = tiny_file(tmp_path / 'r.yaml', image_folder, 'run_name: r, batch_size: 16, lr_values: [0.05], '
                     'lr_boundaries: [4]')
    out = bench('startup.py', path, '--only', 'r', '--warm', 1)
    assert out.startswith(f'machine: {distribute.cpu_description()}, no GPU in use'), out
    assert re.search(r'^python -c "import tensorflow": \d+\.\d s$', out, re.M), out
    for start in ('cold', 'warm'):
        assert re.search(rf'^{start}( \| \d+\.\d){{5}}$', out, re.M), out
