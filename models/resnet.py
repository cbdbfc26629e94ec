"""Residual networks: CIFAR ResNets (original, pre-activation, wide, ResNeXt) and ResNet-50s.

Papers:
- He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", 2015,
  arXiv:1512.03385 (ResNet-20/32/44/56/110 on CIFAR, section 4.2; ResNet-50, Table 1).
- He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", 2016,
  arXiv:1603.05027 (pre-activation units; ResNet-164/1001).
- Zagoruyko, Komodakis, "Wide Residual Networks", 2016, arXiv:1605.07146.
- Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep
  Neural Networks", 2016, arXiv:1611.05431 (ResNeXt).
- Hu, Shen, Albanie, Sun, Wu, "Squeeze-and-Excitation Networks", 2017,
  arXiv:1709.01507.

All variants come from one builder, :func:`_resnet`, fed a list of stages. Each named
model is a row of ``SPECS`` whose ``build`` calls a family function (:func:`cifar_resnet`,
:func:`cifar_wide_resnet`, :func:`cifar_resnext` or the ImageNet stem); its metadata and
its function's defaults are its entry in :mod:`models.zoo`.
'original' blocks are He et al. 2015's (conv-BN-ReLU, addition, then ReLU);
'preactivated' blocks are He et al. 2016's (BN-ReLU-conv, bare addition, one
BN-ReLU after the last stage).

Parameter counts against the papers: He et al. (2015, 2016) and Xie et al.
count conv and dense weights only; the other figures (WRN, SE-ResNet-50, and
ResNet-50's 25.6M, which the paper does not state) count all trainable
weights.  This matters only where BN's gamma/beta cross a rounding boundary:
ResNet-1001 has 10,327,706 trainable parameters, 10.18M without BN (paper:
10.2M), and ResNeXt-29 16x64d has 68,155,210, 68.05M without BN (paper:
68.1M).  Both follow their authors' released code (KaimingHe/resnet-1k-layers,
facebookresearch/ResNeXt) layer for layer, without conv biases, so no change
of architecture explains the difference.

Choices the papers leave open:
- Convolutions have no bias (BN follows or precedes each one), as in the
  authors' Torch code; only the classifier has a bias.  Exception: ResNet-50 v2
  follows TF-slim's resnet_v2 / keras.applications.ResNet50V2 and biases the
  convs that write into the residual stream (stem, each unit's last 1x1, the
  projections), 19,008 parameters, which gives the commonly cited 25.6M
  (25,568,360, equal to Keras'); without them it would be 25.5M.
- Option A (the CIFAR default) zero-pads new channels after the subsampled
  identity; option B projects with a 1x1 conv only where the shape changes.
- Where a projection meets a pre-activation unit it reads the unit's BN-ReLU
  output and has no BN, as in resnet-1k-layers and Zagoruyko's WRN code; the
  identity and zero-padding shortcuts read the raw input, except in the first
  unit after the stem, which splits after its BN-ReLU (He et al. 2016, 4.1).
- Which conv of a downsampling bottleneck carries the stride follows each
  family's released code: the first 1x1 for ResNet-164/1001 (resnet-1k-layers),
  ResNet-50 v1 and SE-ResNet-50 (the released Caffe models); the 3x3 for
  ResNet-50 v2 (fb.resnet.torch preresnet.lua) and ResNeXt.  Counts are unaffected.
- ImageNet stems use 'same' padding (7x7/2 conv, 3x3/2 max-pool), giving the
  paper's 112/56 maps at 224 and working at any input size.  The v2 stem is a
  bare conv whose BN-ReLU is the first unit's (He et al. 2016, section 4.1).
- WRN places its dropout between the two 3x3 convs (Zagoruyko & Komodakis,
  section 2.4) and has (depth - 4) / 6 units per stage, as in their code.
- ResNeXt-29 follows facebookresearch/ResNeXt's CIFAR model: 64-filter 3x3
  stem, stage outputs 256/512/1024, grouped width cardinality x base_width x
  2^stage, projection shortcuts only where the shape changes, weight decay 5e-4.
- Weight decay: WRN and ResNeXt decay every trainable weight by default
  (``decay_all``), BN's and the classifier bias too, as their authors' Torch
  trainers do (``optim.sgd`` over ``model:getParameters()``); the He et al. and
  SE networks, trained in Caffe, decay conv and dense kernels only.
- PreAct ResNet-18 is mixup's CIFAR network (facebookresearch/mixup-cifar10
  models/resnet.py, after kuangliu/pytorch-cifar): a 3x3 conv-BN-ReLU stem of 64, four
  stages of two pre-activation basic units 64/128/256/512 wide, 1x1 projections where the
  shape changes, no BN-ReLU after the last stage, and weight decay 1e-4 on every weight
  (PyTorch SGD's weight_decay in their train.py): 11,171,274 trainable parameters,
  kuangliu's 11,171,146 and the stem's BN.
- Stochastic depth (Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic
  Depth", 2016, arXiv:1603.09382): every model takes ``drop_path_rate``, the drop
  probability of the last residual unit; unit l of L drops its branch with l / L of it
  (the paper's linear decay rule), per image, scaling kept branches by 1 / (1 - p) as
  timm's drop_path (the paper drops per mini-batch and rescales at test time instead).
- SE-ResNet-50's gate (two biased dense layers, reduction 16) rescales the
  residual branch before the addition (Hu et al., Fig. 3), adding 2.53M to
  ResNet-50's 25.56M.
"""

