"""Experiment files: every validation error is one line naming file, experiment and key,
exit status 2, no traceback and no run directory."""
import copy
import os
import re
import textwrap

import pytest

from runner import cli
from runner.queue import resume
from runner.config.errors import ConfigError
from runner.config.expand import experiment_from_dict, load_experiments, parse_overrides
from runner.config.reference import reference
from runner.config.schema import DatasetConfig

GOOD = """
module: tiny_models
model: tiny_cnn
dataset: {image_folder: IMAGES}
train_parameters:
  logdir: LOGDIR
  run_name: good
  lr_values: [0.1, 0.01]
  lr_boundaries: [10, 20]
"""


def write(tmp_path, text, image_folder='/nonexistent', name='exp.yaml'):
    path = tmp_path / name
    logdir = tmp_path / 'logs'
    path.write_text(textwrap.dedent(text).replace('IMAGES', str(image_folder))
                    .replace('LOGDIR', str(logdir)))
    return str(path), logdir


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_config_error(capsys, tmp_path, text, *needles, image_folder=None, extra=()):
    path, logdir = write(tmp_path, text, image_folder or '/nonexistent')
    code, out, err = run_cli(capsys, path, '--no-smoke', *extra)
    assert code == 2, (out, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    assert lines[0].startswith(f'error: {path}'), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    assert not logdir.exists(), 'nothing may be written for a bad file'
    return lines[0]


@pytest.mark.parametrize('text, needles', [
    # unknown key, with the closest valid key suggested
    (GOOD.replace('lr_values', 'lr_valus', 1), ["train_parameters.lr_valus", "did you mean 'train_parameters.lr_values'"]),
    (GOOD + 'skip_error_tset: true\n', ["skip_error_tset", "did you mean 'skip_error_test'"]),
    # a key in the wrong section says where it belongs
    (GOOD + 'batch_size: 64\n', ["batch_size", "train_parameters.batch_size"]),
    # wrong types
    (GOOD.replace('run_name: good', 'run_name: good\n  batch_size: big'), ['train_parameters.batch_size', 'expected integer', "'big'"]),
    (GOOD.replace('run_name: good', 'run_name: good\n  nesterov: 1'), ['train_parameters.nesterov', 'expected true/false']),
    (GOOD.replace('[0.1, 0.01]', '0.1'), ['train_parameters.lr_values', 'expected list of number']),
    (GOOD.replace('dataset: {image_folder: IMAGES}', 'dataset: cifar10'), ['dataset', 'expected a mapping']),
    # schedules
    (GOOD.replace('[10, 20]', '[10, 20, 30]'), ['lr_values', 'has 2 values but lr_boundaries has 3']),
    (GOOD.replace('[10, 20]', '[20, 10]'), ['lr_boundaries', 'strictly increasing']),
    (GOOD.replace('run_name: good', 'run_name: good\n  lr_schedule: piecewise_linear'),
     ['train_parameters.lr_boundaries', 'piecewise_linear', 'from 0 (the rate at the start)', '[10, 20]']),
    (GOOD.replace('run_name: good', 'run_name: good\n  lr_schedule: piecewise_liner').replace('[10, 20]', '[0, 20]'),
     ["train_parameters.lr_schedule", "did you mean 'piecewise_linear'"]),
    (GOOD.replace('run_name: good', 'run_name: good\n  batch_size: 0'), ['train_parameters.batch_size', 'at least 1']),
    (GOOD.replace('dataset: {image_folder: IMAGES}', 'dataset: {image_folder: IMAGES, validation_fraction: 1.5}'),
     ['dataset.validation_fraction', 'in [0, 1)']),
    # required key
    (GOOD.replace('model: tiny_cnn\n', ''), ['model', 'required']),
])
def test_schema_errors(capsys, tmp_path, image_folder, text, needles):
    assert_config_error(capsys, tmp_path, text, *needles, image_folder=image_folder)


def test_module_that_cannot_be_imported(capsys, tmp_path, image_folder):
    assert_config_error(capsys, tmp_path, GOOD.replace('tiny_models', 'no_such_module'),
                        'experiment 1 (good)', "module: cannot import 'no_such_module'",
                        image_folder=image_folder)


def test_function_not_in_module(capsys, tmp_path, image_folder):
    assert_config_error(capsys, tmp_path, GOOD.replace('model: tiny_cnn', 'model: tiny_cn'),
                        "model: 'tiny_cn' is not a function", "did you mean 'tiny_cnn'",
                        image_folder=image_folder)


def test_zoo_model_name_typo(capsys, tmp_path, image_folder):
    text = GOOD.replace('module: tiny_models\n', '').replace('model: tiny_cnn', 'model: cifar_resnt20')
    assert_config_error(capsys, tmp_path, text, "'cifar_resnt20' is not a model of this project",
                        "did you mean 'cifar_resnet20'", image_folder=image_folder)


def test_unknown_model_parameter(capsys, tmp_path, image_folder):
    text = GOOD.replace('dataset:', 'model_parameters: {widht: 4}\ndataset:')
    assert_config_error(capsys, tmp_path, text, 'model_parameters.widht', "did you mean 'width'",
                        image_folder=image_folder)


def test_model_that_cannot_be_built(capsys, tmp_path, image_folder):
    text = GOOD.replace('dataset:', 'model_parameters: {width: -3}\ndataset:')
    assert_config_error(capsys, tmp_path, text, 'model_parameters', "'tiny_cnn' cannot be built",
                        image_folder=image_folder)


def test_bug_in_a_model_function_is_one_line_with_its_place(capsys, tmp_path, image_folder):
    text = GOOD.replace('model: tiny_cnn', 'model: broken_cnn')
    assert_config_error(capsys, tmp_path, text, "building 'broken_cnn' raised ZeroDivisionError: a bug "
                        "in the model", 'tiny_models.py:', image_folder=image_folder)


def test_weight_decay_for_model_without_the_argument(capsys, tmp_path, image_folder):
    text = GOOD.replace('model: tiny_cnn', 'model: no_decay_cnn').replace(
        'run_name: good', 'run_name: good\n  weight_decay: 0.0005')
    assert_config_error(capsys, tmp_path, text, 'train_parameters.weight_decay', 'takes no weight_decay',
                        image_folder=image_folder)


def test_duplicate_run_names(capsys, tmp_path, image_folder):
    line = assert_config_error(capsys, tmp_path, GOOD + '---\n' + GOOD, 'experiment 2 (good)',
                               "run_name: 'good' is also the run name of", image_folder=image_folder)
    assert 'experiment 1' in line


def test_unknown_tfds_dataset(capsys, tmp_path):
    text = GOOD.replace('dataset: {image_folder: IMAGES}', 'dataset: {name: cifar1O}')
    assert_config_error(capsys, tmp_path, text, "dataset.name: 'cifar1O' is not a TensorFlow Datasets name")


def test_missing_image_folder(capsys, tmp_path):
    assert_config_error(capsys, tmp_path, GOOD, "dataset.image_folder: '/nonexistent' is not a directory")


def test_dataset_not_prepared_and_download_off(capsys, tmp_path):
    text = GOOD.replace('dataset: {image_folder: IMAGES}',
                        f'dataset: {{name: cifar10, data_dir: {tmp_path}/empty, download: false}}')
    line = assert_config_error(capsys, tmp_path, text, "'cifar10' is not prepared", 'dataset.data_dir',
                               'TFDS_DATA_DIR', 'image_folder')
    assert f'{tmp_path}/empty' in line


@pytest.mark.parametrize('download', [False, True])
def test_manual_download_dataset_without_its_archives(capsys, tmp_path, download):
    """imagenet2012 cannot be downloaded: with download on but an empty manual_dir it is not
    ready either, and the message says where the archives go (not to turn download on)."""
    manual = tmp_path / 'manual'
    manual.mkdir()
    text = GOOD.replace('dataset: {image_folder: IMAGES}',
                        f'dataset: {{name: imagenet2012, data_dir: {tmp_path}/empty, '
                        f'manual_dir: {manual}, download: {str(download).lower()}}}')
    line = assert_config_error(capsys, tmp_path, text, "'imagenet2012' is not prepared",
                               'ILSVRC2012_img_train.tar', str(manual))
    assert ('set dataset.download: true' in line) != download, line


def test_yaml_syntax_error_names_the_line(capsys, tmp_path):
    path, _ = write(tmp_path, 'model: tiny_cnn\ntrain_parameters:\n  batch_size: [1, 2\n  run_name: x\n')
    code, out, err = run_cli(capsys, path)
    assert code == 2 and 'Traceback' not in err
    assert err.startswith(f'error: {path}:4:') and 'YAML syntax error' in err, err


@pytest.mark.parametrize('text, key, first_line', [
    # a forgotten '---': the second experiment's keys would silently replace the first's
    (GOOD + 'model: tiny_cnn\ntrain_parameters: {run_name: other}\n', 'model', 3),
    ('model: tiny_cnn\ntrain_parameters:\n  batch_size: 8\n  batch_size: 16\n', 'batch_size', 3),
])
def test_a_key_given_twice_is_refused(capsys, tmp_path, text, key, first_line):
    path, logdir = write(tmp_path, text)
    code, out, err = run_cli(capsys, path)
    assert code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f'error: {path}:') and f"'{key}' is given twice" in err, err
    assert f'first at line {first_line}' in err and not logdir.exists()


