"""The shape docs/architecture.md promises (issue 27): packages in layers that import only
downward, no module over 600 lines, no function over 60. Read from the source with `ast`, so
nothing is imported."""
import ast
import os

from test_imports import import_graph, runner_modules

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
# Bottom up; a module may import its own layer and the layers below. `runner` itself (its
# __init__: the version and the CPU-kernel switch) is the foundation.
LAYERS = [
    ('runner', 'runner.common', 'runner.rundir', 'runner.compat'),
    ('runner.config',),
    ('runner.data',),
    ('runner.registry',),
    ('runner.training',),
    ('runner.queue', 'runner.cli', 'runner.search'),
    ('runner.commands',),
    ('runner.__main__',),
]


def layer_of(module):
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + '.')) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_every_module_has_a_layer():
    assert [m for m in runner_modules() if layer_of(m) is None] == []


def test_imports_go_down_the_layers_only():
    upward = [f'{a} -> {b}' for a, imported in sorted(import_graph().items()) for b in sorted(imported)
              if layer_of(b) > layer_of(a)]
    assert upward == []


def test_no_module_over_the_line_limit():
    long = {m: n for m, path in runner_modules().items()
            if (n := len(open(path, encoding='utf-8').read().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_the_line_limit():
    long = []
    for module, path in runner_modules().items():
        tree = ast.parse(open(path, encoding='utf-8').read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f'{module}.{node.name}: {n} lines')
    assert long == []


def test_the_layers_are_ordered_as_the_architecture_page_draws_them():
    # config below training (config importing training would be an upward import), the
    # train command beside the queue, the commands after training above both.
    assert layer_of('runner.config.schema') < layer_of('runner.training.tta')
    assert layer_of('runner.queue.smoke') == layer_of('runner.cli') < layer_of('runner.commands.report')


def test_every_package_is_a_regular_package():
    """setup.cfg's `packages = find:` installs only folders with an __init__.py: a folder of
    modules without one works from the checkout and is missing from a wheel."""
    runner_dir = os.path.dirname(runner_modules()['runner'])
    missing = [root for root, _, files in os.walk(runner_dir)
               if any(f.endswith('.py') for f in files) and '__init__.py' not in files
               and '__pycache__' not in root]
    assert missing == []
