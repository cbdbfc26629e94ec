"""The model registry (models/zoo.py) against what reads it and what it claims, without
TensorFlow: the README's model table is the registry's, every result in it belongs to the
recipe as it stands, and --list's counts come without building a model. The counts
themselves are checked against built models in test_models.py."""
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from models import zoo
from runner.__main__ import between_markers


def test_readme_model_table_is_the_registry():
    """README.md's zoo table is `python -m runner zoo`'s output, run as a user would."""
    out = subprocess.run([sys.executable, '-m', 'runner', 'zoo'], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stderr
    assert between_markers('README.md', 'zoo') == out.stdout, \
        'run `python -m runner zoo --update-docs`'
    assert out.stdout == zoo.markdown_table()


def test_the_registry_imports_no_tensorflow():
    """--list and the table read models.zoo in a process that never imports TensorFlow."""
    code = ('import sys, models, models.zoo; models.zoo.markdown_table(); '
            'assert "keras" not in sys.modules and "tensorflow" not in sys.modules')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
    assert out.returncode == 0, out.stderr


def _git(*args):
    out = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f'git {" ".join(args)}: {out.stderr.strip()} (the result check needs the '
                    f'repository history)')
    return out.stdout


def _run_document(text, run):
    """The experiment document of `run` in a recipe's text, or None."""
    for doc in yaml.safe_load_all(text):
        if doc and (doc.get('train_parameters') or {}).get('run_name') == run:
            return doc
    return None


def _result_lines(path):
    """[(run or None, accuracy %, recipe commit or None)] of the recipe's '# Result here:' lines."""
    found = []
    for line in open(os.path.join(ROOT, path)):
        if line.startswith('# Result here:'):
            claim = re.search(r'Result here: (\w+) (\d+\.\d+)%', line)
            commit = re.search(r'recipe at ([0-9a-f]{7,})', line)
            found.append((claim and claim.group(1), claim and float(claim.group(2)),
                          commit and commit.group(1)))
    return found


RESULTS = [(name, r) for name, cfg in zoo.default_cfgs.items() for r in cfg.results]


@pytest.mark.parametrize('name, result', RESULTS, ids=[r.run for _, r in RESULTS])
def test_each_project_result_is_the_recipes_recorded_one_and_still_its_recipe(name, result):
    """The 'this project' column: the recipe's header records the same figure for the run and
    the same recipe commit, the run trains `name`, and the run's experiment at that commit is
    the one in the file today (comments aside), so the figure belongs to the recipe as it is."""
    claims = [c for c in _result_lines(result.recipe) if c[0] == result.run]
    assert claims, f'{result.recipe}: no "# Result here: {result.run} <accuracy>%" line'
    _, accuracy, commit = claims[0]
    assert round(100 - accuracy, 2) == result.error and commit == result.commit
    current = _run_document(open(os.path.join(ROOT, result.recipe)).read(), result.run)
    assert zoo.canonical_name(current['model']) == name
    assert _run_document(_git('show', f'{result.commit}:{result.recipe}'), result.run) == current, \
        f'{result.run} changed since {result.commit}: its figure belongs to another recipe'


def test_every_current_recipe_result_is_in_the_table():
    """A recipe header's figure for a run whose experiment is unchanged since the commit it
    names is a result of the recipe as it stands: the registry (so the table) has it."""
    recorded = {(r.run, r.commit) for _, r in RESULTS}
    folder = os.path.join(ROOT, 'experiments')
    for file in sorted(os.listdir(folder)):
        path = os.path.join('experiments', file)
        for run, accuracy, commit in _result_lines(path):
            if run is None or commit is None:
                continue
            then = _run_document(_git('show', f'{commit}:{path}'), run)
            if then == _run_document(open(os.path.join(ROOT, path)).read(), run):
                assert (run, commit) in recorded, f'{path}: {run} {accuracy}% is not in models/zoo.py'


def test_counts_without_building():
    """--list's count: the registry's where the options leave the weights as they are, for any
    number of classes and, where the count does not depend on it, any input size."""
    count = zoo.trainable_params
    assert count('cifar_resnet20', 10, (32, 32, 3), {'block_type': 'original', 'shortcut_type': 'A'}) == 269_722
    assert count('cifar_resnet110', 10, None, {'block_type': 'preactivated'}) == 1_727_962
    assert count('cifar_resnet20', 100, (64, 64, 3)) == 269_722 + 90 * 65
    assert count('WRN_28_10', 10, None, {'dropout': 0.3}) == 36_479_194  # the seed's name
    assert count('cifar_resnet20', 10, None, {'shortcut_mode': 'A'}) == 269_722  # and parameter
    assert count('cifar_airbench94', 10, None, {'fused_norm': True, 'widths': [64, 256, 256]}) == 1_971_352
    # Options that change the weights, another input size for a model whose count depends on
    # it, another number of channels, a family function, a model not of the zoo: no count.
    assert count('cifar_resnet20', 10, None, {'shortcut_type': 'B'}) is None
    assert count('cifar_airbench94', 10, None, {'widths': [32, 64, 128]}) is None
    assert count('alexnet', 1000, (227, 227, 3)) is None
    assert count('cifar_resnet20', 10, (32, 32, 1)) is None
    assert count('cifar_resnet', 10, None, {'depth': 20}) is None
    assert count('my_model', 10) is None


def test_seed_names_and_every_cfg_is_consistent():
    assert zoo.canonical_name('WRN_40_4') == 'cifar_WRN_40_4'
    assert zoo.canonical_name('cifar_resnet20') == 'cifar_resnet20'
    for name, cfg in zoo.default_cfgs.items():
        assert (cfg.params is None) == bool(cfg.required), name
        if cfg.params:
            assert (cfg.params[1] - cfg.params[0]) % 990 == 0, f'{name}: a count is not affine in the classes'
        for r in cfg.results:
            assert os.path.exists(os.path.join(ROOT, r.recipe)), r.recipe


def test_list_of_every_shipped_file_reads_the_registry_without_tensorflow(tmp_path):
    """`--list` of every shipped experiment file counts from the registry and TFDS's metadata:
    one process lists them all (no data here) and never imports TensorFlow or Keras, which
    building the models took minutes for (ResNet-1001, the ImageNet nets)."""
    files = [os.path.join(ROOT, 'experiments.yaml')] + sorted(
        os.path.join(ROOT, 'experiments', f) for f in os.listdir(os.path.join(ROOT, 'experiments')))
    code = ('import sys; from runner import cli\n'
            f'for f in {files!r}:\n'
            '    assert cli.main([f, "--list", "--set", "dataset.data_dir=null"]) == 0, f\n'
            'assert "tensorflow" not in sys.modules and "keras" not in sys.modules')
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, 'PYTHONPATH': ROOT,
                                           'TFDS_DATA_DIR': str(tmp_path / 'no-data')})
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'cifar_resnet1001  10.33M (10,327,706)  tfds cifar10 (32x32x3, 10 classes)' in out.stdout
    assert 'tfds imagenet2012 (224x224x3, 1000 classes)' in out.stdout
    for f in files:
        for doc in yaml.safe_load_all(open(f)):
            if doc:
                assert f" {(doc.get('train_parameters') or {}).get('run_name') or doc['model']} " in out.stdout
