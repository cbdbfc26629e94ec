"""@pytest.mark.needs(NAME) (tests/conftest.py): a test that needs data or a service CI
provides is skipped where it is missing and fails under CI=true, whatever words its skip
reason uses; a test using a fixture that provides one must carry the marker. Checked by
running pytest, with this project's conftest.py and setup.cfg, on small test files."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT, TESTS, subprocess_env

MARKED = """
import pytest

@pytest.mark.needs('cifar10-jpeg')        # ../shared is not beside this copy: absent
def test_data_that_is_absent():
    pass

@pytest.mark.needs('slurm')
def test_a_service_that_skips_in_its_own_words():
    pytest.skip('the cluster went for a walk')

def test_unmarked_and_not_applicable_here():
    pytest.skip('only on ARM')

@pytest.mark.needs('root')
def test_present():
    pass
"""

SKIPPED_MODULE = """
import pytest
pytest.importorskip('a_package_nobody_declared')

def test_never_collected():
    pass
"""

UNMARKED_FIXTURE_USER = """
def test_forgot_the_marker(cifar10_tfds_dir):
    pass
"""


def pytest_run(tmp_path, source, ci):
    """(exit status, output) of pytest on one test file beside a copy of conftest.py."""
    tests = tmp_path / 'tests'
    tests.mkdir(exist_ok=True)
    shutil.copy(os.path.join(TESTS, 'conftest.py'), tests / 'conftest.py')
    (tests / 'test_x.py').write_text(source)
    p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rfs', '-p', 'no:cacheprovider',
                        '-c', os.path.join(ROOT, 'setup.cfg'), '--rootdir', str(tmp_path), str(tests)],
                       cwd=tmp_path, env=subprocess_env(CI='true' if ci else ''), capture_output=True,
                       text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_a_marked_test_is_skipped_where_its_need_is_missing_and_fails_under_ci(tmp_path):
    assert os.geteuid() == 0, 'the tests run as root (CI does), so needs("root") is met here'
    code, out = pytest_run(tmp_path, MARKED, ci=False)
    assert code == 0 and '1 passed, 3 skipped' in out, out
    assert 'needs ../shared/datasets/cifar10-jpeg, absent here' in out, out
    code, out = pytest_run(tmp_path, MARKED, ci=True)
    # (the first fails at its setup, where its marker skipped it: pytest counts an error)
    assert code == 1 and '1 failed, 1 passed, 1 skipped, 1 error' in out, out
    assert 'ERROR at setup of test_data_that_is_absent' in out
    assert 'marked needs(cifar10-jpeg), which CI provides, but skipped: Skipped: needs ../shared' in out
    assert 'FAILED tests/test_x.py::test_a_service_that_skips_in_its_own_words' in out
    assert 'marked needs(slurm), which CI provides, but skipped: Skipped: the cluster went for a walk' in out, out


def test_a_test_using_a_data_fixture_without_the_marker_is_refused(tmp_path):
    code, out = pytest_run(tmp_path, UNMARKED_FIXTURE_USER, ci=False)
    assert code != 0 and "uses the fixture cifar10_tfds_dir: mark it @pytest.mark.needs('cifar10-tfds')" in out, out


def test_a_module_skipped_at_collection_fails_under_ci(tmp_path):
    code, out = pytest_run(tmp_path, SKIPPED_MODULE, ci=True)
    assert code != 0 and "a test module skipped under CI=true: Skipped: could not import 'a_package_nobody_declared'" in out, out
