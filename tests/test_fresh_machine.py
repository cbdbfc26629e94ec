"""A fresh machine without the data: `python run_experiments.py`, no flags, as the README's
first command. With network access TFDS downloads CIFAR-10 (dataset.download is on by
default); without it, one line names both ways out. The test takes the network away for
real: the command runs in a network namespace of its own (`unshare -rn`), so it fails the
same way on a machine that has network."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def _offline_prefix():
    """['unshare', '-rn'] where an unprivileged network namespace can be made; else a skip
    (under CI=true a failure: conftest)."""
    if shutil.which('unshare') and subprocess.run(['unshare', '-rn', 'true'],
                                                  capture_output=True).returncode == 0:
        return ['unshare', '-rn']
    pytest.skip('could not import a network namespace: `unshare -rn` is absent or not permitted here')


def test_offline_without_data_the_default_command_says_both_ways_out_in_one_line(tmp_path):
    prefix = _offline_prefix()
    work, home = tmp_path / 'work', tmp_path / 'home'
    work.mkdir()
    home.mkdir()
    shutil.copy(os.path.join(ROOT, 'experiments.yaml'), work / 'experiments.yaml')
    env = {**os.environ, 'PYTHONPATH': ROOT, 'HOME': str(home)}
    env.pop('TFDS_DATA_DIR', None)  # TFDS's default, ~/tensorflow_datasets: empty
    out = subprocess.run(prefix + [sys.executable, os.path.join(ROOT, 'run_experiments.py')],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and out.stdout == '', out.stdout + out.stderr
    line = lines[0]
    assert line.startswith("error: experiments.yaml: experiment 1 (resnet20_v1): dataset: 'cifar10' "
                           "is not prepared"), line
    assert 'unreachable' in line and 'With network access, run again and TFDS downloads it' in line
    assert 'TFDS_DATA_DIR' in line and 'make_tfds_cifar10.py' in line
    assert f"in {home}/tensorflow_datasets/cifar10/" in line
    # Nothing written: no run directory, no half-downloaded dataset.
    assert os.listdir(work) == ['experiments.yaml']
    assert not (home / 'tensorflow_datasets').exists()
