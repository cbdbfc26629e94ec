"""Finding and building the model an experiment names.

`module` is optional for this project's own models: the function is found by name in the
zoo's registry (models.zoo). Any importable module works too (a file of the user's own on
the Python path, e.g. `module: my_models`), its function found by name as always.
"""
import importlib
import importlib.util
import inspect
import math
import os
import traceback
import warnings

from models import zoo
from runner import compat
from runner.common import did_you_mean, first_line
from runner.config.errors import ConfigError
from runner.rundir import FINAL_WEIGHTS, RunDir

ZOO_PACKAGE = 'models'

# The seed runner's `module: 'Models.Resnets'` (its model and parameter names are aliases in
# models.zoo, so its experiment files run as written).
SEED_PACKAGE = 'Models'


def seed_module(module):
    """True for a module of the seed runner's `Models` package (`Models.Resnets`, ...) where
    no such package is importable: its models are this project's, found by name in the zoo,
    so the seed's experiment files run as written. A `Models` package of the user's wins."""
    if module.split('.')[0] != SEED_PACKAGE:
        return False
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def resolve_model_fn(exp):
    """The model function of an experiment; ConfigError naming module/model if it cannot be found."""
    if exp.module and exp.module != ZOO_PACKAGE and not seed_module(exp.module):
        try:
            mod = importlib.import_module(exp.module)
        except ModuleNotFoundError as e:
            raise ConfigError(f"module: cannot import '{exp.module}' ({e})") from None
        except SystemExit as e:  # sys.exit() at import: the command would end saying nothing
            raise ConfigError(f"module: importing '{exp.module}' called sys.exit({e.code!r}); a "
                              f"model module must not exit") from None
        except Exception as e:  # an error inside the user's module
            raise ConfigError(f"module: importing '{exp.module}' failed: {type(e).__name__}: "
                              f"{first_line(e)}") from None
        fn = getattr(mod, exp.model, None)
        if fn is None and exp.module.split('.')[0] == ZOO_PACKAGE:
            fn = getattr(mod, zoo.canonical_name(exp.model), None)
        if not callable(fn):
            names = [n for n, v in vars(mod).items() if callable(v) and not n.startswith('_')]
            hint = did_you_mean(exp.model, names)
            raise ConfigError(f"model: '{exp.model}' is not a function of module '{exp.module}'{hint}")
        return fn
    fn = zoo.model_function(exp.model)
    if fn is None:
        raise ConfigError(f"model: '{exp.model}' is not a model of this project"
                          f"{did_you_mean(exp.model, zoo.default_cfgs)}; set 'module' to use a model of your own")
    return fn


def canonical_model_name(exp):
    """The name of an experiment's model in this project's spelling (the seed runner's
    `WRN_40_4` is `cifar_WRN_40_4`), so that --list and TensorBoard's HParams put a seed
    file's runs beside this project's; a model of the user's keeps its name. No import."""
    own = exp.module and exp.module.split('.')[0] != ZOO_PACKAGE and not seed_module(exp.module)
    return exp.model if own else zoo.canonical_name(exp.model)


def canonical_parameters(exp):
    """An experiment's model_parameters in this project's spellings (the seed runner's
    `shortcut_mode` is `shortcut_type` where the model function takes that)."""
    return _renamed(inspect.signature(resolve_model_fn(exp)), exp.model_parameters)


def _renamed(sig, model_parameters):
    """model_parameters with the seed runner's spellings (shortcut_mode) under this
    project's names where the function takes those."""
    out = {}
    for key, value in model_parameters.items():
        new = zoo.SEED_OPTION_NAMES.get(key)
        out[new if new and key not in sig.parameters and new in sig.parameters else key] = value
    return out


