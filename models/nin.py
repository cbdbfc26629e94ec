"""Network in Network with batch normalisation, for CIFAR-size images.

Papers:
- Lin, Chen, Yan, "Network In Network", 2013, arXiv:1312.4400.
- Ioffe, Szegedy, "Batch Normalization", 2015, arXiv:1502.03167.
- Zagoruyko's cifar.torch ``models/nin.lua`` (NiN-BN, 92% on CIFAR-10, trained
  with weight decay 5e-4), whose layout this follows.

Three mlpconv blocks (a 5x5/5x5/3x3 conv followed by two 1x1 convs, all
conv-BN-ReLU), 3x3/2 max- then average-pooling with dropout 0.5 between blocks;
the last 1x1 conv has one map per class and global average pooling turns those
maps into the logits.

Choices the paper leaves open:
- As in NiN and cifar.torch, the class maps pass through BN and ReLU before the
  global average pooling, so the logits are non-negative; this keeps the
  published architecture rather than adding a linear layer.
- Convolutions have no bias (BN follows each); cifar.torch keeps them, which
  would add 1,418 parameters.  BN uses cifar.torch's epsilon 1e-3.
- Pooling uses 'same' padding, cifar.torch's ceil mode (32 -> 16 -> 8).
"""

import dataclasses
import types

from keras import Input, layers

from . import layers as L
from .zoo import variants


@dataclasses.dataclass(frozen=True)
class NiNSpec:
    """One NiN variant."""
    blocks: tuple        # per mlpconv block, its convs' (kernel, filters); 0 filters = one per class
    bn_epsilon: float

    def build(self, name, input_shape, num_classes, weight_decay, dropout):
        return _nin(name, self, input_shape, num_classes, weight_decay, dropout)


SPECS = types.MappingProxyType({
    "nin_bn": NiNSpec(blocks=(((5, 192), (1, 160), (1, 96)),
                              ((5, 192), (1, 192), (1, 192)),
                              ((3, 192), (1, 192), (1, 0))),
                      bn_epsilon=1e-3),
})


def _nin(name, spec, input_shape, num_classes, weight_decay, dropout):
    """Build the NiN of ``spec``: mlpconv blocks between pooling and dropout; class maps
    averaged to logits."""
    blocks, bn_epsilon = spec.blocks, spec.bn_epsilon
    input_shape = L.check_args(name, input_shape, num_classes)
    L.check_rate(name, "dropout", dropout)
    inputs = Input(shape=input_shape, name="input")
    x = inputs
    for b, block in enumerate(blocks, start=1):
        for c, (kernel, filters) in enumerate(block, start=1):
            x = L.conv_bn_relu(x, filters or int(num_classes), kernel, weight_decay=weight_decay,
                               bn_epsilon=bn_epsilon, name=f"block{b}", suffix=c)
        if b < len(blocks):
            pool = layers.MaxPooling2D if b == 1 else layers.AveragePooling2D
            x = pool(3, strides=2, padding="same", name=f"block{b}_pool")(x)
            x = layers.Dropout(dropout, name=f"block{b}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="logits")(x)
    return L.build_model(inputs, x, name)


# nin_bn: its function, as this module's name.
globals().update(variants(SPECS))
