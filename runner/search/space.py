"""The space of a search: `search.space` of an experiment as Optuna distributions, the
experiments its values stand for, and the corners of it that validation and the smoke run
try before any trial trains.

A key is dotted as `--set` names it; an item of a list by its index
(`train_parameters.lr_values[0]`). A range is `{low, high, log, step}` (Optuna's
FloatDistribution, or IntDistribution when the key is an integer one or low, high and step
are all integers); a set of values is `{choices: [...]}` (CategoricalDistribution).
Optuna: Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter Optimization Framework".
"""
import math
import re
import typing

from runner.common import did_you_mean
from runner.config.errors import ConfigError
from runner.config.expand import experiment_from_dict, set_dotted
from runner.config.reference import schema_field

RANGE_KEYS = ('low', 'high', 'log', 'step')
CHOICE_KEYS = ('choices',)
_INDEXED = re.compile(r'(.+)\[(\d+)\]')


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def split_index(key):
    """'a.b[2]' -> ('a.b', 2); 'a.b' -> ('a.b', None)."""
    m = _INDEXED.fullmatch(key)
    return (m[1], int(m[2])) if m else (key, None)


def _integer_key(key):
    """Whether the schema types the key (an item of a list: its items) as an integer."""
    name, _ = split_index(key)
    f = schema_field(name)
    tp = f.type if f is not None else None
    for _ in range(3):  # Optional[List[int]] -> List[int] -> int
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if not args:
            break
        tp = args[0]
    return tp is int


def _check_key(key, base):
    """The key names a value of the experiment `base` (its to_dict()): a section key of
    the schema or a key of a mapping such as model_parameters; an index within the list."""
    name, index = split_index(key)
    f = schema_field(name)
    if f is None or '.' not in name:
        top = name.split('.')[0]
        sections = [k for k, v in base.items() if isinstance(v, dict)]
        if top not in sections:
            raise ConfigError(f"search.space.{key}: not a key of the experiment; keys are dotted "
                              f"from a section ({', '.join(sections)}){did_you_mean(top, sections)}")
        leaf = name.rsplit('.', 1)[-1]
        known = list(base[top])
        raise ConfigError(f'search.space.{key}: {top} has no key {leaf!r}'
                          f'{did_you_mean(leaf, known) or "; valid keys: " + ", ".join(known)}')
    if name.split('.')[0] in ('repeats', 'grid', 'search') or name.endswith('.run_name') \
            or name.endswith('.logdir'):
        raise ConfigError(f'search.space.{key}: cannot be searched (it says where and how the '
                          f'trials run, not how they train)')
    if index is not None:
        value = base
        for part in name.split('.'):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, list):
            raise ConfigError(f'search.space.{key}: {name} is not a list, so it has no item [{index}]')
        if index >= len(value):
            raise ConfigError(f'search.space.{key}: index out of range; {name} has {len(value)} '
                              f'items ({value})')


