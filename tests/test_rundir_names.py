"""Every path of a run directory comes from runner.rundir (issue 20): no other module of
runner/ spells the names of its files ('checkpoints', 'error.log', 'summary.json', ...), so
a name changes in one place and a reader finds the layout in one place.

Read from the source with `ast` (no import): a string constant that is one of the names, or
ends in '/<name>' (an f-string's `{run_dir}/error.log`), is a spelling. Docstrings and
comments are prose and do not count.
"""
import ast
import os

from runner import rundir

RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'runner')

NAMES = {rundir.SUMMARY, rundir.CONFIG, rundir.METRICS, rundir.FINAL_WEIGHTS, rundir.CHECKPOINTS,
         rundir.UNREADABLE, rundir.ERROR_LOG, rundir.DATA_INFO, rundir.LOCK, rundir.OVERVIEW,
         rundir.SUBMIT_RECORD, rundir.SLURM_OUTPUT, rundir.WORKERS}
# Not checked: rundir.BEST, 'best', is also the --weights choice that names the best/
# checkpoint (runner.commands.inference.WEIGHTS), a word of the command line rather than a path.

def docstrings(tree):
    """The constant nodes that are docstrings (of the module, classes and functions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def spellings(source):
    """(line, text) of every string constant of `source` that spells a run-directory name."""
    tree = ast.parse(source)
    skip = docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and any(node.value == name or node.value.endswith('/' + name) for name in NAMES)]


def test_only_rundir_spells_the_run_directory_names():
    found = []
    for name in sorted(os.listdir(RUNNER)):
        if name.endswith('.py') and name != 'rundir.py':
            with open(os.path.join(RUNNER, name), encoding='utf-8') as f:
                found += [f'runner/{name}:{line}: {text!r}' for line, text in spellings(f.read())]
    assert not found, 'use runner.rundir (RunDir) instead:\n' + '\n'.join(found)


def test_a_spelling_is_found():
    """The check sees a name as a constant and inside an f-string, and not in a docstring."""
    source = ('def f(run_dir):\n    """The error.log of a run."""\n'
              "    return open(os.path.join(run_dir, 'checkpoints')), f'{run_dir}/error.log'\n")
    assert sorted(spellings(source)) == [(3, '/error.log'), (3, 'checkpoints')]
