"""setup.cfg declares every third-party package the runner, the models, the benchmarks and
the tests import (a package that arrives only as another's dependency can leave with its next
release), and nothing the code does not import."""
import ast
import configparser
import importlib.metadata
import os
import re
import sys

from conftest import ROOT

# Required though nothing here imports it: tensorflow-datasets imports it when it prepares a
# dataset (downloads, the offline CIFAR-10 tool) and declares it only for Python < 3.9.
FOR_TFDS = {'importlib-resources'}
# Required though nothing here imports it: Optuna's CmaEsSampler imports it, for a search's
# sampler cmaes (runner.search.study), and Optuna does not declare it.
FOR_OPTUNA = {'cmaes'}
# The project's own top-level packages, and the modules of the folders the tests and benchmarks
# import from each other.
OWN = {'runner', 'models'} | {name[:-3] for folder in ('tests', 'benchmarks')
                              for name in os.listdir(os.path.join(ROOT, folder)) if name.endswith('.py')}


def imported_top_levels(folder):
    """{top-level module name: first file importing it} for every import in folder's .py files,
    those inside functions included."""
    found = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            path = os.path.join(dirpath, name)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split('.')[0], os.path.relpath(path, ROOT))
    return found


def declared(*sections):
    """Normalised distribution names in install_requires and the given extras."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    text = cfg['options']['install_requires']
    text += ''.join('\n' + cfg['options.extras_require'][s] for s in sections)
    names = set()
    for line in text.splitlines():
        line = line.split('#')[0].strip()
        if line:
            names.add(_normal(re.match(r'[A-Za-z0-9_.\-]+', line).group(0)))
    return names


def _normal(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def undeclared(folder, sections=()):
    distributions = importlib.metadata.packages_distributions()
    have = declared(*sections)
    missing = {}
    for module, where in imported_top_levels(folder).items():
        if module in OWN or module in sys.stdlib_module_names:
            continue
        dists = {_normal(d) for d in distributions.get(module, [module])}
        if not dists & have:
            missing[module] = (sorted(dists), where)
    return missing


def test_the_runner_and_the_models_import_only_declared_packages():
    assert undeclared('runner') == {}
    assert undeclared('models') == {}


def test_the_tests_and_benchmarks_import_only_declared_packages():
    assert undeclared('tests', ['test']) == {}
    assert undeclared('benchmarks', ['test', 'profile']) == {}


def test_every_required_package_is_imported():
    """A requirement nothing imports is a promise the code does not keep (tensorflow-datasets
    and tensorboard are imported under their module names)."""
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for folder in ('runner', 'models'):
        for module in imported_top_levels(folder):
            imported |= {_normal(d) for d in distributions.get(module, [])}
    assert declared() - imported == FOR_TFDS | FOR_OPTUNA
