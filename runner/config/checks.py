"""The rules of an experiment that a type alone cannot express: each key's choices and
range (from the schema), the keys that go together, run names."""
import dataclasses
import math
import os
import re


from runner.common import did_you_mean
from runner.config.errors import ConfigError
from runner.config.convert import SECTIONS, unknown_key
from runner.config.schema import (OPTIMIZER_DEFAULTS, Experiment, TrainConfig, default_of, nullable,
                                  schema_fields, uses_sgd)
from runner.rundir import RunDir


def check_values(exp):
    """Checks of values that a type alone cannot express: each key against its schema
    metadata (choices, range), then the rules that span several keys."""
    _check_fields(exp)
    tp, ds = exp.train_parameters, exp.dataset
    _check_schedule(tp)
    for name, step in tp.freeze_after.items():
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ConfigError(f'train_parameters.freeze_after.{name}: expected a step (an integer '
                              f'from 0), got {step!r}')
    _check_optimizer(tp)
    _check_dataset(ds)
    problem = run_name_problem(exp.run_name)
    if problem:
        raise ConfigError(f"train_parameters.run_name: '{exp.run_name}' {problem}")
    bad = _non_finite(exp.model_parameters)
    if bad is not None:
        raise ConfigError(f'model_parameters.{bad[0]}: must be a finite number, got {bad[1]}')


def _check_fields(obj, prefix=''):
    """Every value of a schema object (sections too) against its field's choices and range
    (of each item, for a list); null, where the type allows it, passes."""
    for name, f in schema_fields(type(obj)).items():
        value, key = getattr(obj, name), prefix + name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + '.')
            continue
        if value is None:
            continue
        choices, within = f.metadata.get('choices'), f.metadata.get('within')
        if choices and value not in choices:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}"
                              f"{did_you_mean(value, choices)}")
        if within and isinstance(value, list):  # each item
            bad = next((i for i, v in enumerate(value) if v not in within), None)
            if bad is not None:
                raise ConfigError(f'{key}[{bad}]: must {within.rule()}, got {value[bad]}')
        elif within and value not in within:
            raise ConfigError(f"{key}: must {within.rule()}{' or null' if nullable(f.type) else ''}, "
                              f"got {value}")


def _check_schedule(tp):
    """lr_values and lr_boundaries against each other and the lr_schedule named."""
    values, bounds = tp.lr_values, tp.lr_boundaries
    if len(values) != len(bounds):
        raise ConfigError(f'train_parameters.lr_values: has {len(values)} values but lr_boundaries '
                          f'has {len(bounds)}; give one end step per learning rate')
    if not bounds:
        raise ConfigError('train_parameters.lr_boundaries: needs at least one step')
    if tp.lr_schedule == 'piecewise_linear':
        # Knots: the rate at step 0 is one of them.
        if len(bounds) < 2 or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ConfigError(f'train_parameters.lr_boundaries: lr_schedule piecewise_linear needs the '
                              f'steps of two or more knots, strictly increasing from 0 (the rate at '
                              f'the start) to the last step, got {bounds}')
    elif any(b <= a for a, b in zip([0] + bounds, bounds)):
        raise ConfigError(f'train_parameters.lr_boundaries: must be positive and strictly '
                          f'increasing, got {bounds}')
    if tp.lr_schedule in ('linear', 'cosine') and len(values) != 1:
        raise ConfigError(f'train_parameters.lr_values: lr_schedule {tp.lr_schedule} decays from one '
                          f'peak rate; give one value and one boundary (the last step), got {values}')


def _check_dataset(ds):
    """The dataset keys that go together: one source of images and what it needs, the
    shapes of image_size, mean and std, and flips."""
    if ds.alternate_flips and not ds.flip:
        raise ConfigError('dataset.alternate_flips: needs dataset.flip: true (it says how images are '
                          'flipped, not whether)')
    area = ds.random_erasing_area
    if len(area) != 2 or area[0] > area[1]:
        raise ConfigError(f'dataset.random_erasing_area: expected [smallest, largest] area fraction, '
                          f'got {area}')
    if ds.image_size is not None and (len(ds.image_size) != 2 or min(ds.image_size) < 1):
        raise ConfigError(f'dataset.image_size: expected [height, width], got {ds.image_size}')
    for key in ('mean', 'std'):
        v = getattr(ds, key)
        if v is not None and len(v) not in (1, 3):
            raise ConfigError(f'dataset.{key}: expected 1 or 3 values (one per channel), got {v}')
    given = [k for k, on in (('image_folder', ds.image_folder),
                             ('train_list', ds.train_list or ds.test_list or ds.list_root),
                             ('tfrecord_train', ds.tfrecord_train or ds.tfrecord_test)) if on]
    if len(given) > 1:
        raise ConfigError(f'dataset.{given[1]}: give one source of images; dataset.{given[0]} '
                          f'is set too')
    if not given and not ds.name:
        raise ConfigError('dataset.name: give a TensorFlow Datasets name, dataset.image_folder, list '
                          'files (train_list, test_list) or TFRecords (tfrecord_train, tfrecord_test)')
    for a, b in (('train_list', 'test_list'), ('tfrecord_train', 'tfrecord_test')):
        if bool(getattr(ds, a)) != bool(getattr(ds, b)):
            missing = b if getattr(ds, a) else a
            raise ConfigError(f'dataset.{missing}: needed with dataset.{a if missing == b else b}')
    if ds.list_root and not ds.train_list:
        raise ConfigError('dataset.train_list: list_root needs the list files train_list and test_list')
    if ds.tfrecord_train and not ds.num_classes and not ds.class_names_file:
        raise ConfigError('dataset.num_classes: TFRecords need the number of classes (or '
                          'dataset.class_names_file)')


