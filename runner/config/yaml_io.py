"""Reading experiment files (size, encoding, keys given twice, YAML 1.1's 1e-4) and writing
YAML."""
import re

import yaml

from runner.common import size_problem as common_size_problem
from runner.config.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 as a float (YAML 1.1 wants 1.0e-4) and refuses a key
    given twice in one mapping, which PyYAML would let the second silently replace (a
    forgotten `---` between two experiments would merge them into one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':  # `<<:`, overridable by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"'{key}' is given twice in one mapping (first at line "
                        f"{first.line + 1}); a missing '---' between two experiments?",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


# Limits of what a file (or a --set value) stands for once its aliases are expanded: a few lines
# of anchors and aliases can stand for billions of values (a "billion laughs") that copying,
# printing or walking the document would build, and an alias inside itself for an endless one.
# An experiment has about a hundred values; docs/runs.md states these (common.size_problem).
MAX_VALUES = 100_000   # values (scalars, lists, mappings), every use of an alias counted again
MAX_DEPTH = 20         # lists and mappings inside each other


def size_problem(documents):
    """Why these parsed documents are too large or too deep once their aliases are expanded,
    or None."""
    return common_size_problem(documents, MAX_VALUES, MAX_DEPTH)


def parse_yaml(text, source='<string>'):
    try:
        documents = list(yaml.load_all(text, Loader=_Loader))
    except RecursionError:  # PyYAML composes nested values recursively
        raise ConfigError(f'{source}: lists or mappings nested more than {MAX_DEPTH} deep') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f'{source}:{mark.line + 1}:{mark.column + 1}' if mark else source
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        kind = 'YAML error' if isinstance(e, yaml.constructor.ConstructorError) else 'YAML syntax error'
        raise ConfigError(f'{where}: {kind}: {problem}') from None
    problem = size_problem(documents)
    if problem:
        raise ConfigError(f'{source}: {problem}')
    return documents


def yaml_value(text):
    """A YAML scalar or flow value from the command line (`--set key=VALUE`)."""
    return parse_yaml(text, '--set')[0] if text.strip() else None


def dump_yaml(data):
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


# An experiment file is a few kilobytes (the largest shipped one is 6 KB); a file far larger
# is a mistake (a data file named by accident), and PyYAML's pure-Python parser would take
# minutes and gigabytes over it before any key could be checked.
MAX_FILE_BYTES = 1 << 20


def read_text(path):
    """The text of an experiment file: ConfigError for a file that is unreadable, too large or
    not UTF-8 (with the byte's position, line and column)."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f'{path}: cannot read: {e.strerror}') from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f'{path}: larger than {MAX_FILE_BYTES // 1024} KiB; an experiment file '
                          f'is a few kilobytes of YAML')
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        column = e.start - (raw.rfind(b'\n', 0, e.start) + 1) + 1
        raise ConfigError(f'{path}:{line}:{column}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte '
                          f'position {e.start}; save the file as UTF-8') from None
