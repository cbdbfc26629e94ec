"""convnet-runner: a YAML-driven experiment runner for image-classification ConvNets."""
import os
import platform

__version__ = '0.1.0'


def on_x86():
    """Whether this is an x86-64 machine, the only kind whose kernel switch the runner sets."""
    return platform.machine().lower() in ('x86_64', 'amd64')


# TensorFlow's x86 wheels switch their oneDNN kernels on by themselves only on CPUs with
# AVX512-VNNI, AVX512-BF16 or AMX. Without them (an AVX2-only AMD EPYC, for one) the default
# Eigen kernels trained ResNet-20 at 0.6 and cifar_airbench94 at 0.48 times the oneDNN speed
# (docs/benchmarks.md, AMD EPYC AVX2 only). TensorFlow reads the switch once, when it is first imported, so
# it is set here, before any module of the runner imports it; TF_ENABLE_ONEDNN_OPTS=0 in the
# environment still turns the kernels off.
if on_x86():
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')


