"""Shared fixtures: the repository on sys.path, small data sets, the offline CIFAR-10 copy."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
CIFAR_JPEG = os.path.join(SHARED, 'datasets', 'cifar10-jpeg')
for p in (ROOT, TESTS):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Before any test module imports TensorFlow: the runner sets its CPU-kernel switch (oneDNN)
# as a training run gets it, so the tests run on the same kernels, at the same speed.
import runner  # noqa: E402,F401


def subprocess_env(**extra):
    """Environment for running the runner in a child process: repo and tests importable."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, TESTS, env.get('PYTHONPATH', '')])
    env.update(extra)
    return env


def one_line_error(capsys, code, expected, *needles):
    """A command's exit code was `expected` and it printed one `error:` line, no traceback,
    holding every needle."""
    out, err = capsys.readouterr()
    assert code == expected, out + err
    lines = [l for l in err.strip().splitlines() if l.startswith('error:')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def make_image_folder(root, splits=(('train', 40), ('test', 10)), classes=4, size=32, fmt='png'):
    """A tiny image-folder data set whose classes differ by colour, so it is learnable."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for split, per_class in splits:
        for c in range(classes):
            d = os.path.join(root, split, f'class{c}')
            os.makedirs(d, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
                img[..., c % 3] += np.uint8(100 + 40 * (c // 3))
                data = (tf.io.encode_png(img) if fmt == 'png' else tf.io.encode_jpeg(img)).numpy()
                with open(os.path.join(d, f'{i:04d}.{fmt}'), 'wb') as f:
                    f.write(data)
    return str(root)


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('imgs'))


@pytest.fixture(scope='session')
def slurm(tmp_path_factory):
    """A real single-node Slurm (munged, slurmctld, slurmd: tests/slurm_cluster.py) for the
    session, SLURM_CONF set for its clients. Skipped, saying why, when Slurm cannot start
    (a test using it is marked needs('slurm'): under CI=true it fails)."""
    from slurm_cluster import SlurmCluster, SlurmUnavailable
    cluster = SlurmCluster(tmp_path_factory.mktemp('slurm'))
    try:
        cluster.start()
    except (SlurmUnavailable, OSError, subprocess.SubprocessError) as e:
        cluster.stop()
        pytest.skip(f'a test Slurm cannot start here: {e}')
    old = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = cluster.conf
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop('SLURM_CONF', None)
        else:
            os.environ['SLURM_CONF'] = old


@pytest.fixture(scope='session')
def cifar10_tfds_dir():
    """A TFDS data_dir holding the offline CIFAR-10 copy made from ../shared.

    CI builds it once and passes CONVNET_TFDS_DIR; otherwise it is built here (about a
    minute) into .cache/ of the repository. Skipped only where ../shared is absent (a test
    using it is marked needs('cifar10-tfds'): under CI=true it fails).
    """
    data_dir = os.environ.get('CONVNET_TFDS_DIR') or os.path.join(ROOT, '.cache', 'tfds')
    if os.path.exists(os.path.join(data_dir, 'cifar10', '3.0.2', 'dataset_info.json')):
        return data_dir
    tool = os.path.join(SHARED, 'tools', 'make_tfds_cifar10.py')
    if not os.path.exists(tool):
        pytest.skip(f'no offline CIFAR-10: {tool} is absent')
    subprocess.run([sys.executable, tool, data_dir], check=True, env=subprocess_env(),
                   stdout=subprocess.DEVNULL)
    return data_dir


def flip_translate_probabilities(view_logits):
    """Reference for TTA flip_translate's combination in numpy (airbench94's infer_mirror_translate):
    0.5 * mean(image, mirror) + 0.5 * mean of the four shifted views, on logits, then softmax."""
    import numpy as np
    plain, up, down, m_plain, m_up, m_down = [np.asarray(l, np.float64) for l in view_logits]
    logits = 0.5 * (plain + m_plain) / 2 + 0.5 * (up + down + m_up + m_down) / 4
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def flip_translate_views(x):
    """Reference for TTA flip_translate in numpy: the image, shifted one pixel up-left and
    down-right (reflected edges), and the mirrors of the three."""
    import numpy as np
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode='reflect')
    views = [x, padded[:, :-2, :-2], padded[:, 2:, 2:]]
    return views + [v[:, :, ::-1] for v in views]


# What a test may need that CI provides: @pytest.mark.needs(NAME) with a NAME of this table
# (setup.cfg registers the marker). Where it is missing the test is skipped, saying why, and
# under CI=true it fails instead: CI provides all of it, and a silent skip would hide that a
# test never ran. The check is the marker's, not the wording of a skip reason. A check of
# None: the fixture that provides it skips when it cannot.
NEEDS = {
    'cifar10-jpeg': ('../shared/datasets/cifar10-jpeg', lambda: os.path.isdir(CIFAR_JPEG)),
    'cifar10-tfds': ('the offline TFDS CIFAR-10 copy, built from ../shared/tools', None),
    'seed-001': ('the seed text ../shared/seeds/001_*.txt',
                 lambda: bool(glob.glob(os.path.join(SHARED, 'seeds', '001_*.txt')))),
    'slurm': ('a test Slurm (munged, slurmctld, slurmd as root)', None),
    'root': ('root, to mount a tmpfs', lambda: os.geteuid() == 0),
}
# Fixtures that provide one of them: every test using one (directly or through another
# fixture) must carry the marker, or the collection fails.
NEEDED_BY_FIXTURE = {'cifar10_tfds_dir': 'cifar10-tfds', 'slurm': 'slurm', 'mount_tmpfs': 'root',
                     'imagenet_folder': 'cifar10-jpeg'}


def needs_of(item):
    return [m.args[0] if m.args else None for m in item.iter_markers('needs')]


def pytest_collection_modifyitems(items):
    for item in items:
        needs = needs_of(item)
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise pytest.UsageError(f'{item.nodeid}: @pytest.mark.needs({unknown[0]!r}): not one of {sorted(NEEDS)}')
        for fixture, name in NEEDED_BY_FIXTURE.items():
            if fixture in getattr(item, 'fixturenames', ()) and name not in needs:
                raise pytest.UsageError(f"{item.nodeid} uses the fixture {fixture}: mark it "
                                        f"@pytest.mark.needs('{name}')")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for name in needs_of(item):
        what, here = NEEDS[name]
        if here is not None and not here():
            pytest.skip(f'needs {what}, absent here')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    needs = needs_of(item)
    if needs and report.skipped and os.environ.get('CI') == 'true' and not hasattr(report, 'wasxfail'):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = 'failed'
        report.longrepr = f"marked needs({', '.join(needs)}), which CI provides, but skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A module skipped whole at collection (pytest.importorskip) carries no marker to read: a
    # package the tests import is declared in setup.cfg, so under CI=true that skip fails.
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get('CI') == 'true':
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = 'failed'
        report.longrepr = f'a test module skipped under CI=true: {reason}'
