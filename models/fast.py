"""Small CIFAR networks from the speed-record literature, sized for a short training budget.

Papers:
- Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024, arXiv:2404.00498
  (airbench94: 94.01% in 9.9 epochs; code github.com/KellerJordan/cifar10-airbench).
- David Page, "How to Train Your ResNet" (Myrtle.ai blog series, 2018): the DAWNBench
  ResNet-9 that reached 94% in 24 epochs, which airbench descends from.

Both come from one builder, :func:`_fast_net`, fed a row of ``SPECS``: a stem, then
stages of "conv, 2x2 max-pool, BN, activation" followed by more conv-BN-activation
layers (added to the stage's input in ResNet-9's residual stages), a global max-pool
and a bias-free classifier whose output is multiplied by a constant (1/9, 1/8), as both
released codes do; the learning rates they were tuned with assume those small logits.

airbench94 as released (legacy/airbench94.py), with these differences:
- The first layer, a 2x2 conv to 24 channels, is airbench's frozen patch-whitening layer
  (:class:`PatchWhitening`): its filters are the eigenvectors of the covariance of the
  training images' 2x2 patches, scaled by 1/sqrt(eigenvalue + 5e-4), and their negatives.
  A model function never sees the data, so the layer has an ``adapt(images)`` method and
  the runner calls it on 5000 un-augmented training images (``adapt_examples``) before the
  first step of a fresh run. Its bias trains throughout (airbench freezes it after 3
  epochs). ``whiten=False`` gives an ordinary trainable conv there instead.
- The global max-pool replaces the final ``MaxPool2d(3)`` (the same on a 3x3 map at
  32x32 input), so larger inputs work.
- BatchNorm has no scale (airbench freezes it at 1; here it is absent, which is the
  same function), momentum 0.6 and epsilon 1e-12 as released.
- Initialisation as PyTorch's default (uniform, bound 1/sqrt(fan_in)), and airbench's
  partial identity ("dirac") init: in every conv the first min(in, out) filters
  pass their input channel through.
- Weight decay on every trainable weight, the BN biases and the whitening bias included
  (``decay_all``, on by default; both released codes decay every parameter).
- Not in the model, and done by the runner's own options: the learning rate 64x larger
  for BN biases and not their weight decay (``bn_bias_lr_multiplier``), translate-and-mirror
  TTA with airbench's weights (``eval_tta: flip_translate``), Lookahead
  (``lookahead_interval``), alternating flips (``dataset.alternate_flips``), reflect-padded
  translation (``dataset.crop_padding_mode``) and the schedule (``lr_schedule:
  piecewise_linear``). Freezing the whitening bias after 3 epochs (airbench's speed trick)
  is the runner's ``freeze_after: {stem_whiten: 147}``; experiments/cifar10_fast_muon.yaml
  uses it (at step 75, its 3 epochs), the airbench94 recipes of cifar10_fast.yaml do not.

ResNet-9 as in Page's DAWNBench code (dawn.py): conv-BN-ReLU then max-pool, residual
pairs of conv-BN-ReLU in the first and third stages, widths 64/128/256/512, scale 0.125,
weight decay on every trainable weight (dawn.py's SGD takes all of them; ``decay_all``).
"""

import dataclasses
import types

import keras
import numpy as np
from keras import Input, layers, ops

from . import layers as L
from .zoo import variants


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


@keras.saving.register_keras_serializable(package="convnet_runner")
class FusedBatchNormalization(layers.BatchNormalization):
    """BatchNormalization whose training pass is TensorFlow's fused kernel (FusedBatchNormV3,
    oneDNN's on the CPU) in float32, instead of Keras 3's moments and a dozen elementwise ops
    (in bfloat16 under mixed_bfloat16, where they took about half of cifar_airbench94's
    step: docs/benchmarks.md). The same function and statistics: the moving variance is
    updated with the biased batch variance, as Keras does (the kernel returns the unbiased
    one). Inference, masks and other layouts take Keras's own path."""

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf  # the fused kernel is TensorFlow's
        if not (training and self.trainable) or mask is not None or self.renorm or \
                len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = ops.cast(self.gamma, "float32") if self.scale else ops.ones([channels])
        offset = ops.cast(self.beta, "float32") if self.center else ops.zeros([channels])
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=ops.cast(inputs, "float32"), scale=scale, offset=offset, mean=ops.zeros([0]),
            variance=ops.zeros([0]), epsilon=self.epsilon, exponential_avg_factor=1.0,
            data_format="NHWC", is_training=True)
        n = ops.cast(ops.size(inputs) // channels, "float32")
        mean, variance = ops.stop_gradient(mean), ops.stop_gradient(variance * (n - 1) / n)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="convnet_runner")
