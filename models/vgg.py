"""VGG networks for CIFAR-size images.

Papers:
- Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", 2014, arXiv:1409.1556 (configurations A, B, D, E = VGG-11/13/16/19;
  weight decay 5e-4).
- Ioffe, Szegedy, "Batch Normalization: Accelerating Deep Network Training by
  Reducing Internal Covariate Shift", 2015, arXiv:1502.03167.
- Zagoruyko, "92.45% on CIFAR-10 in Torch", 2015, torch.ch blog, code
  szagoruyko/cifar.torch ``models/vgg_bn_drop.lua`` (VGG-16 layout with BN and
  dropout; weight decay 5e-4), itself after Simonyan & Zisserman.

Choices the papers leave open:
- ``cifar_vgg11/13/16/19`` keep the paper's conv stacks with BN after every conv
  and replace the three 4096-wide FC layers (sized for 224x224 inputs) by global
  average pooling and one dense layer, so the counts are the conv stacks' plus
  BN and a 512 x classes classifier: 9.2M / 9.4M / 14.7M / 20.0M.
- Convolutions feeding a BN have no bias (BN's beta plays that role); cifar.torch
  keeps the redundant biases, which would add 4,224 parameters to ``cifar_vgg_bn``.
- ``cifar_vgg_bn`` flattens its 1x1x512 map with global average pooling, which is
  what cifar.torch's ``View(512)`` does at 32x32 and keeps the head 512-wide at
  other input sizes.
- Max-pooling uses 'same' padding, i.e. cifar.torch's ceil mode, so odd sizes
  never lose a border row.
"""

import dataclasses
import types
from typing import Optional

from keras import Input, layers

from . import layers as L
from .zoo import variants


@dataclasses.dataclass(frozen=True)
class VGGSpec:
    """One VGG variant. ``conv_dropout`` gives one rate per stage, applied after every
    conv of the stage except the last (cifar.torch's pattern); ``hidden_units`` > 0
    inserts dropout, Dense, BN, ReLU before the final dropout and classifier."""
    stage_depths: tuple          # convolutions per stage; the stages are 64/128/256/512/512 wide
    conv_dropout: Optional[tuple] = None
    bn_epsilon: float = 1e-5
    hidden_units: int = 0
    head_dropout: float = 0.0

    def build(self, name, input_shape, num_classes, weight_decay):
        return _vgg(name, self, input_shape, num_classes, weight_decay)


# Stage depths of configurations A, B, D, E (Simonyan & Zisserman, Table 1).
_VGG16 = (2, 2, 3, 3, 3)
SPECS = types.MappingProxyType({
    "cifar_vgg11": VGGSpec((1, 1, 2, 2, 2)),
    "cifar_vgg13": VGGSpec((2, 2, 2, 2, 2)),
    "cifar_vgg16": VGGSpec(_VGG16),
    "cifar_vgg19": VGGSpec((2, 2, 4, 4, 4)),
    "cifar_vgg_bn": VGGSpec(_VGG16, conv_dropout=(0.3, 0.4, 0.4, 0.4, 0.4), bn_epsilon=1e-3,
                            hidden_units=512, head_dropout=0.5),
})


def _vgg(name, spec, input_shape, num_classes, weight_decay):
    """Build the VGG of ``spec``: conv-BN-ReLU stages and max-pooling, global pooling, a
    linear or MLP head."""
    input_shape = L.check_args(name, input_shape, num_classes)
    inputs = Input(shape=input_shape, name="input")
    x = inputs
    for s, n_convs in enumerate(spec.stage_depths, start=1):
        width = min(64 * 2 ** (s - 1), 512)
        for c in range(1, n_convs + 1):
            x = L.conv_bn_relu(x, width, 3, weight_decay=weight_decay, bn_epsilon=spec.bn_epsilon,
                               name=f"stage{s}", suffix=c)
            if spec.conv_dropout and c < n_convs:
                x = layers.Dropout(spec.conv_dropout[s - 1], name=f"stage{s}_dropout{c}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"stage{s}_pool")(x)
    if not spec.hidden_units:
        return L.build_model(inputs, L.classifier(x, num_classes, weight_decay=weight_decay), name)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(spec.head_dropout, name="fc1_dropout")(x)
    x = L.dense(x, spec.hidden_units, weight_decay=weight_decay, name="fc1")
    x = L.bn_relu(x, name="fc1")
    x = layers.Dropout(spec.head_dropout, name="fc2_dropout")(x)
    x = L.dense(x, num_classes, weight_decay=weight_decay, name="logits")
    return L.build_model(inputs, x, name)


# cifar_vgg11 ... cifar_vgg_bn: their functions, as this module's names.
globals().update(variants(SPECS))
