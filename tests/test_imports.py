"""No import cycle inside runner/ (issue 20): every module can be read and imported on its
own, bottom-up, and a circle cannot be held together by the order modules happen to be
imported in.

The graph is read from the source with `ast`, not by importing (so TensorFlow is never
loaded): an edge A -> B for every `import runner.B` / `from runner import B` /
`from runner.B import x` in A. Imports inside functions (lazy imports) count as edges too:
a circle closed by a lazy import is still a circle, only one that fails later, at call
time, or works by the luck of which module was imported first.
"""
import ast
import os

RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'runner')

def runner_modules():
    """{module name: path} of every module of the runner package."""
    out = {}
    for root, _, files in os.walk(RUNNER):
        rel = os.path.relpath(root, os.path.dirname(RUNNER))
        package = rel.replace(os.sep, '.')
        for f in files:
            if f.endswith('.py'):
                out[package if f == '__init__.py' else f'{package}.{f[:-3]}'] = os.path.join(root, f)
    return out


def imported(tree, module, known):
    """The runner modules that `tree` (module `module`) imports, lazily or not."""
    package = module if module == 'runner' else module.rsplit('.', 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:  # relative: from . import x, from .x import y
                base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                                + ([base] if base else []))
            # `from runner.data import loader` imports the module runner.data.loader; `from
            # runner.data.loader import load` imports runner.data.loader.
            names = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]
        else:
            continue
        for name in names:
            # `import runner.data.x` imports runner.data.x (and its packages, which are
            # runner and runner.data: their __init__ only).
            while name and name not in known:
                name = name.rpartition('.')[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph():
    known = runner_modules()
    graph = {}
    for module, path in known.items():
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        graph[module] = imported(tree, module, known)
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None."""
    state = {}  # module -> 1 on the current path, 2 done
    path = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_inside_runner():
    graph = import_graph()
    assert 'runner.training.session' in graph and 'runner.data.loader' in graph['runner.training.session']  # the graph is read
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_a_cycle_is_found():
    """The detector finds a cycle closed by a lazy (function-level) import."""
    known = {'runner', 'runner.a', 'runner.b'}
    a = ast.parse('from runner import b\n')
    b = ast.parse('def f():\n    from runner.a import g\n    return g\n')
    graph = {'runner.a': imported(a, 'runner.a', known), 'runner.b': imported(b, 'runner.b', known)}
    assert find_cycle(graph) == ['runner.a', 'runner.b', 'runner.a']
