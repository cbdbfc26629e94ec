"""Small CIFAR networks from the speed-record literature, sized for a short training budget.

Papers:
- Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024, arXiv:2404.00498
  (airbench94: 94.01% in 9.9 epochs; code github.com/KellerJordan/cifar10-airbench).
- David Page, "How to Train Your ResNet" (Myrtle.ai blog series, 2018): the DAWNBench
  ResNet-9 that reached 94% in 24 epochs, which airbench descends from.

Both come from one builder, :func:`_fast_net`, fed a row of ``_SPECS``: a stem, then
stages of "conv, 2x2 max-pool, BN, activation" followed by more conv-BN-activation
layers (added to the stage's input in ResNet-9's residual stages), a global max-pool
and a bias-free classifier whose output is multiplied by a constant (1/9, 1/8), as both
released codes do; the learning rates they were tuned with assume those small logits.

airbench94 as released (legacy/airbench94.py), with these differences:
- Whitening-free: airbench sets its first layer (a 2x2 conv to 24 channels) to the
  eigenvectors of the training images' 2x2 patches and freezes it. A model function
  here never sees the data, so that conv is an ordinary trainable one (with its bias);
  expect to need somewhat more epochs than airbench's 9.9 for the same accuracy.
- The global max-pool replaces the final ``MaxPool2d(3)`` (the same on a 3x3 map at
  32x32 input), so larger inputs work.
- BatchNorm has no scale (airbench freezes it at 1; here it is absent, which is the
  same function), momentum 0.6 and epsilon 1e-12 as released.
- Initialisation as PyTorch's default (uniform, bound 1/sqrt(fan_in)), and airbench's
  partial identity ("dirac") init: in every conv the first min(in, out) filters
  pass their input channel through.
- Not in the model, and done by the runner's own options or left out: the learning
  rate 64x larger for BN biases, Lookahead (``train_parameters.ema_decay`` averages
  weights instead), alternating flips (random flips), and translate-TTA
  (``eval_tta: flip`` is the mirror only).

ResNet-9 as in Page's DAWNBench code (dawn.py): conv-BN-ReLU then max-pool, residual
pairs of conv-BN-ReLU in the first and third stages, widths 64/128/256/512, scale 0.125.
"""

import dataclasses
import types

import keras
import numpy as np
from keras import Input, layers, ops

from . import layers as L


@keras.saving.register_keras_serializable(package="convnet_runner")
class PartialDirac(keras.initializers.Initializer):
    """Conv kernel init: filters [0, min(in, out)) copy their own input channel (the
    centre tap is 1, as torch.nn.init.dirac_), the others are drawn from ``base``."""

    def __init__(self, base="glorot_uniform"):
        self.base = keras.initializers.get(base)

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        n = min(cin, cout)
        identity = np.zeros(shape, "float32")
        identity[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        keep = np.zeros(shape, bool)
        keep[..., :n] = True
        return ops.where(keep, ops.cast(identity, dtype or "float32"), self.base(shape, dtype))

    def get_config(self):
        return {"base": keras.initializers.serialize(self.base)}


def _torch_default_init():
    # PyTorch's Conv2d/Linear default (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
    # airbench's learning rate and weight decay were tuned with weights of this size.
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


@dataclasses.dataclass(frozen=True)
class _Spec:
    stem: tuple              # (filters, kernel, padding, conv bias, BN-activation after it)
    stages: tuple            # (width, extra conv-BN-activation layers, residual) per stage
    activation: str
    pool_before_norm: bool   # airbench: conv, pool, BN (4x less BN work); ResNet-9: conv, BN, act, pool
    bn_momentum: float       # Keras convention: moving = momentum * moving + (1 - momentum) * batch
    bn_epsilon: float
    bn_scale: bool
    dirac: bool
    logit_scale: float


_SPECS = types.MappingProxyType({
    "cifar_airbench94": _Spec(
        stem=(24, 2, "valid", True, False), stages=((64, 1, False), (256, 1, False), (256, 1, False)),
        activation="gelu", pool_before_norm=True, bn_momentum=0.6, bn_epsilon=1e-12,
        bn_scale=False, dirac=True, logit_scale=1 / 9),
    "cifar_resnet9": _Spec(
        stem=(64, 3, "same", False, True), stages=((128, 2, True), (256, 0, False), (512, 2, True)),
        activation="relu", pool_before_norm=False, bn_momentum=0.9, bn_epsilon=1e-5,
        bn_scale=True, dirac=False, logit_scale=0.125),
})


def _fast_net(name, spec, input_shape, num_classes, weight_decay, widths=None):
    """Build the network of one ``_SPECS`` row; ``widths`` replaces the stage widths."""
    stages = spec.stages
    if widths is not None:
        widths = list(widths)
        if len(widths) != len(stages) or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
            raise ValueError(f"{name}: widths must be {len(stages)} positive integers, got {widths!r}")
        stages = tuple((w, extra, res) for w, (_, extra, res) in zip(widths, stages))
    filters, kernel, padding, bias, stem_norm = spec.stem
    size_ops = [(kernel, 1, 0 if padding == "valid" else kernel - 1, False)] + [(2, 2, 0, False)] * len(stages)
    input_shape = L.check_args(name, input_shape, num_classes, size_ops=size_ops)
    init = PartialDirac(_torch_default_init()) if spec.dirac else _torch_default_init()

    def conv(x, width, k, layer_name, pad="same", use_bias=False):
        return layers.Conv2D(width, k, padding=pad, use_bias=use_bias, kernel_initializer=init,
                             kernel_regularizer=L.l2(weight_decay), name=layer_name)(x)

    def norm_act(x, prefix, suffix):
        x = layers.BatchNormalization(momentum=spec.bn_momentum, epsilon=spec.bn_epsilon,
                                      scale=spec.bn_scale, name=f"{prefix}_bn{suffix}")(x)
        return layers.Activation(spec.activation, name=f"{prefix}_act{suffix}")(x)

    inputs = Input(shape=input_shape, name="input")
    x = conv(inputs, filters, kernel, "stem_conv", pad=padding, use_bias=bias)
    x = norm_act(x, "stem", "") if stem_norm else layers.Activation(spec.activation, name="stem_act")(x)
    for i, (width, extra, residual) in enumerate(stages, start=1):
        prefix = f"block{i}"
        x = conv(x, width, 3, f"{prefix}_conv1")
        if spec.pool_before_norm:
            x = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
            x = norm_act(x, prefix, 1)
        else:
            x = norm_act(x, prefix, 1)
            x = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
        y = x
        for j in range(2, 2 + extra):
            y = norm_act(conv(y, width, 3, f"{prefix}_conv{j}"), prefix, j)
        x = layers.Add(name=f"{prefix}_add")([x, y]) if residual and extra else y
    x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=_torch_default_init(),
                     kernel_regularizer=L.l2(weight_decay), name="classifier")(x)
    outputs = layers.Rescaling(spec.logit_scale, name="logits")(x)
    return L.build_model(inputs, outputs, name)


def cifar_airbench94(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4, widths=(64, 256, 256)):
    """airbench94's network without its data-dependent whitening init (Jordan 2024, 1.97M)."""
    return _fast_net("cifar_airbench94", _SPECS["cifar_airbench94"], input_shape, num_classes,
                     weight_decay, widths)


def cifar_resnet9(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    """Page's DAWNBench ResNet-9 for CIFAR-10 (Page 2018, 6.57M)."""
    return _fast_net("cifar_resnet9", _SPECS["cifar_resnet9"], input_shape, num_classes, weight_decay)