import dataclasses
import types

from keras import Input, layers

from . import layers as L
from .zoo import register_model, variants


_BLOCK_TYPES = ("original", "preactivated")
_SHORTCUT_TYPES = ("A", "B")


def _residual_block(x, convs, *, preact, shortcut_type, dropout, se_reduction, weight_decay,
                    residual_bias, first_unit, name, drop_path=0.0):
    """Apply one residual unit whose branch is ``convs`` of (kernel, filters, strides, groups).

    In a pre-activation net the first unit after the stem splits after its BN-ReLU, so its
    shortcut, identity or not, reads the activated stem (He et al. 2016, section 4.1: "we
    adopt the first activation right after conv1 and before splitting into two paths").
    """
    width = convs[-1][1]
    strides = 1
    r, pre = x, None
    for i, (kernel, filters, s, groups) in enumerate(convs, start=1):
        strides *= s
        last = i == len(convs)
        if preact:
            r = L.bn_relu(r, name=name, suffix=i)
            if i == 1:
                pre = r
        if last and dropout:
            r = layers.Dropout(dropout, name=f"{name}_dropout")(r)
        if preact:
            r = L.conv(r, filters, kernel, strides=s, groups=groups, weight_decay=weight_decay,
                       use_bias=residual_bias and last, name=f"{name}_conv{i}")
        else:
            r = L.conv_bn_relu(r, filters, kernel, strides=s, groups=groups, relu=not last,
                               weight_decay=weight_decay, name=name, suffix=i)
    if se_reduction:
        r = L.squeeze_excite(r, reduction=se_reduction, weight_decay=weight_decay,
                             name=f"{name}_se")
    if drop_path:
        # Stochastic depth: the whole branch dropped for an image with probability
        # drop_path, kept ones scaled by 1 / (1 - drop_path), as timm's drop_path.
        r = layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(r)
    sc = L.shortcut(pre if preact and first_unit else x, width, strides, shortcut_type,
                    preactivated=pre, use_bias=residual_bias,
                    weight_decay=weight_decay, name=f"{name}_shortcut")
    x = layers.Add(name=f"{name}_add")([r, sc])
    return x if preact else layers.ReLU(name=f"{name}_out")(x)