class PatchWhitening(layers.Layer):
    """airbench's frozen first layer: a ``patch_size`` conv (valid padding) whose
    2 * patch_size**2 * channels filters whiten the image's patches.

    ``adapt(images)`` sets the filters from images as the model receives them
    (normalised): with the eigen-decomposition ``C = V diag(l) V^T`` of the patches'
    uncentred covariance, the filters are the columns of ``V / sqrt(l + epsilon)``
    (largest eigenvalue first) followed by their negatives, as airbench94's
    ``init_whitening_conv``. The kernel is not trainable; the bias is. Before
    ``adapt`` the kernel holds PyTorch-default random filters, so an unadapted model
    still runs (tests, predict on a model whose weights are loaded afterwards).
    """

    def __init__(self, patch_size=2, epsilon=5e-4, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.epsilon = int(patch_size), float(epsilon)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        p, c = self.patch_size, int(input_shape[-1])
        self.filters = 2 * p * p * c
        self.kernel = self.add_weight(shape=(p, p, c, self.filters), initializer=_torch_default_init(),
                                      trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias",
                                    regularizer=self.bias_regularizer)

    def call(self, x):
        y = ops.conv(x, ops.cast(self.kernel, x.dtype), padding="valid")
        return y + ops.cast(self.bias, x.dtype)

    def adapt(self, images):
        """Set the filters from a batch of images [N, H, W, C] (numpy or tensor)."""
        x = np.asarray(images, np.float64)
        p = self.patch_size
        n, h, w, c = x.shape
        # Every p x p patch, flattened in (row, column, channel) order: the order of the
        # kernel's first three axes, so a column reshapes into one filter.
        patches = np.stack([x[:, i:h - p + 1 + i, j:w - p + 1 + j, :]
                            for i in range(p) for j in range(p)], axis=3).reshape(-1, p * p * c)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
        scaled = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + self.epsilon)
        kernel = np.concatenate([scaled, -scaled], axis=1).reshape(p, p, c, 2 * p * p * c)
        self.kernel.assign(kernel.astype("float32"))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "epsilon": self.epsilon,
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer)}


def _torch_default_init():
    # PyTorch's Conv2d/Linear default (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
    # airbench's learning rate and weight decay were tuned with weights of this size.
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


@dataclasses.dataclass(frozen=True)
class FastSpec:
    """One fast CIFAR net."""
    stem: tuple              # (filters, kernel, padding, conv bias, BN-activation after it)
    stages: tuple            # (width, extra conv-BN-activation layers, residual) per stage
    activation: str
    pool_before_norm: bool   # airbench: conv, pool, BN (4x less BN work); ResNet-9: conv, BN, act, pool
    bn_momentum: float       # Keras convention: moving = momentum * moving + (1 - momentum) * batch
    bn_epsilon: float
    bn_scale: bool
    dirac: bool
    logit_scale: float

    def build(self, name, input_shape, num_classes, weight_decay, widths=None, whiten=False,
              decay_all=True, fused_norm=False):
        return _fast_net(name, self, input_shape, num_classes, weight_decay, widths,
                         whiten=bool(whiten), decay_all=bool(decay_all), fused_norm=bool(fused_norm))


SPECS = types.MappingProxyType({
    "cifar_airbench94": FastSpec(
        stem=(24, 2, "valid", True, False), stages=((64, 1, False), (256, 1, False), (256, 1, False)),
        activation="gelu", pool_before_norm=True, bn_momentum=0.6, bn_epsilon=1e-12,
        bn_scale=False, dirac=True, logit_scale=1 / 9),
    "cifar_resnet9": FastSpec(
        stem=(64, 3, "same", False, True), stages=((128, 2, True), (256, 0, False), (512, 2, True)),
        activation="relu", pool_before_norm=False, bn_momentum=0.9, bn_epsilon=1e-5,
        bn_scale=True, dirac=False, logit_scale=0.125),
})


def _fast_net(name, spec, input_shape, num_classes, weight_decay, widths=None, whiten=False,
              decay_all=True, fused_norm=False):
    """Build the network of ``spec``; ``widths`` replaces the stage widths,
    ``whiten`` makes the stem a :class:`PatchWhitening` layer of the stem's kernel size,
    ``decay_all`` puts the weight decay on every trainable weight (BN offsets and scales,
    biases) as both released codes do, not only on the kernels. ``fused_norm`` makes each
    batch norm a :class:`FusedBatchNormalization` and it and its activation float32 layers
    (under mixed_bfloat16 the next conv casts back): the same function and weights, faster
    on the CPU (docs/benchmarks.md)."""
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

    other_decay = L.l2(weight_decay) if decay_all else None

    def conv(x, width, k, layer_name, pad="same", use_bias=False):
        return L.conv(x, width, k, padding=pad, use_bias=use_bias, weight_decay=weight_decay,
                      initializer=init, bias_regularizer=other_decay, layer=layers.Conv2D,
                      name=layer_name)

    norm_layer = FusedBatchNormalization if fused_norm else layers.BatchNormalization
    # float32 norm and activation: bfloat16 elementwise kernels are the slow ones on a CPU.
    fused_dtype = {"dtype": "float32"} if fused_norm else {}

    def norm_act(x, prefix, suffix):
        x = L.batch_norm(x, epsilon=spec.bn_epsilon, momentum=spec.bn_momentum, scale=spec.bn_scale,
                         regularizer=other_decay, layer=norm_layer, name=f"{prefix}_bn{suffix}",
                         **fused_dtype)
        return layers.Activation(spec.activation, name=f"{prefix}_act{suffix}", **fused_dtype)(x)

    inputs = Input(shape=input_shape, name="input")
    if whiten:
        if padding != "valid":
            raise ValueError(f"{name}: whitening needs a stem with valid padding")
        x = PatchWhitening(kernel, bias_regularizer=other_decay, name="stem_whiten")(inputs)
    else:
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
    x = L.dense(x, num_classes, weight_decay=weight_decay, use_bias=False,
                initializer=_torch_default_init(), name="classifier")
    outputs = layers.Rescaling(spec.logit_scale, name="logits")(x)
    return L.build_model(inputs, outputs, name)


# cifar_airbench94, cifar_resnet9: their functions, as this module's names.
globals().update(variants(SPECS))
