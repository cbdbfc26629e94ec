"""What the runner tells and sets about the CPU it trains on: the description that goes
beside every speed it records, and TensorFlow's oneDNN kernels switched on on x86 CPUs
where TensorFlow leaves them off (AVX2-only chips, where they trained 1.65-2.1x faster)."""
import os
import platform
import subprocess
import sys

import pytest

from conftest import subprocess_env
import runner
from runner.training import distribute

AVX2_EPYC = 'model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n'
BF16_XEON = ('model name\t: Intel(R) Xeon(R) Processor\n'
             'flags\t\t: fpu avx avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16\n')


@pytest.mark.parametrize('text, isa', [
    (AVX2_EPYC, 'AVX2'),
    (BF16_XEON, 'AVX512-BF16'),
    ('model name\t: Sapphire\nflags\t\t: avx2 avx512f amx_bf16 amx_tile\n', 'AMX'),
    ('model name\t: Skylake\nflags\t\t: avx2 avx512f\n', 'AVX512'),
])
def test_cpu_description_names_the_widest_vector_instructions(tmp_path, text, isa):
    path = tmp_path / 'cpuinfo'
    # two processors: the first one's line is taken once
    path.write_text(f'processor\t: 0\n{text}\nprocessor\t: 1\n{text}')
    cores = len(os.sched_getaffinity(0))
    model = text.split(':', 1)[1].split('\n', 1)[0].strip()
    assert distribute.cpu_description(str(path)) == f'{model} ({isa}), {cores} cores'


def test_cpu_description_without_cpuinfo_still_names_the_cores(tmp_path):
    described = distribute.cpu_description(str(tmp_path / 'missing'))
    assert described.endswith(f', {len(os.sched_getaffinity(0))} cores') and '(' not in described


def child_onednn(**env):
    """(TF_ENABLE_ONEDNN_OPTS, whether TensorFlow runs oneDNN) in a new process that imports
    the runner, then TensorFlow."""
    base = {k: v for k, v in subprocess_env().items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
    code = ('import os, runner, runner.compat, tensorflow\n'
            'print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), runner.compat.onednn_enabled())')
    out = subprocess.run([sys.executable, '-c', code], env={**base, **env}, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return out.split()[-2:]


@pytest.mark.skipif(not runner.on_x86(), reason='an x86 switch')
def test_onednn_kernels_are_on_unless_the_environment_says_otherwise():
    assert child_onednn() == ['1', 'True']
    assert child_onednn(TF_ENABLE_ONEDNN_OPTS='0') == ['0', 'False']


def test_the_switch_is_left_alone_off_x86(monkeypatch):
    # What runner/__init__ does on import, replayed for a machine it must not touch.
    import importlib
    monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
    monkeypatch.setattr(platform, 'machine', lambda: 'aarch64')
    importlib.reload(runner)
    assert 'TF_ENABLE_ONEDNN_OPTS' not in os.environ
    monkeypatch.setattr(platform, 'machine', lambda: 'x86_64')
    importlib.reload(runner)
    assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '1'