def _resnet(name, input_shape, num_classes, weight_decay, *, stages, stem, stem_width, preact,
            shortcut_type, bottleneck, groups=1, stride_in_3x3=True, dropout=0.0,
            se_reduction=0, residual_bias=False, decay_all=False, drop_path_rate=0.0,
            stem_activation=None, final_activation=None):
    """Build a ResNet from ``stages``, a list of (blocks, output width, inner width, stride).

    ``stem`` is 'cifar' (3x3 conv) or 'imagenet' (7x7/2 conv, 3x3/2 max-pool).
    Basic units are two 3x3 convs of the output width; bottleneck units are
    1x1 (inner), 3x3 (inner, ``groups``), 1x1 (output width).  With
    ``residual_bias`` the convs that write into the residual stream (stem,
    each unit's last conv, projections) of a pre-activation net get a bias.
    ``decay_all`` puts the weight decay on BN's weights and biases too (Torch codes).
    ``drop_path_rate`` is stochastic depth's drop probability of the last unit, unit l of L
    dropping with l / L of it (Huang et al. 2016's linear decay rule, p_L = 1 - rate).
    ``stem_activation`` and ``final_activation`` put a BN-ReLU after the stem and after the
    last stage; by default the first in original nets, the second in pre-activation ones.
    """
    input_shape = L.check_args(name, input_shape, num_classes)
    L.check_choice(name, "shortcut_type", shortcut_type, _SHORTCUT_TYPES)
    L.check_rate(name, "dropout", dropout)
    L.check_rate(name, "drop_path_rate", drop_path_rate)
    stem_activation = not preact if stem_activation is None else stem_activation
    final_activation = preact if final_activation is None else final_activation
    inputs = Input(shape=input_shape, name="input")
    kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
    x = L.conv(inputs, stem_width, kernel, strides=stride, use_bias=residual_bias,
               weight_decay=weight_decay, name="stem_conv")
    if stem_activation:
        x = L.bn_relu(x, name="stem")
    if stem == "imagenet":
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)

    units, unit = sum(stage[0] for stage in stages), 0
    for s, (n_blocks, width, inner, stage_stride) in enumerate(stages, start=1):
        for b in range(1, n_blocks + 1):
            unit += 1
            stride = stage_stride if b == 1 else 1
            if bottleneck:
                s1, s3 = (1, stride) if stride_in_3x3 else (stride, 1)
                convs = [(1, inner, s1, 1), (3, inner, s3, groups), (1, width, 1, 1)]
            else:
                convs = [(3, width, stride, 1), (3, width, 1, 1)]
            x = _residual_block(x, convs, preact=preact, shortcut_type=shortcut_type,
                                dropout=dropout, se_reduction=se_reduction,
                                weight_decay=weight_decay, residual_bias=residual_bias,
                                first_unit=s == 1 and b == 1 and not stem_activation,
                                name=f"stage{s}_block{b}", drop_path=drop_path_rate * unit / units)
    if final_activation:
        x = L.bn_relu(x, name="final")
    model = L.build_model(inputs, L.classifier(x, num_classes, weight_decay=weight_decay), name)
    return L.decay_every_weight(model, weight_decay) if decay_all else model


def _blocks_per_stage(name, depth, layers_per_block, extra, rule):
    """Return n for a 3-stage CIFAR net whose depth is 3 * layers_per_block * n + extra."""
    step = 3 * layers_per_block
    if (isinstance(depth, bool) or not isinstance(depth, int) or depth < step + extra
            or (depth - extra) % step):
        raise ValueError(f"{name}: depth must be {rule} (n >= 1), got {depth!r}")
    return (depth - extra) // step


