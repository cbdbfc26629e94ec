"""The YAML reference (docs/configuration.md, `python -m runner keys`) and what a resumed
run may change, both read from the schema's field metadata."""
import dataclasses
import typing

import yaml

from runner.config.schema import Experiment, default_of, schema_fields, type_name


class KeyInfo(typing.NamedTuple):
    """One row of the YAML reference."""
    key: str            # dotted: dataset.name
    type: str           # 'section' for a section
    default: str        # as YAML
    doc: str
    allowed: str = ''   # the choices or the range of numbers
    resumable: bool = False  # may change when a run is resumed


def reference():
    """The YAML reference: a KeyInfo for every key and section, in the schema's order."""
    rows = []

    def walk(cls, prefix):
        for name, f in schema_fields(cls).items():
            meta = f.metadata
            if dataclasses.is_dataclass(f.type):
                rows.append(KeyInfo(prefix + name, 'section', '', meta.get('doc', ''),
                                    resumable=resumable(prefix + name)))
                walk(f.type, prefix + name + '.')
                continue
            default = default_of(f)
            default = '(required)' if default is dataclasses.MISSING else default
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()
            within = meta.get('within')
            allowed = (', '.join(meta['choices']) if meta.get('choices') else
                       ('each ' if type_name(f.type).startswith('list') else '') + str(within)
                       if within else '')
            rows.append(KeyInfo(prefix + name, type_name(f.type), shown, meta.get('doc', ''),
                                allowed, bool(meta.get('resumable'))))
    walk(Experiment, '')
    return rows


def schema_field(dotted):
    """The schema field of a dotted key (of a key inside a mapping such as model_parameters:
    that mapping's field; of a section: its field), or None for a key the schema lacks."""
    cls, f = Experiment, None
    for part in dotted.split('.'):
        if not dataclasses.is_dataclass(cls):
            return f  # a key inside a mapping
        if part not in schema_fields(cls):
            return None
        f = schema_fields(cls)[part]
        cls = f.type
    return f


def resumable(dotted):
    """May this key (a section: each of its keys) change when a run is resumed?"""
    f = schema_field(dotted)
    if f is None:
        return False
    if dataclasses.is_dataclass(f.type):
        return all(resumable(f'{dotted}.{name}') for name in schema_fields(f.type))
    return bool(f.metadata.get('resumable'))


def recorded_value(dotted, value):
    """A value of a run's config.yaml as the schema reads it now: a null where the default
    has since been written into the schema is that default."""
    f = schema_field(dotted)
    if value is None and f is not None and f.metadata.get('null_is_default'):
        return default_of(f)
    return value
