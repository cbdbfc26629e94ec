"""The type engine: a raw mapping into the schema's dataclasses, checked against each
field's type annotation, with errors that name the dotted key."""
import dataclasses
import math
import typing
from typing import Any, Dict, List, Union


from runner.common import did_you_mean
from runner.config.errors import ConfigError, join_errors, problems_of
from runner.config.schema import (DatasetConfig, PaperConfig, SearchConfig, TrainConfig, schema_fields,
                                  type_name)


def describe_value(value):
    if value is None:
        return 'null'
    return f'{type(value).__name__} {value!r}'


def convert(value, tp, key):
    """Check `value` against the type annotation `tp`; returns the value to store."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], key)
    if origin in (list, List):
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f'{key}: expected {type_name(tp)}, got {describe_value(value)}')
        return [convert(v, item, f'{key}[{i}]') for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping, got {describe_value(value)}')
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping of {tp.__name__} keys, got {describe_value(value)}')
        return build(tp, value, key + '.')
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                # .nan or .inf would train (or pass as a "last good" checkpoint) to no end.
                raise ConfigError(f'{key}: must be a finite number, got {value}')
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f'{key}: expected {type_name(tp)}, got {describe_value(value)}')


def unknown_key(key, prefix, known):
    # A key that belongs in another section is the commonest slip: say where it goes.
    elsewhere = [f'{sec}.{key}' for sec, cls in SECTIONS.items()
                 if key in schema_fields(cls) and sec + '.' != prefix]
    hint = (did_you_mean(key, known, prefix)
            or (f"; it belongs in '{elsewhere[0]}'" if elsewhere else '')
            or f"; valid keys: {', '.join(sorted(known))}")
    return ConfigError(f'{prefix}{key}: unknown key{hint}')


def build(cls, data, prefix=''):
    """A schema object from a mapping; one ConfigError naming the problem of every key."""
    known = schema_fields(cls)
    kwargs = {}

    def one(item):
        key, value = item
        if not isinstance(key, str) or key not in known:
            raise unknown_key(str(key), prefix, list(known))
        if value is None and known[key].metadata.get('null_is_default'):
            return  # the default, which older files spelled null
        kwargs[key] = convert(value, known[key].type, prefix + key)
    problems = problems_of(data.items(), one)
    problems += [f'{prefix}{n}: required key is missing' for n, f in known.items()
                 if n not in data and f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING]
    if problems:
        raise join_errors(*problems)
    return cls(**kwargs)


SECTIONS = {'dataset': DatasetConfig, 'train_parameters': TrainConfig, 'paper': PaperConfig,
            'search': SearchConfig}
