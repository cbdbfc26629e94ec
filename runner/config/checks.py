"""The rules of an experiment that a type alone cannot express: each key's choices and
range (from the schema), the keys that go together, run names."""
import dataclasses
import math
import os
import re


from runner.common import did_you_mean
from runner.config.errors import ConfigError, join_errors, problems_of
from runner.config.convert import SECTIONS, unknown_key
from runner.config.schema import (OPTIMIZER_DEFAULTS, Experiment, SearchConfig, TrainConfig, default_of, nullable,
                                  schema_fields, uses_sgd)
from runner.rundir import RunDir


def check_values(exp, across=True):
    """Checks of values that a type alone cannot express: every key against its schema
    metadata (choices, range), then, once each key is right on its own, the rules that span
    several keys (unless not `across`: an experiment whose unknown keys were left out would
    break them for want of those keys)."""
    tp = exp.train_parameters
    problems = problems_of([_check_fields, _check_run_name, _check_model_parameters], lambda c: c(exp))
    if across and not problems:
        problems += problems_of([_check_schedule, _check_freeze, _check_optimizer], lambda c: c(tp))
        problems += problems_of([exp.dataset], _check_dataset)
        problems += problems_of([exp], _check_search)
    if problems:
        raise join_errors(*problems)  # every problem of the experiment, not the first


def _check_freeze(tp):
    for name, step in tp.freeze_after.items():
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ConfigError(f'train_parameters.freeze_after.{name}: expected a step (an integer '
                              f'from 0), got {step!r}')


def _check_run_name(exp):
    problem = run_name_problem(exp.run_name)
    if problem:
        raise ConfigError(f"train_parameters.run_name: '{exp.run_name}' {problem}")


def _check_model_parameters(exp):
    bad = _non_finite(exp.model_parameters)
    if bad is not None:
        raise ConfigError(f'model_parameters.{bad[0]}: must be a finite number, got {bad[1]}')


def _check_fields(obj, prefix=''):
    """Every value of a schema object (sections too) against its field's choices and range
    (of each item, for a list); null, where the type allows it, passes. Every field's problem."""
    def one(item):
        name, f = item
        value, key = getattr(obj, name), prefix + name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + '.')
        elif value is not None:
            check_value(f, key, value)
    problems = problems_of(schema_fields(type(obj)).items(), one)
    if problems:
        raise join_errors(*problems)


def check_value(f, key, value):
    """One value against its schema field's choices and range (of each item, for a list)."""
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


def _check_search(exp):
    """The search section as a whole (its space is runner.search's to check): a space to
    search, held-out data to tune on."""
    search = exp.search
    if not search.space:
        if search != SearchConfig():
            raise ConfigError('search.space: a search needs at least one key to search, e.g. '
                              '{train_parameters.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}}')
        return
    if not exp.dataset.validation_fraction:
        raise ConfigError('search: needs held-out data to tune on; set dataset.validation_fraction '
                          '(e.g. 0.1): a search never reads the test split to choose')


def check_search_sweep(search, grid, repeats):
    """A search with grid is a search per point of the grid; with repeats it means nothing
    a search can keep (a trial is one run), and a key both swept and searched neither."""
    space = search.get('space') if isinstance(search, dict) else None
    if not isinstance(space, dict) or not space:
        return
    if repeats != 1:
        raise ConfigError('repeats: not with search (a trial is one run, its seed '
                          "train_parameters.seed); repeat the best trial's values afterwards instead")
    both = next((k for k in grid if k in space), None)
    if both is not None:
        raise ConfigError(f'search.space.{both}: the grid sweeps this key too; search it or sweep it')


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


def known_keys(data):
    """(the problems of a raw experiment's unknown keys, at the top and in each section, the
    document without them): found by their names alone, before expand copies the document or
    any value is walked, and left out of it so that its other keys are checked too."""
    if not isinstance(data, dict):
        return [], data
    top = list(schema_fields(Experiment))
    problems, kept = [], {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in top:
            problems.append(str(unknown_key(str(key), '', top)))
            continue
        if key in SECTIONS and isinstance(value, dict):
            fields = list(schema_fields(SECTIONS[key]))
            unknown = [sub for sub in value if not isinstance(sub, str) or sub not in fields]
            problems += [str(unknown_key(str(sub), key + '.', fields)) for sub in unknown]
            value = {sub: v for sub, v in value.items() if sub not in unknown}
        kept[key] = value
    return problems, kept


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