def _plain(value):
    """A default that YAML writes and reads back as itself (lists for tuples)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def resolved_model_parameters(fn, model_parameters, decay_given=False):
    """The model function's arguments as a run gets them: model_parameters with every other
    default of the function filled in (the runner supplies input_shape and num_classes, so
    those are left to it, and weight_decay when `decay_given`, i.e. set in train_parameters).
    config.yaml records these, so a run's file says which network it trained, with which
    weight decay, even after a default changes, and a resume notices the change."""
    sig = inspect.signature(fn)
    given = _renamed(sig, model_parameters)
    supplied = ('input_shape', 'num_classes') + (('weight_decay',) if decay_given else ())
    out = {}
    for name, p in sig.parameters.items():
        if name in given:
            out[name] = given.pop(name)
        elif (name not in supplied and p.default is not p.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and _plain(p.default)):
            out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    out.update(given)  # a function that takes **kwargs
    return out


def model_kwargs(exp, fn, input_shape, num_classes):
    """Keyword arguments for the model function: model_parameters plus what the runner supplies.

    The runner passes the dataset's `input_shape` and `num_classes`, and the experiment's
    `weight_decay`, to every function that accepts them, so one model serves any dataset.
    """
    sig = inspect.signature(fn)
    params = _renamed(sig, exp.model_parameters)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    supplied = {'input_shape': tuple(input_shape), 'num_classes': num_classes}
    wd = exp.train_parameters.weight_decay
    if wd is not None:
        if 'weight_decay' in params:
            raise ConfigError('model_parameters.weight_decay: also set as train_parameters.weight_decay; '
                              'set it in one place')
        if 'weight_decay' not in sig.parameters and not accepts_any:
            raise ConfigError(f"train_parameters.weight_decay: model '{exp.model}' takes no "
                              f"weight_decay argument; remove the key or add the argument")
        supplied['weight_decay'] = wd
    for key, value in supplied.items():
        if key in params:
            if key == 'weight_decay':
                continue
            raise ConfigError(f"model_parameters.{key}: set by the runner from the dataset; "
                              f"use dataset.image_size or the dataset itself to change it")
        if key in sig.parameters or accepts_any:
            params[key] = value
    try:
        sig.bind(**params)
    except TypeError as e:
        valid = [n for n in sig.parameters if n not in supplied]
        bad = next((k for k in params if k not in sig.parameters), None)
        if bad is not None and not accepts_any:
            raise ConfigError(f"model_parameters.{bad}: '{exp.model}' has no such argument"
                              f"{did_you_mean(bad, valid) or '; it takes: ' + ', '.join(valid)}") from None
        raise ConfigError(f'model_parameters: {e}') from None
    return params


def build_model(exp, input_shape, num_classes):
    """Build the experiment's Keras model; a model that cannot be built is a ConfigError."""
    fn = resolve_model_fn(exp)
    kwargs = model_kwargs(exp, fn, input_shape, num_classes)
    try:
        model = fn(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model_parameters: '{exp.model}' cannot be built with these "
                          f"parameters: {first_line(e)}") from None
    except (Exception, SystemExit) as e:  # a bug in a model function: say where, in one line
        tb = traceback.extract_tb(e.__traceback__)[-1]
        raise ConfigError(f"model: building '{exp.model}' raised {type(e).__name__}: {first_line(e)} "
                          f"({tb.filename}:{tb.lineno})") from None
    if not hasattr(model, 'trainable_weights') or not callable(model):
        raise ConfigError(f"model: '{exp.model}' returned {type(model).__name__}, not a Keras model")
    return model


def count_from_registry(exp):
    """(trainable parameters, dataset description) of an experiment from the zoo's registry and
    TFDS's metadata, without building the model or importing TensorFlow (--list); None where
    only building it can tell (a model of the user's, an option that changes the weights, a
    model sized by its arguments) or the data must be looked at (files, see input_from_metadata)."""
    cfg = zoo.default_cfgs.get(zoo.canonical_name(exp.model))
    if cfg is None or exp.module not in (None, ZOO_PACKAGE, f'{ZOO_PACKAGE}.{cfg.family}') \
            and not seed_module(exp.module):
        return None  # a model of the user's, or not a model at all: validation says which
    from runner.data.source import input_from_metadata
    found = input_from_metadata(exp.dataset)
    if found is None:
        return None
    shape, classes, description = found
    params = zoo.trainable_params(exp.model, classes, shape, exp.model_parameters)
    if params is None:
        return None
    return params, f"{description} ({'x'.join(map(str, shape))}, {classes} classes)"


