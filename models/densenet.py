"""Densely connected networks (DenseNet and DenseNet-BC) for CIFAR-size images.

Paper: Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional
Networks", 2016 (CVPR 2017), arXiv:1608.06993; reference code liuzhuang13/DenseNet.

Three dense blocks of equal length on 32x32, 16x16 and 8x8 maps.  A layer is
BN-ReLU-conv3x3(k); with ``bottleneck`` (DenseNet-B) it is
BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k).  Transitions are BN-ReLU-conv1x1 to
floor(compression x channels) maps, then 2x2 average pooling.  The head is
BN-ReLU, global average pooling and one dense layer.  Depth counts the convs
plus the stem, the two transitions and the classifier, so a block holds
(depth - 4) / 3 layers, or (depth - 4) / 6 with bottlenecks.

Choices the paper leaves open:
- The stem has 16 filters, or 2 x growth_rate for DenseNet-BC (bottleneck and
  compression < 1), as the paper's text says; the released Torch code always
  uses 2k, which would give DenseNet-40 (k=12) 1,059,298 parameters instead of
  1,019,722 (both 1.0M in the paper's rounding).  Counts: DenseNet-40 (k=12)
  1.0M, BC-100 (k=12) 0.8M, BC-250 (k=24) 15.3M, BC-190 (k=40) 25.6M.
- Convolutions have no bias (a BN follows each one's output in the next layer).
- ``dropout`` (0.2 in the paper, only for runs without data augmentation)
  follows every conv except the stem, as in the paper; it defaults to 0.
- Weight decay on every trainable weight, BN's and the classifier bias too
  (``decay_all``, on by default), as the released Torch code's trainer does
  (``optim.sgd`` over ``model:getParameters()``).
"""

import dataclasses
import types

from keras import Input, layers

from . import layers as L
from .zoo import register_model, variants


@register_model
def densenet(depth, growth_rate, bottleneck=False, compression=1.0, dropout=0.0,
             input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, name=None,
             decay_all=True):
    """DenseNet of ``depth``, ``growth_rate``; ``bottleneck`` and ``compression`` < 1 make it BC."""
    name = name or "densenet"
    per_block = 6 if bottleneck else 3
    if (isinstance(depth, bool) or not isinstance(depth, int) or depth < 4 + per_block
            or (depth - 4) % per_block):
        raise ValueError(
            f"{name}: depth must be {per_block}n+4 (n >= 1)"
            f"{' with bottleneck layers' if bottleneck else ''}, got {depth!r}")
    L.check_positive_int(name, "growth_rate", growth_rate)
    if isinstance(compression, bool) or not isinstance(compression, (int, float)) \
            or not 0.0 < compression <= 1.0:
        raise ValueError(f"{name}: compression must be in (0, 1], got {compression!r}")
    L.check_rate(name, "dropout", dropout)
    # Two 2x2/2 average poolings (floor, as Torch's) must leave at least one pixel.
    input_shape = L.check_args(name, input_shape, num_classes, size_ops=[(2, 2, 0, False)] * 2)
    n_layers = (depth - 4) // per_block

    def bn_relu_conv(x, filters, kernel, label, suffix=""):
        x = L.bn_relu(x, name=label, suffix=suffix)
        x = L.conv(x, filters, kernel, weight_decay=weight_decay, name=f"{label}_conv{suffix}")
        if dropout:
            x = layers.Dropout(dropout, name=f"{label}_dropout{suffix}")(x)
        return x

    inputs = Input(shape=input_shape, name="input")
    stem_width = 2 * growth_rate if bottleneck and compression < 1 else 16
    x = L.conv(inputs, stem_width, 3, weight_decay=weight_decay, name="stem_conv")
    for b in range(1, 4):
        for i in range(1, n_layers + 1):
            label = f"block{b}_layer{i}"
            if bottleneck:
                y = bn_relu_conv(x, 4 * growth_rate, 1, label, suffix=1)
                y = bn_relu_conv(y, growth_rate, 3, label, suffix=2)
            else:
                y = bn_relu_conv(x, growth_rate, 3, label)
            x = layers.Concatenate(name=f"{label}_concat")([x, y])
        if b < 3:
            label = f"transition{b}"
            x = bn_relu_conv(x, int(compression * x.shape[-1]), 1, label)
            x = layers.AveragePooling2D(2, name=f"{label}_pool")(x)
    x = L.bn_relu(x, name="final")
    model = L.build_model(inputs, L.classifier(x, num_classes, weight_decay=weight_decay), name)
    return L.decay_every_weight(model, weight_decay) if decay_all else model


@dataclasses.dataclass(frozen=True)
class DenseNetSpec:
    """One DenseNet of the paper's Table 2."""
    depth: int
    growth_rate: int
    bottleneck: bool = False    # DenseNet-B; with compression < 1, DenseNet-BC
    compression: float = 1.0

    def build(self, name, input_shape, num_classes, weight_decay, dropout, decay_all):
        return densenet(self.depth, self.growth_rate, self.bottleneck, self.compression, dropout,
                        input_shape, num_classes, weight_decay, name=name, decay_all=decay_all)


SPECS = types.MappingProxyType({
    "densenet40_k12": DenseNetSpec(40, 12),
    "densenet_bc100_k12": DenseNetSpec(100, 12, bottleneck=True, compression=0.5),
    "densenet_bc250_k24": DenseNetSpec(250, 24, bottleneck=True, compression=0.5),
    "densenet_bc190_k40": DenseNetSpec(190, 40, bottleneck=True, compression=0.5),
})
# densenet40_k12 ... densenet_bc190_k40: their functions, as this module's names.
globals().update(variants(SPECS))
