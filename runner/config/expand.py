"""From a file to its experiments: `--set` overrides, `grid` and `repeats` expanded,
every document validated, every problem reported at once."""
import copy
import itertools
import re


from runner.config.checks import check_keys, check_search_sweep, check_values
from runner.config.convert import build, describe_value
from runner.config.errors import ConfigError, collect_errors
from runner.config.schema import Experiment
from runner.config.yaml_io import parse_yaml, read_text, yaml_value


def set_dotted(data, dotted, value):
    """Apply `--set a.b.c=value` to a raw experiment mapping."""
    keys = dotted.split('.')
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:i + 1])}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(items):
    """['a.b=1', ...] -> [('a.b', 1), ...]."""
    out = []
    for item in items or []:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train_parameters.batch_size=64")
        out.append((key.strip(), yaml_value(text)))
    return out


def experiment_from_dict(data, source='<string>', index=0):
    """Validate one raw document into an Experiment; errors name source, position and key."""
    name = None
    if isinstance(data, dict):
        tp = data.get('train_parameters')
        name = (tp or {}).get('run_name') if isinstance(tp, dict) else None
        name = name or data.get('model')
    label = f'{source}: experiment {index + 1}' + (f' ({name})' if name else '')
    if not isinstance(data, dict):
        raise ConfigError(f'{label}: expected a mapping of keys, got {describe_value(data)}')
    data = copy.deepcopy(data)
    try:
        exp = build(Experiment, data)
        exp.source, exp.index = source, index
        check_values(exp)
    except ConfigError as e:
        raise ConfigError(f'{label}: {e}') from None
    return exp


def _format_value(value):
    if isinstance(value, list):
        return 'x'.join(_format_value(v) for v in value)
    if isinstance(value, float):
        return f'{value:g}'
    return re.sub(r'[^\w.+=-]', '', str(value))


def expand(data, overrides=()):
    """A document with `grid` and/or `repeats` -> the plain documents it stands for."""
    if not isinstance(data, dict):
        return [data]
    data = copy.deepcopy(data)
    # Before expanding: the seeds and names of the runs follow an overridden seed or
    # run_name, and --set may change the sweep itself.
    for key, value in overrides:
        set_dotted(data, key, value)
    grid = data.pop('grid', None) or {}
    repeats = data.pop('repeats', 1)
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError('grid: expected a mapping of dotted keys to non-empty lists of values, '
                          'e.g. {model_parameters.depth: [20, 56]}')
    swept = [key for key, _ in overrides if key in grid]
    if swept:
        raise ConfigError(f"--set {swept[0]}: the grid sweeps this key, so every run would get the "
                          f"same value under a name that says otherwise; change the grid instead "
                          f"(--set 'grid={{{swept[0]}: [...]}}')")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f'repeats: expected a whole number of at least 1, got {describe_value(repeats)}')
    check_search_sweep(data.get('search'), grid, repeats)
    if not grid and repeats == 1:
        return [data]
    tp = data.get('train_parameters') if isinstance(data.get('train_parameters'), dict) else {}
    base = tp.get('run_name') or data.get('model') or 'run'
    base_seed = tp.get('seed', 0) if isinstance(tp.get('seed', 0), int) else 0
    docs = []
    for combo in itertools.product(*grid.values()):
        doc = copy.deepcopy(data)
        parts = [base]
        for key, value in zip(grid, combo):
            try:
                set_dotted(doc, key, value)
            except ConfigError as e:
                raise ConfigError(f'grid: {e}'.replace('--set ', '')) from None
            parts.append(f"{key.split('.')[-1]}-{_format_value(value)}")
        name = '_'.join(parts)
        for k in range(repeats):
            one = copy.deepcopy(doc)
            set_dotted(one, 'train_parameters.run_name', f'{name}/seed{k}' if repeats > 1 else name)
            if repeats > 1:
                set_dotted(one, 'train_parameters.seed', base_seed + k)
            docs.append(one)
    return docs


def load_experiments(path, overrides=(), docs=None):
    """All experiments of one file (of its documents numbered in `docs`, from 0, when given),
    validated (schema only; see runner.registry for models)."""
    text = read_text(path)
    wanted = docs
    parsed = [d for d in parse_yaml(text, path) if d is not None]
    if not parsed:
        raise ConfigError(f'{path}: no experiments in this file')

    def one(i):
        try:
            check_keys(parsed[i])
            expanded = expand(parsed[i], overrides)
        except ConfigError as e:
            raise ConfigError(f'{path}: experiment {i + 1}: {e}') from None
        return collect_errors(expanded, lambda d: experiment_from_dict(d, path, i))
    numbers = [i for i in range(len(parsed)) if wanted is None or i in wanted]
    return [e for exps in collect_errors(numbers, one) for e in exps]
