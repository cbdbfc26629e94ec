"""Building blocks shared by several model families.

Weight decay: every model takes ``weight_decay``, the SGD weight-decay
coefficient as the papers state it (Torch's ``weightDecay``, Caffe's
``weight_decay``), which adds ``weight_decay * w`` to the gradient of each
conv and dense kernel.  Keras' ``L2(l)`` adds ``l * sum(w**2)`` to the loss,
whose gradient is ``2 * l * w``, so :func:`l2` applies ``L2(weight_decay / 2)``,
by default only to conv and dense kernels (not to biases or batch-norm
parameters, as Caffe-style and Keras/TF reference recipes do).  The Torch codes
built on fb.resnet.torch (WRN, DenseNet, ResNeXt) hand every parameter to
``optim.sgd``'s ``weightDecay``, BN's and biases too: their families take
``decay_all`` (:func:`decay_every_weight`).  ``weight_decay=0`` adds no loss.

Squeeze-and-excitation: Hu, Shen, Albanie, Sun, Wu, "Squeeze-and-Excitation
Networks", 2017, arXiv:1709.01507.
"""

import numbers
import sys

import keras
from keras import layers, ops

from runner.compat import all_layers


def l2(weight_decay):
    """Return the kernel regulariser for an SGD weight-decay coefficient, or None for 0."""
    if weight_decay is None or weight_decay == 0:
        return None
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return keras.regularizers.L2(weight_decay / 2)


def decay_every_weight(model, weight_decay):
    """Put the weight decay on every trainable weight of ``model`` that has none yet (BN
    scales and offsets, biases), as Torch's ``optim.sgd`` over ``getParameters()`` does.

    Set on each variable (what Keras 3 collects into ``model.losses``) and on the layer's
    regulariser attribute (what its config saves), so a saved model keeps it.
    """
    reg = l2(weight_decay)
    if reg is None:
        return model
    attrs = {"gamma": "gamma_regularizer", "beta": "beta_regularizer", "bias": "bias_regularizer"}
    for layer in all_layers(model):
        for attr, reg_attr in attrs.items():
            variable = getattr(layer, attr, None)
            if isinstance(variable, keras.Variable) and variable.trainable and variable.regularizer is None:
                variable.regularizer = reg
                setattr(layer, reg_attr, reg)
    return model


def conv_initializer():
    """Return He et al.'s "MSR" init (normal, fan-out), as the ResNet/WRN/DenseNet Torch code."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package="convnet_runner")
class GroupedConv2D(layers.Conv2D):
    """Conv2D whose ``groups > 1`` path runs one convolution per group.

    Keras 3.15 on TensorFlow routes grouped convolutions on CPU through an
    XLA-compiled op whose backward pass is ~100x slower than the forward
    (5 s per step for one ResNeXt stage-1 layer at batch 8 on 2 cores).
    Splitting into ``groups`` ordinary convolutions keeps the same kernel
    shape ``(kh, kw, in / groups, filters)``, hence the same parameters and
    the same checkpoint layout as ``Conv2D(groups=...)``.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        if self.data_format != "channels_last":
            raise ValueError("GroupedConv2D supports channels_last only")
        xs = ops.split(inputs, self.groups, axis=-1)
        ks = ops.split(kernel, self.groups, axis=-1)
        return ops.concatenate(
            [ops.conv(x, k, strides=list(self.strides), padding=self.padding,
                      dilation_rate=self.dilation_rate, data_format=self.data_format)
             for x, k in zip(xs, ks)],
            axis=-1)


def conv(x, filters, kernel_size, *, strides=1, padding="same", groups=1,
         use_bias=False, weight_decay=0.0, initializer=None, bias_regularizer=None,
         layer=GroupedConv2D, name):
    """Apply a 2-D convolution with the L2 kernel regulariser and ``initializer`` (default
    :func:`conv_initializer`).

    ``layer`` is the Keras class. A ``.weights.h5`` file names each layer's weights after
    its class (``layers/grouped_conv2d/vars/0``), so a family keeps the class its runs were
    saved with: GroupedConv2D here, ``layers.Conv2D`` in models.fast.
    """
    return layer(
        filters, kernel_size, strides=strides, padding=padding, groups=groups,
        use_bias=use_bias, kernel_initializer=initializer or conv_initializer(),
        kernel_regularizer=l2(weight_decay), bias_regularizer=bias_regularizer, name=name)(x)