def test_yaml_merge_keys_still_override(tmp_path, image_folder):
    # A mapping merged with `<<` and then overridden is not a key given twice.
    path, _ = write(tmp_path, GOOD.replace('  run_name: good\n', '  <<: {run_name: a, batch_size: 8}\n'
                                           '  run_name: b\n'), image_folder)
    exp, = load_experiments(path)
    assert (exp.run_name, exp.train_parameters.batch_size) == ('b', 8)


def test_set_applies_before_repeats_and_grid_expand(tmp_path, image_folder):
    path, _ = write(tmp_path, GOOD + 'repeats: 2\n', image_folder)
    exps = load_experiments(path, parse_overrides(['train_parameters.seed=10',
                                                   'train_parameters.run_name=other',
                                                   'train_parameters.weight_decay=0.001']))
    assert [e.run_name for e in exps] == ['other/seed0', 'other/seed1']
    assert [e.train_parameters.seed for e in exps] == [10, 11]
    assert [e.train_parameters.weight_decay for e in exps] == [0.001, 0.001]
    path, _ = write(tmp_path, GOOD + 'grid: {train_parameters.batch_size: [8, 16]}\n', image_folder)
    assert [e.train_parameters.batch_size for e in load_experiments(path)] == [8, 16]
    with pytest.raises(ConfigError, match=r'--set train_parameters.batch_size: the grid sweeps this key'):
        load_experiments(path, parse_overrides(['train_parameters.batch_size=32']))
    # ... and the grid itself may be overridden
    exps = load_experiments(path, parse_overrides(['grid={train_parameters.batch_size: [32]}']))
    assert [(e.run_name, e.train_parameters.batch_size) for e in exps] == [('good_batch_size-32', 32)]


