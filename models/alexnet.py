"""AlexNet and ZFNet for ImageNet-size images.

Papers:
- Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
  Convolutional Neural Networks", NIPS 2012 (no arXiv id; weight decay 5e-4,
  local response normalisation k=2, n=5, alpha=1e-4, beta=0.75).
- Zeiler, Fergus, "Visualizing and Understanding Convolutional Networks", 2013,
  arXiv:1311.2901 (7x7/2 first conv, 5x5/2 second conv, dense connections).
- Ioffe, Szegedy, "Batch Normalization", 2015, arXiv:1502.03167.

Five convolutions, three 3x3/2 max-poolings, then two 4096-wide dense layers
with dropout 0.5 and the classifier.

Choices the papers leave open:
- ``alexnet`` keeps the paper's two-GPU connectivity as grouped convolutions
  (groups=2 in conv2, conv4, conv5), which gives 60,965,224 parameters, the
  paper's "60 million"; the one-GPU variant (torchvision) has 61.1M and a
  fully connected conv2/4/5 62.4M.  ``alexnet_bn`` keeps the same groups so the
  two differ only in normalisation.
- The paper's 224x224 input only yields its 55x55 conv1 map with 2 pixels of
  padding (as in torchvision; 227x227 without padding is the other reading);
  with floor-mode pooling both 224 and 227 end in the paper's 6x6x256 map.
  ZFNet's 110/55/26/13/6 maps (its Fig. 3) need 1 pixel of conv1 padding and
  ceil-mode pooling (Caffe's), so ZFNet pools in ceil mode.
- ``alexnet_bn`` and ``zfnet_bn`` put BN between every conv and its ReLU in
  place of LRN / ZFNet's contrast normalisation, drop the now redundant conv
  biases, and keep the dense layers as in the papers.
- Convs use He et al.'s init rather than the paper's N(0, 0.01), which does not
  train without careful per-layer bias tuning.
- The flattened feature map sets the first dense layer's size, so the count is
  the paper's only at 224x224 (or 227x227); smaller inputs work down to the
  size named in the ValueError.
"""

import dataclasses
import types

import tensorflow as tf
import keras
from keras import Input, layers

from . import layers as L
from .zoo import variants

@dataclasses.dataclass(frozen=True)
class AlexNetSpec:
    """One AlexNet-style variant."""
    convs: tuple         # per conv: (filters, kernel, stride, padding, groups, 3x3/2 max-pool after)
    ceil_pool: bool      # whether those poolings round up (ceil mode)
    norm: str            # 'lrn' (after conv1 and conv2) or 'bn' (after every conv)

    def build(self, name, input_shape, num_classes, weight_decay):
        return _alexnet(name, self, input_shape, num_classes, weight_decay)


_ALEXNET_CONVS = ((96, 11, 4, 2, 1, True), (256, 5, 1, 2, 2, True), (384, 3, 1, 1, 1, False),
                  (384, 3, 1, 1, 2, False), (256, 3, 1, 1, 2, True))
_ZFNET_CONVS = ((96, 7, 2, 1, 1, True), (256, 5, 2, 0, 1, True), (384, 3, 1, 1, 1, False),
                (384, 3, 1, 1, 1, False), (256, 3, 1, 1, 1, True))
SPECS = types.MappingProxyType({
    "alexnet": AlexNetSpec(_ALEXNET_CONVS, ceil_pool=False, norm="lrn"),
    "alexnet_bn": AlexNetSpec(_ALEXNET_CONVS, ceil_pool=False, norm="bn"),
    "zfnet_bn": AlexNetSpec(_ZFNET_CONVS, ceil_pool=True, norm="bn"),
})


@keras.saving.register_keras_serializable(package="convnet_runner")
class LocalResponseNormalization(layers.Layer):
    """Krizhevsky et al.'s LRN across channels: x / (k + alpha * sum of x^2 over n maps)^beta."""

    def __init__(self, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def call(self, x):
        # tf's alpha multiplies the plain sum, as in the paper (Caffe divides it by n).
        return tf.nn.local_response_normalization(
            x, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


def _max_pool(x, ceil_mode, name):
    """3x3/2 max-pooling; in ceil mode zero padding completes the last window (inputs are >= 0)."""
    pads = [(-(-(n - 3) // 2)) * 2 + 3 - n if ceil_mode else 0 for n in x.shape[1:3]]
    if any(pads):
        x = layers.ZeroPadding2D(((0, pads[0]), (0, pads[1])), name=f"{name}_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=name)(x)


def _alexnet(name, spec, input_shape, num_classes, weight_decay, dropout=0.5, hidden_units=4096):
    """Build the AlexNet-style net of ``spec``."""
    convs, ceil_pool, norm = spec.convs, spec.ceil_pool, spec.norm
    size_ops = []
    for _, kernel, stride, pad, _, pool in convs:
        size_ops.append((kernel, stride, 2 * pad, False))
        if pool:
            size_ops.append((3, 2, 0, ceil_pool))
    input_shape = L.check_args(name, input_shape, num_classes, size_ops=size_ops,
                               fixed_size=True)
    inputs = Input(shape=input_shape, name="input")
    x = inputs
    for i, (filters, kernel, stride, pad, groups, pool) in enumerate(convs, start=1):
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"conv{i}_pad")(x)
        x = L.conv(x, filters, kernel, strides=stride, padding="valid", groups=groups,
                   use_bias=norm != "bn", weight_decay=weight_decay, name=f"conv{i}")
        if norm == "bn":
            x = L.batch_norm(x, name=f"conv{i}_bn")
        x = layers.ReLU(name=f"conv{i}_relu")(x)
        if norm == "lrn" and i <= 2:
            x = LocalResponseNormalization(name=f"conv{i}_lrn")(x)
        if pool:
            x = _max_pool(x, ceil_pool, name=f"conv{i}_pool")
    x = layers.Flatten(name="flatten")(x)
    for j in (6, 7):
        x = L.dense(x, hidden_units, weight_decay=weight_decay, name=f"fc{j}")
        x = layers.ReLU(name=f"fc{j}_relu")(x)
        x = layers.Dropout(dropout, name=f"fc{j}_dropout")(x)
    x = L.dense(x, num_classes, weight_decay=weight_decay, name="logits")
    return L.build_model(inputs, x, name)


# alexnet, alexnet_bn, zfnet_bn: their functions, as this module's names.
globals().update(variants(SPECS))
