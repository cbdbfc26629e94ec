"""From a file to its experiments: `--set` overrides, `grid` and `repeats` expanded,
every document validated, every problem reported at once."""
import copy
import dataclasses
import itertools
import re
import typing
from typing import Dict


from runner.config.checks import check_search_sweep, check_value, check_values, known_keys
from runner.config.convert import build, convert, describe_value, unknown_key
from runner.config.errors import ConfigError, collect_errors, join_errors, problems_of
from runner.config.schema import Experiment, schema_fields
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
    """['a.b=1', ...] -> [('a.b', 1), ...]; a key the schema lacks or a value it refuses is
    blamed on `--set` (not on every file it would be applied to), every such mistake at once."""
    out = []

    def one(item):
        key, sep, text = item.partition('=')
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train_parameters.batch_size=64")
        try:
            value = yaml_value(text)
            check_override(key, value)
        except ConfigError as e:
            # The key is in the line already: "--set KEY=VALUE: <what is wrong>".
            said = str(e).removeprefix('--set: ').removeprefix(f'{key}: ')
            raise ConfigError(f'--set {item}: {said}') from None
        out.append((key, value))
    problems = problems_of(items or [], one)
    if problems:
        raise join_errors(*problems)
    return out


def check_override(dotted, value):
    """A `--set` key against the schema: each part a key of its section (a key inside a
    mapping such as model_parameters is the model's to check), the value of its field's
    type, choices and range."""
    cls, parts = Experiment, dotted.split('.')
    for i, part in enumerate(parts):
        known = schema_fields(cls)
        if part not in known:
            prefix = ''.join(p + '.' for p in parts[:i])
            raise ConfigError(str(unknown_key(part, prefix, list(known))).split(': ', 1)[1])
        f = known[part]
        if dataclasses.is_dataclass(f.type):
            cls = f.type
            continue
        if i + 1 < len(parts):
            if typing.get_origin(f.type) in (dict, Dict):
                return  # a key inside a mapping
            raise ConfigError(f"'{'.'.join(parts[:i + 1])}' is not a section")
        if value is None and f.metadata.get('null_is_default'):
            return
        converted = convert(value, f.type, dotted)
        if converted is not None:
            check_value(f, dotted, converted)
        return
    convert(value, cls, dotted)  # a whole section


def document_label(data, source, index):
    """How errors name a document: file, position and run name (the model's name when it
    gives no run_name), as Experiment.label names an experiment."""
    name = None
    if isinstance(data, dict):
        tp = data.get('train_parameters')
        name = tp.get('run_name') if isinstance(tp, dict) else None
        name = name or data.get('model')
    return f'{source}: experiment {index + 1}' + (f' ({name})' if isinstance(name, str) and name else '')


def labelled(label, error):
    """`error` (a ConfigError or a message) with each of its lines after `label: `."""
    lines = getattr(error, 'problems', None) or str(error).splitlines()
    return join_errors(*[f'{label}: {line}' for line in lines])


def experiment_from_dict(data, source='<string>', index=0, across=True):
    """Validate one raw document into an Experiment; errors name source, position and key,
    a line for each problem of the document (`across`: config.checks.check_values)."""
    label = document_label(data, source, index)
    if not isinstance(data, dict):
        raise ConfigError(f'{label}: expected a mapping of keys, got {describe_value(data)}')
    data = copy.deepcopy(data)
    try:
        exp = build(Experiment, data)
        exp.source, exp.index = source, index
        check_values(exp, across)
    except ConfigError as e:
        raise labelled(label, e) from None
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
        label = document_label(parsed[i], path, i)
        unknown, known = known_keys(parsed[i])
        try:
            expanded = expand(known, overrides)
        except ConfigError as e:
            raise labelled(label, join_errors(*unknown, e)) from None
        try:
            exps = collect_errors(expanded, lambda d: experiment_from_dict(d, path, i, not unknown))
        except ConfigError as e:
            if unknown:  # every problem of the document, its unknown keys first
                raise join_errors(labelled(label, join_errors(*unknown)), e) from None
            raise
        if unknown:  # its runs built without those keys are not its runs
            raise labelled(label, join_errors(*unknown))
        return exps
    numbers = [i for i in range(len(parsed)) if wanted is None or i in wanted]
    return [e for exps in collect_errors(numbers, one) for e in exps]