def batch_norm(x, *, epsilon=1e-5, momentum=0.9, scale=True, regularizer=None,
               layer=layers.BatchNormalization, name, **kwargs):
    """Apply batch normalisation, by default with Torch's momentum and default epsilon;
    ``regularizer`` on its scale and offset (``decay_all`` families); ``layer`` is the
    class (models.fast's FusedBatchNormalization), ``kwargs`` more of its arguments (dtype)."""
    # The papers' reference code is Torch/Caffe (moving-average weight 0.1 on the
    # new batch, eps 1e-5); Keras' defaults (0.99, 1e-3) would average the moving
    # statistics over ~10x more steps.
    return layer(momentum=momentum, epsilon=epsilon, scale=scale, beta_regularizer=regularizer,
                 gamma_regularizer=regularizer, name=name, **kwargs)(x)


def bn_relu(x, *, name, suffix=""):
    """Apply BN then ReLU, as layers ``{name}_bn{suffix}`` and ``{name}_relu{suffix}``."""
    x = batch_norm(x, name=f"{name}_bn{suffix}")
    return layers.ReLU(name=f"{name}_relu{suffix}")(x)


def conv_bn_relu(x, filters, kernel_size, *, strides=1, padding="same", groups=1,
                 weight_decay=0.0, bn_epsilon=1e-5, relu=True, name, suffix=""):
    """Apply conv (no bias: BN's beta replaces it), BN and optionally ReLU (``{name}_conv1``...)."""
    x = conv(x, filters, kernel_size, strides=strides, padding=padding, groups=groups,
             weight_decay=weight_decay, name=f"{name}_conv{suffix}")
    x = batch_norm(x, epsilon=bn_epsilon, name=f"{name}_bn{suffix}")
    if relu:
        x = layers.ReLU(name=f"{name}_relu{suffix}")(x)
    return x


def dense(x, units, *, weight_decay=0.0, use_bias=True, initializer="glorot_uniform", name):
    """Apply a fully connected layer (with bias by default) and the L2 kernel regulariser."""
    return layers.Dense(units, use_bias=use_bias, kernel_initializer=initializer,
                        kernel_regularizer=l2(weight_decay), name=name)(x)