@register_model
def cifar_resnet(depth, block_type="original", shortcut_type="A", bottleneck=False,
                 input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, name=None,
                 drop_path_rate=0.0):
    """CIFAR ResNet of any depth: 6n+2 with basic units, 9n+2 with bottleneck units."""
    name = name or "cifar_resnet"
    L.check_choice(name, "block_type", block_type, _BLOCK_TYPES)
    if bottleneck:
        n = _blocks_per_stage(name, depth, 3, 2, "9n+2 for bottleneck blocks")
        # resnet-1k-layers: 16-filter stem, bottleneck outputs 64/128/256 (4x inner).
        stages = [(n, 64, 16, 1), (n, 128, 32, 2), (n, 256, 64, 2)]
    else:
        n = _blocks_per_stage(name, depth, 2, 2, "6n+2 for basic blocks")
        stages = [(n, 16, None, 1), (n, 32, None, 2), (n, 64, None, 2)]
    return _resnet(name, input_shape, num_classes, weight_decay, stages=stages, stem="cifar",
                   stem_width=16, preact=block_type == "preactivated",
                   shortcut_type=shortcut_type, bottleneck=bottleneck, stride_in_3x3=False,
                   drop_path_rate=drop_path_rate)


@register_model
def cifar_wide_resnet(depth, width, dropout=0.0, input_shape=(32, 32, 3), num_classes=10,
                      weight_decay=5e-4, name=None, decay_all=True, drop_path_rate=0.0):
    """Wide ResNet WRN-depth-width: pre-activation basic units 16k/32k/64k wide, depth 6n+4."""
    name = name or "cifar_wide_resnet"
    n = _blocks_per_stage(name, depth, 2, 4, "6n+4")
    L.check_positive_int(name, "width", width)
    stages = [(n, 16 * width, None, 1), (n, 32 * width, None, 2), (n, 64 * width, None, 2)]
    return _resnet(name, input_shape, num_classes, weight_decay, stages=stages, stem="cifar",
                   stem_width=16, preact=True, shortcut_type="B", bottleneck=False,
                   dropout=dropout, decay_all=decay_all, drop_path_rate=drop_path_rate)


@register_model
def cifar_preact_resnet18(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4,
                          decay_all=True, drop_path_rate=0.0):
    """PreAct ResNet-18 of mixup's CIFAR code (Zhang et al. 2018, 11.2M)."""
    stages = [(2, 64 * 2 ** i, None, 1 if i == 0 else 2) for i in range(4)]
    return _resnet("cifar_preact_resnet18", input_shape, num_classes, weight_decay, stages=stages,
                   stem="cifar", stem_width=64, preact=True, shortcut_type="B", bottleneck=False,
                   decay_all=decay_all, drop_path_rate=drop_path_rate, stem_activation=True,
                   final_activation=False)


@register_model
def cifar_resnext(depth, cardinality, base_width, input_shape=(32, 32, 3), num_classes=10,
                  weight_decay=5e-4, name=None, decay_all=True, drop_path_rate=0.0):
    """CIFAR ResNeXt-depth (cardinality x base_width d): grouped bottleneck units, depth 9n+2."""
    name = name or "cifar_resnext"
    n = _blocks_per_stage(name, depth, 3, 2, "9n+2")
    L.check_positive_int(name, "cardinality", cardinality)
    L.check_positive_int(name, "base_width", base_width)
    stages = [(n, 256 * 2 ** i, cardinality * base_width * 2 ** i, 1 if i == 0 else 2)
              for i in range(3)]
    return _resnet(name, input_shape, num_classes, weight_decay, stages=stages, stem="cifar",
                   stem_width=64, preact=False, shortcut_type="B", bottleneck=True,
                   groups=cardinality, stride_in_3x3=True, decay_all=decay_all,
                   drop_path_rate=drop_path_rate)


def _imagenet_resnet(name, input_shape, num_classes, weight_decay, units, preact, se_reduction,
                     drop_path_rate):
    """An ImageNet bottleneck ResNet: 64-filter 7x7/2 stem, ``units`` per stage 256 to 2048 wide."""
    stages = [(n, 256 * 2 ** i, 64 * 2 ** i, 1 if i == 0 else 2) for i, n in enumerate(units)]
    return _resnet(name, input_shape, num_classes, weight_decay, stages=stages, stem="imagenet",
                   stem_width=64, preact=preact, shortcut_type="B", bottleneck=True,
                   stride_in_3x3=preact, se_reduction=se_reduction, residual_bias=preact,
                   drop_path_rate=drop_path_rate)