def distribution(key, spec):
    """The Optuna distribution of one key of the space; ConfigError for a spec that is wrong."""
    from optuna import distributions
    where = f'search.space.{key}'
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: expected {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}')
    allowed = CHOICE_KEYS if 'choices' in spec else RANGE_KEYS
    for k in spec:
        if k not in allowed:
            known = RANGE_KEYS + CHOICE_KEYS
            hint = (f'; choices cannot be given with {", ".join(RANGE_KEYS)}' if k in known
                    else did_you_mean(str(k), known) or f'; valid keys: {", ".join(known)}')
            raise ConfigError(f'{where}.{k}: unknown key{hint}')
    if 'choices' in spec:
        choices = spec['choices']
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f'{where}.choices: expected a non-empty list of values, got {choices!r}')
        bad = next((c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))), None)
        if bad is not None:
            raise ConfigError(f'{where}.choices: {bad!r}: a choice is a number, string, true/false or null')
        return distributions.CategoricalDistribution(choices)
    for k in ('low', 'high'):
        if k not in spec:
            raise ConfigError(f'{where}: needs {k} (a range is {{low: .., high: ..}}; a set of values '
                              f'is {{choices: [..]}})')
        if not _number(spec[k]):
            raise ConfigError(f'{where}.{k}: expected a finite number, got {spec[k]!r}')
    low, high, log, step = spec['low'], spec['high'], spec.get('log', False), spec.get('step')
    if not isinstance(log, bool):
        raise ConfigError(f'{where}.log: expected true/false, got {log!r}')
    if step is not None and not (_number(step) and step > 0):
        raise ConfigError(f'{where}.step: expected a positive number, got {step!r}')
    if low > high:
        raise ConfigError(f'{where}: low {low} is greater than high {high}')
    if log and low <= 0:
        raise ConfigError(f'{where}: log needs low > 0, got low {low}')
    if log and step is not None and step != 1:
        raise ConfigError(f'{where}: log and step cannot go together (Optuna samples a log '
                          f'range continuously)')
    whole = all(_integer(v) for v in (low, high) + ((step,) if step is not None else ()))
    if _integer_key(key) or (whole and not isinstance(spec.get('step', 0), float)):
        for k, v in (('low', low), ('high', high), ('step', step)):
            if v is not None and not float(v).is_integer():
                raise ConfigError(f'{where}.{k}: {key} takes whole numbers, got {v}')
        return distributions.IntDistribution(int(low), int(high), log=log,
                                             step=int(step) if step is not None else 1)
    return distributions.FloatDistribution(float(low), float(high), log=log,
                                           step=float(step) if step is not None else None)


def distributions_of(exp):
    """{key: Optuna distribution} of the experiment's search space, every key checked
    against the experiment; ConfigError naming the first key that is wrong."""
    base = exp.to_dict()
    out = {}
    for key, spec in exp.search.space.items():
        if not isinstance(key, str):
            raise ConfigError(f'search.space: {key!r}: a key is a dotted name such as '
                              f'train_parameters.weight_decay')
        _check_key(key, base)
        out[key] = distribution(key, spec)
    return out


def _set(d, key, value):
    name, index = split_index(key)
    if index is None:
        set_dotted(d, name, value)
        return
    node = d
    for part in name.split('.'):
        node = node[part]
    node[index] = value


def trial_experiment(exp, values, run_name):
    """The experiment of one trial: `exp` with the sampled `values` ({key: value}) and the
    trial's run name; ConfigError (naming the key's values) when the schema refuses them."""
    d = exp.to_dict()
    for key, value in values.items():
        _set(d, key, value)
    d['train_parameters']['run_name'] = run_name
    try:
        trial = experiment_from_dict(d, exp.source, exp.index)
    except ConfigError as e:
        shown = ', '.join(f'{k}={v}' for k, v in values.items())
        message = str(e).split(': ', 2)[-1] if str(e).startswith(exp.source) else str(e)
        raise ConfigError(f'search.space: with {shown}: {message}') from None
    trial.trial_values = dict(values)
    return trial


def _ends(dist):
    """The values of a distribution that validation tries: both ends of a range, every choice."""
    from optuna.distributions import CategoricalDistribution, IntDistribution
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        high = dist.low + (dist.high - dist.low) // dist.step * dist.step
        return [dist.low, high] if high != dist.low else [dist.low]
    return [dist.low, dist.high] if dist.high != dist.low else [dist.low]


def corners(dists):
    """Assignments ({key: value}) that reach every end of every key: all lows, all highs,
    then each other value of each key with the rest at their highs (the largest batch, the
    largest model of a range)."""
    ends = {k: _ends(d) for k, d in dists.items()}
    out = [{k: v[0] for k, v in ends.items()}, {k: v[-1] for k, v in ends.items()}]
    for key, values in ends.items():
        for v in values[1:-1]:
            out.append({**out[1], key: v})
    unique = []
    for a in out:
        if a not in unique:
            unique.append(a)
    return unique


def built_corners(dists):
    """The corners that change what gets built (a model parameter's ends and choices; the
    largest batch): what the smoke run trains. Every other key at its high end."""
    allc = corners(dists)
    high = allc[1] if len(allc) > 1 else allc[0]
    model_keys = [k for k in dists if k.startswith('model_parameters.')]
    out = [high]
    for key in model_keys:
        for v in _ends(dists[key]):
            a = {**high, key: v}
            if a not in out:
                out.append(a)
    return out