def run_name_problem(name):
    """Why `name` cannot name a run directory under logdir, or None. A run name is a name,
    not a path: plain parts joined by '/', none empty, '.', '..' or hidden (a leading '.'
    is the runner's own: .lock, .workers), so every run directory is inside logdir."""
    if not re.fullmatch(r'[\w.+=-]+(/[\w.+=-]+)*', name):
        return ("is not a usable directory name (letters, digits, . _ - + = and / only, no "
                "empty part, not absolute)")
    if any(part.startswith('.') for part in name.split('/')):
        return "has a part that is '.', '..' or starts with '.'; a run name is a name, not a path"
    return None


def _non_finite(value, key=''):
    """(dotted key, value) of the first NaN or infinity in a nested mapping or list, or None."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        sub = f'{key}.{k}' if isinstance(k, str) else f'{key}[{k}]'
        if isinstance(v, float) and not math.isfinite(v):
            return sub.lstrip('.'), v
        found = _non_finite(v, sub)
        if found:
            return found
    return None


def _check_optimizer(tp):
    """No key the optimizer does not read (its name and its own keys' ranges are the
    schema's: _check_fields)."""
    for key, readers in OPTIMIZER_DEFAULTS.items():
        if getattr(tp, key) is not None and tp.optimizer not in readers:
            raise ConfigError(f'train_parameters.{key}: optimizer {tp.optimizer} does not read it '
                              f'(only {", ".join(readers)})')
    if tp.optimizer == 'muon' and uses_sgd(tp):
        for key in ('beta_1', 'beta_2', 'epsilon'):
            if getattr(tp, key) is not None:
                raise ConfigError(f'train_parameters.{key}: muon with muon_other: sgd does not read '
                                  f'it (its non-Muon part is SGD)')
    if not uses_sgd(tp):
        # momentum and nesterov have SGD's defaults; another value is a mistake.
        for key in ('momentum', 'nesterov', 'bn_bias_lr_multiplier'):
            if getattr(tp, key) != default_of(schema_fields(TrainConfig)[key]):
                why = ('a larger gradient is not a larger step for an Adam-type update'
                       if key == 'bn_bias_lr_multiplier' else 'SGD\'s')
                raise ConfigError(f'train_parameters.{key}: optimizer {tp.optimizer}'
                                  f"{' (muon_other: adamw)' if tp.optimizer == 'muon' else ''} does "
                                  f'not read it ({why}); remove it')


def check_keys(data):
    """Unknown keys of a raw experiment, at the top and in each section, refused by their names
    alone: before expand copies the document or any value is walked."""
    if not isinstance(data, dict):
        return
    known = list(schema_fields(Experiment)) + ['grid', 'repeats']
    for key, value in data.items():
        if not isinstance(key, str) or key not in known:
            raise unknown_key(str(key), '', list(schema_fields(Experiment)))
        if key in SECTIONS and isinstance(value, dict):
            fields = list(schema_fields(SECTIONS[key]))
            for sub in value:
                if not isinstance(sub, str) or sub not in fields:
                    raise unknown_key(str(sub), key + '.', fields)


def check_unique_run_names(experiments):
    """Two experiments may not share a run directory, by whatever spelling of logdir or
    symbolic link they reach it, nor may one run's directory hold another's (a --restart
    of the outer one would carry the inner one away)."""
    seen = {}
    for exp in experiments:
        key = os.path.realpath(RunDir.of(exp))
        if key in seen:
            same = '' if seen[key].run_name == exp.run_name else f' (both are {key})'
            raise ConfigError(f"{exp.label}: train_parameters.run_name: '{exp.run_name}' is also "
                              f"the run name of {seen[key].label}{same}; run names must be unique")
        for other, first in seen.items():
            outer, inner = (other, key) if len(other) < len(key) else (key, other)
            if inner.startswith(outer + os.sep):
                raise ConfigError(f"{exp.label}: train_parameters.run_name: '{exp.run_name}' and "
                                  f"'{first.run_name}' of {first.label}: one run directory would "
                                  f"hold the other ({inner})")
        seen[key] = exp