@dataclasses.dataclass(frozen=True)
class CifarResNetSpec:
    """A CIFAR ResNet of He et al.: depth 6n+2 (basic units) or 9n+2 (bottleneck units)."""
    depth: int
    bottleneck: bool = False

    def build(self, name, input_shape, num_classes, weight_decay, block_type, shortcut_type,
              drop_path_rate):
        return cifar_resnet(self.depth, block_type, shortcut_type, self.bottleneck, input_shape,
                            num_classes, weight_decay, name=name, drop_path_rate=drop_path_rate)


@dataclasses.dataclass(frozen=True)
class WideResNetSpec:
    """WRN-depth-width (Zagoruyko & Komodakis 2016)."""
    depth: int
    width: int

    def build(self, name, input_shape, num_classes, weight_decay, dropout, decay_all, drop_path_rate):
        return cifar_wide_resnet(self.depth, self.width, dropout, input_shape, num_classes,
                                 weight_decay, name=name, decay_all=decay_all,
                                 drop_path_rate=drop_path_rate)


@dataclasses.dataclass(frozen=True)
class ResNeXtSpec:
    """ResNeXt-depth (cardinality x base_width d) for CIFAR (Xie et al. 2016)."""
    depth: int
    cardinality: int
    base_width: int

    def build(self, name, input_shape, num_classes, weight_decay, decay_all, drop_path_rate):
        return cifar_resnext(self.depth, self.cardinality, self.base_width, input_shape,
                             num_classes, weight_decay, name=name, decay_all=decay_all,
                             drop_path_rate=drop_path_rate)


@dataclasses.dataclass(frozen=True)
class ImageNetResNetSpec:
    """One ImageNet bottleneck ResNet (64-filter 7x7/2 stem, stages 256 to 2048 wide)."""
    units: tuple              # bottleneck units per stage (He et al. 2015, Table 1)
    preact: bool = False      # pre-activation units (He et al. 2016)
    se_reduction: int = 0     # squeeze-excitation gate's reduction (Hu et al. 2017); 0: none

    def build(self, name, input_shape, num_classes, weight_decay, drop_path_rate):
        return _imagenet_resnet(name, input_shape, num_classes, weight_decay, self.units,
                                self.preact, self.se_reduction, drop_path_rate)


# ResNet-50's units; Table 1 gives (3, 4, 23, 3) for ResNet-101 and (3, 8, 36, 3) for 152.
_RESNET50 = (3, 4, 6, 3)
SPECS = types.MappingProxyType({
    "cifar_resnet20": CifarResNetSpec(20),
    "cifar_resnet32": CifarResNetSpec(32),
    "cifar_resnet44": CifarResNetSpec(44),
    "cifar_resnet56": CifarResNetSpec(56),
    "cifar_resnet110": CifarResNetSpec(110),
    "cifar_resnet164": CifarResNetSpec(164, bottleneck=True),
    "cifar_resnet1001": CifarResNetSpec(1001, bottleneck=True),
    "cifar_WRN_16_4": WideResNetSpec(16, 4),
    "cifar_WRN_16_8": WideResNetSpec(16, 8),
    "cifar_WRN_28_10": WideResNetSpec(28, 10),
    "cifar_WRN_40_4": WideResNetSpec(40, 4),
    "cifar_resnext29_8x64d": ResNeXtSpec(29, 8, 64),
    "cifar_resnext29_16x64d": ResNeXtSpec(29, 16, 64),
    "resnet50": ImageNetResNetSpec(_RESNET50),
    "resnet50_v2": ImageNetResNetSpec(_RESNET50, preact=True),
    "se_resnet50": ImageNetResNetSpec(_RESNET50, se_reduction=16),
})
# cifar_resnet20 ... se_resnet50: their functions, as this module's names.
globals().update(variants(SPECS))