@pytest.mark.parametrize('extra, needles', [
    ('  batch_size: 512\n', ['train_parameters.batch_size: 512 is larger than the 160 training images']),
    ('  batch_size: 128\ndataset: {image_folder: IMAGES, validation_fraction: 0.5}\n',
     ['train_parameters.batch_size: 128 is larger than the 80 training images left after the validation split']),
    ('dataset: {image_folder: IMAGES, validation_fraction: 0.001}\n',
     ['dataset.validation_fraction: 0.001 of 160 training images leaves an empty split']),
    ('dataset: {image_folder: IMAGES, crop_padding: 32, crop_padding_mode: reflect}\n',
     ['dataset.crop_padding: 32 pixels of reflect padding need images larger than that']),
])
def test_data_size_mistakes_are_caught_before_the_first_step(capsys, tmp_path, image_folder, extra, needles):
    # The smoke run, on at most 8-image batches of 32 images, would not see these.
    text = GOOD.replace('dataset: {image_folder: IMAGES}\n', '') + extra
    if 'dataset:' not in extra:
        text += 'dataset: {image_folder: IMAGES}\n'
    assert_config_error(capsys, tmp_path, text, *needles, image_folder=image_folder)


def test_error_in_a_later_experiment_stops_everything(capsys, tmp_path, image_folder):
    second = GOOD.replace('run_name: good', 'run_name: second\n  momentum: 2.0')
    line = assert_config_error(capsys, tmp_path, GOOD + '---\n' + second, 'experiment 2 (second)',
                               'train_parameters.momentum', image_folder=image_folder)
    assert 'in [0, 1)' in line