@keras.saving.register_keras_serializable(package="convnet_runner")
class ZeroPadShortcut(layers.Layer):
    """ResNet option-A shortcut: subsample by ``strides`` and zero-pad the new channels.

    He et al. 2015 (arXiv:1512.03385) section 4.2 uses it on CIFAR so that every
    shortcut is parameter-free; subsampling takes the top-left pixel of each
    window, which lines up with a 'same'-padded strided 3x3 conv (output size
    ceil(H / stride) in both cases).
    """

    def __init__(self, filters, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, x):
        if self.strides > 1:
            x = x[:, ::self.strides, ::self.strides, :]
        extra = self.filters - x.shape[-1]
        if extra < 0:
            raise ValueError(
                f"{self.name}: cannot zero-pad {x.shape[-1]} channels down to {self.filters}")
        if extra:
            # Zeros go after the identity channels, as in fb.resnet.torch's option A.
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def compute_output_shape(self, input_shape):
        def sub(n):
            return None if n is None else -(-n // self.strides)
        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def shortcut(x, filters, strides, shortcut_type, *, preactivated=None, use_bias=False,
             weight_decay, name):
    """Return the shortcut of ``x``: identity, option 'A' (zero-padding) or 'B' (1x1 projection).

    Identity is used whenever the shape is unchanged, for both options, as in He
    et al. 2015.  In a pre-activation block (He et al. 2016, arXiv:1603.05027)
    pass the block's BN-ReLU output as ``preactivated``: a projection then
    reads it and has no BN of its own, as in the authors' code, while identity
    and zero-padding keep reading the raw ``x`` so the identity path stays clean.
    A post-activation projection is conv then BN.
    """
    if strides == 1 and x.shape[-1] == filters:
        return x
    if shortcut_type == "A":
        return ZeroPadShortcut(filters, strides, name=f"{name}_pad")(x)
    if shortcut_type == "B":
        source = x if preactivated is None else preactivated
        y = conv(source, filters, 1, strides=strides, use_bias=use_bias, weight_decay=weight_decay,
                 name=f"{name}_conv")
        if preactivated is None:
            y = batch_norm(y, name=f"{name}_bn")
        return y
    raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")


def squeeze_excite(x, *, reduction=16, weight_decay=0.0, name):
    """Rescale the channels of ``x`` by a squeeze-and-excitation gate (Hu et al. 2017)."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = dense(s, max(1, channels // reduction), weight_decay=weight_decay, name=f"{name}_reduce")
    s = layers.ReLU(name=f"{name}_relu")(s)
    s = dense(s, channels, weight_decay=weight_decay, name=f"{name}_expand")
    s = layers.Activation("sigmoid", name=f"{name}_gate")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def check_args(model_name, input_shape, num_classes, size_ops=(), fixed_size=False):
    """Return ``input_shape`` as a tuple, or raise ValueError for bad shapes, sizes or classes.

    ``size_ops`` lists the layers that shrink the feature map as
    ``(kernel, stride, total_padding, ceil_mode)``; the message names the
    smallest square input for which no feature map vanishes.
    """
    shape = tuple(input_shape)
    if (len(shape) != 3 or shape[-1] is None
            or any(d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral)
                                      or d < 1) for d in shape)):
        raise ValueError(
            f"{model_name}: input_shape must be (height, width, channels) of positive "
            f"integers, got {input_shape!r}")
    shape = tuple(None if d is None else int(d) for d in shape)
    if fixed_size and None in shape:
        raise ValueError(
            f"{model_name}: needs a fixed input size, got input_shape {input_shape!r}")
    if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1):
        raise ValueError(
            f"{model_name}: num_classes must be a positive integer, got {num_classes!r}")

    def survives(size):
        for kernel, stride, pad, ceil_mode in size_ops:
            span = size + pad - kernel
            if span < 0:
                return False
            size = (-(-span // stride) if ceil_mode else span // stride) + 1
        return True

    if not all(survives(d) for d in shape[:2] if d is not None):
        smallest = next(s for s in range(1, 100_000) if survives(s))
        raise ValueError(
            f"{model_name}: input shape {shape} is too small (a feature map would vanish); "
            f"the smallest input that works is ({smallest}, {smallest}, {shape[-1]})")
    return shape


def check_choice(model_name, arg, value, choices):
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"{model_name}: {arg} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_rate(model_name, arg, value):
    """Raise ValueError unless ``value`` is a dropout-style rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{model_name}: {arg} must be in [0, 1), got {value!r}")


def check_positive_int(model_name, arg, value):
    """Raise ValueError unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{model_name}: {arg} must be a positive integer, got {value!r}")


def classifier(x, num_classes, *, weight_decay, name="logits"):
    """Return logits from a feature map: global average pooling, then one dense layer."""
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return dense(x, num_classes, weight_decay=weight_decay, name=name)


def build_model(inputs, outputs, name):
    """Return ``keras.Model(inputs, outputs, name=name)``, recursing as deep as the graph.

    Keras walks a functional graph recursively, about one frame per layer, in
    ``Model()`` and again when a model is cloned or loaded, so a chain of a few
    thousand layers (ResNet-1001 has about 3,400) overflows Python's default
    limit of 1,000.  The limit is only ever raised, and left raised for those
    later walks; on Python 3.11+ Python-to-Python calls do not grow the C stack.
    Starting at 10,000 spares ResNet-1001 a failed first walk.
    """
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    while True:
        try:
            return keras.Model(inputs, outputs, name=name)
        except RecursionError:
            limit = sys.getrecursionlimit()
            if limit >= 200_000:
                raise
            sys.setrecursionlimit(limit * 4)