def count_trainable(model):
    """Trainable parameters (batch-norm moving statistics excluded, unlike count_params())."""
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))


def weight_mismatches(model, path):
    """(layer, variable index, expected shape, found shape or None) for every weight of
    `model` that the Keras weights file at `path` does not fit, in layer order."""
    saved = compat.saved_weight_shapes(path)
    out = []
    if not saved:
        return out
    for layer, key in zip(model.layers, compat.saving_names(model)):
        stored = saved.get(key, [])
        for i, v in enumerate(layer.weights):
            have = stored[i] if i < len(stored) else None
            if have != tuple(v.shape):
                out.append((layer.name, i, tuple(v.shape), have))
                break
    return out


def load_initial_weights(model, source, skip_mismatch=False):
    """Warm start: weights from a run directory or a .weights.h5 file into `model`.

    A weight that does not fit fails with the first layer that does not fit named, unless
    `skip_mismatch`, which leaves such layers as initialised (a new head for fine-tuning)."""
    import tensorflow as tf
    source = os.path.expanduser(source)
    path = source
    if os.path.isdir(source):
        path = RunDir(source).final_weights
        if not os.path.exists(path):
            latest = tf.train.latest_checkpoint(RunDir(source).checkpoints)
            if not latest:
                raise ConfigError(f"train_parameters.init_weights: '{source}' holds neither "
                                  f"{FINAL_WEIGHTS} nor a checkpoint")
            try:
                tf.train.Checkpoint(model=model).restore(latest).expect_partial()
            except (ValueError, tf.errors.InvalidArgumentError) as e:
                raise ConfigError(f'train_parameters.init_weights: {latest} does not fit '
                                  f"'{model.name}': {first_line(e)}") from None
            return latest
    if not os.path.exists(path):
        raise ConfigError(f"train_parameters.init_weights: '{source}' does not exist")
    mismatches = weight_mismatches(model, path)
    if mismatches and not skip_mismatch:
        layer, i, want, got = mismatches[0]
        found = 'nothing' if got is None else f'shape {got}'
        raise ConfigError(f"train_parameters.init_weights: layer '{layer}' (weight {i}) of "
                          f"'{model.name}' has shape {want} but {path} holds {found}; set "
                          f"init_skip_mismatch: true to leave such layers freshly initialised")
    try:
        with warnings.catch_warnings():  # Keras lists every skipped array; we name the layers
            warnings.simplefilter('ignore')
            model.load_weights(path, skip_mismatch=skip_mismatch)
        if mismatches:
            print(f"init_weights: left freshly initialised (shapes differ): "
                  f"{', '.join(m[0] for m in mismatches)}", flush=True)
    except ValueError as e:
        raise ConfigError(f'train_parameters.init_weights: {path} does not fit '
                          f"'{model.name}': {first_line(e)}") from None
    return path


def freeze_schedule(model, freeze_after):
    """train_parameters.freeze_after ({layer name: step}) as [(step, paths of the layer's
    trainable weights)]; ConfigError for a layer the model does not have."""
    layers = {layer.name: layer for layer in compat.all_layers(model)}
    out = []
    for name, step in freeze_after.items():
        if name not in layers:
            raise ConfigError(f"train_parameters.freeze_after: the model has no layer '{name}'"
                              f"{did_you_mean(name, layers)}")
        paths = tuple(v.path for v in layers[name].trainable_weights)
        if not paths:
            raise ConfigError(f"train_parameters.freeze_after: layer '{name}' has no trainable weights")
        out.append((step, paths))
    return out