def test_set_override_is_validated_and_blamed_on_set(capsys, tmp_path, image_folder):
    """A mistake in --set is the command line's, not the file's: one line naming --set."""
    path, logdir = write(tmp_path, GOOD, image_folder)
    for arg, said in (('train_parameters.batch_sise=64', "unknown key; did you mean 'train_parameters.batch_size'?"),
                      ('train_parameter.steps=5', "unknown key; did you mean 'train_parameters'?"),
                      ('train_parameters.steps=1.5', 'expected integer, got float 1.5'),
                      ('train_parameters.optimizer=adam', "'adam' is not one of")):
        code, out, err = run_cli(capsys, path, '--no-smoke', '--set', arg)
        assert code == 2 and err.splitlines() == [f'error: --set {arg}: {said}'] or \
            err.startswith(f'error: --set {arg}: {said}') and len(err.splitlines()) == 1, err
    assert not logdir.exists()


def test_set_override_and_scientific_notation(tmp_path):
    path, _ = write(tmp_path, GOOD.replace('run_name: good', 'run_name: good\n  weight_decay: 5e-4'))
    (exp,) = load_experiments(path, parse_overrides(['train_parameters.batch_size=64',
                                                     'dataset.data_dir=/data', 'dataset.mean=[0.5, 0.5, 0.5]']))
    assert exp.train_parameters.weight_decay == pytest.approx(5e-4)
    assert exp.train_parameters.batch_size == 64
    assert exp.dataset.data_dir == '/data' and exp.dataset.mean == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match='expected KEY=VALUE'):
        parse_overrides(['train_parameters.batch_size'])


def test_only_with_unknown_name(capsys, tmp_path, image_folder):
    path, _ = write(tmp_path, GOOD, image_folder)
    code, out, err = run_cli(capsys, path, '--only', 'godo', '--list')
    assert code == 2 and "--only: no experiment is named 'godo'; did you mean 'good'?" in err


def test_defaults_reproduce_the_seed_schedule():
    exp = experiment_from_dict({'model': 'cifar_resnet20'})
    tp = exp.train_parameters
    assert (tp.lr_values, tp.lr_boundaries) == ([0.01, 0.1, 0.01, 0.001], [400, 32000, 48000, 64000])
    assert (tp.momentum, tp.nesterov, tp.batch_size) == (0.9, False, 128)
    assert exp.dataset.name == 'cifar10' and exp.total_steps == 64000
    assert exp.run_name == 'cifar_resnet20'
    assert experiment_from_dict({'model': 'm', 'train_parameters': {'steps': 5}}).total_steps == 5


def test_reference_covers_every_key():
    keys = {row[0] for row in reference()}
    assert {'model', 'module', 'dataset.validation_fraction', 'train_parameters.lr_boundaries',
            'paper.top1_error', 'skip_error_test'} <= keys
    for row in reference():
        assert row.doc, f'{row.key} has no documentation'


def test_list_prints_every_experiment(capsys, tmp_path, image_folder):
    second = GOOD.replace('run_name: good', 'run_name: wide').replace('dataset:', 'model_parameters: {width: 16}\ndataset:')
    path, logdir = write(tmp_path, GOOD + '---\n' + second, image_folder)
    code, out, err = run_cli(capsys, path, '--list')
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ['index', 'run', 'model', 'params', 'dataset', 'steps', 'status']
    good, wide = lines[1].split(), lines[2].split()
    assert good[:3] == ['0', 'good', 'tiny_cnn'] and good[-2:] == ['20', '-']
    assert wide[:2] == ['1', 'wide']
    assert '(32x32x3, 4 classes)' in lines[1]
    assert not logdir.exists()


def test_docs_reference_is_up_to_date():
    """docs/configuration.md's YAML reference is the output of `python -m runner keys --markdown`."""
    import io
    import contextlib
    import re
    from conftest import ROOT
    from runner.__main__ import keys_main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        keys_main(['--markdown'])
    readme = open(os.path.join(ROOT, 'docs', 'configuration.md')).read()
    table = re.search(r'<!-- reference:start -->\n(.*)<!-- reference:end -->', readme, re.S).group(1)
    assert table == buf.getvalue(), 'run `python -m runner keys --update-docs`'


def test_grid_expands_to_the_cross_product_with_readable_names(tmp_path, capsys, image_folder):
    text = GOOD.replace('dataset:', 'grid:\n  model_parameters.width: [4, 8]\n  train_parameters.lr_values: [[0.1, 0.01], [0.2, 0.02]]\ndataset:')
    path, logdir = write(tmp_path, text, image_folder)
    exps = load_experiments(path)
    names = [e.run_name for e in exps]
    assert names == ['good_width-4_lr_values-0.1x0.01', 'good_width-4_lr_values-0.2x0.02',
                     'good_width-8_lr_values-0.1x0.01', 'good_width-8_lr_values-0.2x0.02']
    assert [e.model_parameters['width'] for e in exps] == [4, 4, 8, 8]
    assert exps[3].train_parameters.lr_values == [0.2, 0.02]
    code, out, err = run_cli(capsys, path, '--list')
    assert code == 0 and all(n in out for n in names)


def test_grid_values_are_validated_like_any_experiment(capsys, tmp_path, image_folder):
    text = GOOD.replace('dataset:', 'grid:\n  train_parameters.batch_size: [64, big]\ndataset:')
    assert_config_error(capsys, tmp_path, text, 'train_parameters.batch_size', 'expected integer',
                        image_folder=image_folder)
    text = GOOD.replace('dataset:', 'grid:\n  train_parameters.batch_size: 64\ndataset:')
    assert_config_error(capsys, tmp_path, text, 'grid: expected a mapping of dotted keys to non-empty lists',
                        image_folder=image_folder)


def test_repeats_give_seeded_runs(tmp_path, capsys, image_folder):
    path, _ = write(tmp_path, GOOD + 'repeats: 3\n', image_folder)
    exps = load_experiments(path)
    assert [e.run_name for e in exps] == ['good/seed0', 'good/seed1', 'good/seed2']
    assert [e.train_parameters.seed for e in exps] == [0, 1, 2]
    code, out, err = run_cli(capsys, path, '--list', '--only', 'good')
    assert code == 0 and out.count('good/seed') == 3


# --- the schema's metadata: choices, ranges, what may change on a resume -------------------

def _outside(interval, integer):
    """A number just outside `interval` (below it if it has a finite lower end)."""
    if interval.low != float('-inf'):
        value = interval.low if interval.low_open else interval.low - 1
    else:
        value = interval.high if interval.high_open else interval.high + 1
    return int(value) if integer else float(value)


def _schema_rows(predicate):
    return [r for r in reference() if r.type != 'section' and predicate(r)]


def test_every_range_and_choice_of_the_schema_is_enforced_naming_its_key():
    """Each key's range and choices come from its field's metadata: a value outside them is
    refused in one line naming the key, the value and what is allowed."""
    from runner.config.reference import schema_field
    ranged = _schema_rows(lambda r: schema_field(r.key).metadata.get('within'))
    chosen = _schema_rows(lambda r: schema_field(r.key).metadata.get('choices'))
    assert {'train_parameters.momentum', 'dataset.validation_fraction', 'train_parameters.lr_values',
            'train_parameters.ema_decay'} <= {r.key for r in ranged}
    assert {'train_parameters.optimizer', 'dataset.preprocessing', 'train_parameters.precision'} <= \
        {r.key for r in chosen}
    for row in ranged:
        within = schema_field(row.key).metadata['within']
        value = _outside(within, 'integer' in row.type)
        as_list = row.type.startswith('list')
        section, name = row.key.split('.')
        with pytest.raises(ConfigError) as info:
            experiment_from_dict({'model': 'm', section: {name: [value] if as_list else value}})
        where = f'{row.key}[0]' if as_list else row.key
        or_null = ' or null' if 'null' in row.type and not as_list else ''
        assert str(info.value) == (f'<string>: experiment 1 (m): {where}: must {within.rule()}'
                                   f'{or_null}, got {value}'), row.key
    for row in chosen:
        choices = schema_field(row.key).metadata['choices']
        section, name = row.key.split('.')
        typo = choices[-1][:-1] + choices[-1][-1].upper() + 'x'
        with pytest.raises(ConfigError) as info:
            experiment_from_dict({'model': 'm', section: {name: typo}})
        assert str(info.value).startswith(f"<string>: experiment 1 (m): {row.key}: '{typo}' is not one "
                                          f"of {', '.join(choices)}"), str(info.value)
        assert '\n' not in str(info.value)


def test_a_range_and_a_choice_say_how_far_off_the_value_is():
    with pytest.raises(ConfigError, match=r"train_parameters.momentum: must be in \[0, 1\), got 1.0$"):
        experiment_from_dict({'model': 'm', 'train_parameters': {'momentum': 1}})
    with pytest.raises(ConfigError, match=r"train_parameters.lr_values\[1\]: must not be negative, got -0.1$"):
        experiment_from_dict({'model': 'm', 'train_parameters': {'lr_values': [0.1, -0.1, 0.1, 0.1]}})
    with pytest.raises(ConfigError, match=r"dataset.preprocessing: 'imagenett' is not one of auto, "
                                          r"cifar, imagenet; did you mean 'imagenet'\?$"):
        experiment_from_dict({'model': 'm', 'dataset': {'preprocessing': 'imagenett'}})


def test_the_reference_shows_choices_ranges_and_what_may_change_on_resume(capsys):
    from runner.__main__ import keys_main
    keys_main(['--markdown'])
    cells = [[c.strip() for c in line.split('|')[1:6]] for line in capsys.readouterr().out.splitlines()]
    rows = {c[0].strip('`'): c for c in cells}
    assert rows['key'][3:5] == ['allowed', 'on resume']
    assert rows['train_parameters.momentum'][3:5] == ['[0, 1)', '']
    assert rows['train_parameters.batch_size'][3:5] == ['>= 1', '']
    assert rows['train_parameters.steps'][3:5] == ['>= 1', 'may change']
    assert rows['train_parameters.optimizer'][3] == 'sgd, adamw, lion, lamb, muon'
    assert rows['dataset.std'][3] == 'each > 0'
    assert rows['dataset.cache_budget_mb'][1:3] == ['integer', '`2048`']


# What a resume has always accepted changed (cli.RESUMABLE_CHANGES before issue 20 moved it
# into the schema): logging, evaluation, how long to train, where the data is, init weights.
RESUMABLE = {'train_parameters.steps', 'train_parameters.log_interval', 'train_parameters.val_interval',
             'train_parameters.checkpoint_interval', 'train_parameters.keep_checkpoints',
             'train_parameters.eval_batch_size', 'train_parameters.logdir', 'skip_error_test',
             'paper.top1_error', 'paper.top5_error', 'paper.source', 'dataset.data_dir',
             'dataset.download', 'dataset.image_folder', 'dataset.manual_dir', 'dataset.list_root',
             'dataset.train_list', 'dataset.test_list', 'dataset.tfrecord_train', 'dataset.tfrecord_test',
             'train_parameters.init_weights', 'train_parameters.init_skip_mismatch'}


def _other(value):
    """A value of the same kind as `value`, but different."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return value + value[-1:]
    if isinstance(value, dict):
        return {**value, 'other': 1}
    return f'{value}x' if value is not None else 'other'


def test_a_resume_accepts_a_change_of_exactly_the_keys_the_schema_marks(tmp_path, image_folder):
    """The schema says which keys may change on a resume; every other changed key refuses it.
    A config.yaml of an older run, with null for the defaults the schema now spells out,
    loads as the same experiment and resumes."""
    import yaml
    from runner.commands import inference
    from runner.config.reference import resumable
    assert {r.key for r in reference() if r.resumable and r.type != 'section'} == RESUMABLE
    path, logdir = write(tmp_path, GOOD, image_folder)
    assert cli.main([path, '--no-smoke', '--set', 'train_parameters.steps=1']) == 0
    saved = logdir / 'good' / 'config.yaml'
    recorded = yaml.safe_load(saved.read_text())
    exp, = cli.load_all([path], [])
    assert resume.check_resumable(exp) is False
    # mean and std are filled in from the data; model and module name the function
    # model_parameters: test_cli's test_config_records_the_model_defaults_...
    skip = {'dataset.mean', 'dataset.std', 'model', 'module', 'model_parameters'}
    for row in reference():
        # Keys a run does not record (repeats, grid, the search section: they say what runs,
        # not how one trains) have nothing to change.
        if row.type == 'section' or row.key in skip or row.key.split('.')[0] not in recorded:
            continue
        cfg = copy.deepcopy(recorded)
        node = cfg
        *sections, name = row.key.split('.')
        for s in sections:
            node = node[s]
        node[name] = _other(node[name])
        saved.write_text(yaml.safe_dump(cfg))
        if resumable(row.key):
            assert resume.check_resumable(exp) is False, row.key
        else:
            with pytest.raises(ConfigError, match=rf"^{re.escape(row.key)}(\.other)?: changed since run 'good'"):
                resume.check_resumable(exp)
    # an older run's record: null where the schema now has the value
    cfg = dict(recorded, dataset=dict(recorded['dataset'], preprocessing=None, cache_budget_mb=None,
                                      stats_sample=None, label_offset=None, tfrecord_image_key=None,
                                      tfrecord_label_key=None))
    saved.write_text(yaml.safe_dump(cfg))
    assert resume.check_resumable(exp) is False
    _, old = inference.load_experiment(str(logdir / 'good'))
    assert old.dataset == DatasetConfig(**recorded['dataset'])
    assert cli.main([path, '--no-smoke', '--set', 'train_parameters.steps=2']) == 0


def test_image_keys_are_keys_of_the_dataset_section():
    """IMAGE_KEYS (which images a split read has; evaluate and stats share data by them)
    names real dataset keys, and the ones that say which labels and files are read."""
    import dataclasses
    from runner.config.schema import IMAGE_KEYS
    fields = {f.name for f in dataclasses.fields(DatasetConfig)}
    assert set(IMAGE_KEYS) <= fields
    assert {'tfrecord_label_key', 'label_offset', 'test_list', 'image_size'} <= set(IMAGE_KEYS)
