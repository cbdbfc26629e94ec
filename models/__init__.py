"""Model zoo: functions that build image-classification ConvNets as logits-out ``keras.Model``s.

Every model function takes ``input_shape``, ``num_classes`` and ``weight_decay``
(the papers' SGD coefficient, see :mod:`models.layers`) plus family-specific
keywords, and names its model after itself.  One module per family; the
runner finds the functions by scanning the modules (``runner.registry``).

A family's fixed variants are the rows of its read-only ``SPECS`` table, keyed by model
name, each a frozen dataclass of the family (``VGGSpec``, ``NiNSpec``, ``AlexNetSpec``,
``ImageNetResNetSpec``, ``FastSpec``), as Model Garden's ``RESNET_SPECS`` and timm's model
configs; a variant's function stays a thin wrapper that names its row and keeps its own
defaults (recorded in run directories' config.yaml). Families sized by numbers (CIFAR
ResNets, WRN, ResNeXt, DenseNet) take them as arguments of a family function instead.
Layers come from :mod:`models.layers`.
"""

from .alexnet import alexnet, alexnet_bn, zfnet_bn
from .densenet import (densenet, densenet40_k12, densenet_bc100_k12, densenet_bc190_k40,
                       densenet_bc250_k24)
from .fast import cifar_airbench94, cifar_resnet9
from .nin import nin_bn
from .resnet import (cifar_preact_resnet18,
                     cifar_resnet, cifar_resnet20, cifar_resnet32, cifar_resnet44,
                     cifar_resnet56, cifar_resnet110, cifar_resnet164, cifar_resnet1001,
                     cifar_resnext, cifar_resnext29_8x64d, cifar_resnext29_16x64d,
                     cifar_wide_resnet, cifar_WRN_16_4, cifar_WRN_16_8, cifar_WRN_28_10,
                     cifar_WRN_40_4, resnet50, resnet50_v2, se_resnet50)
from .vgg import cifar_vgg11, cifar_vgg13, cifar_vgg16, cifar_vgg19, cifar_vgg_bn

__all__ = [
    "alexnet", "alexnet_bn", "zfnet_bn",
    "densenet", "densenet40_k12", "densenet_bc100_k12", "densenet_bc190_k40",
    "densenet_bc250_k24",
    "cifar_airbench94", "cifar_resnet9",
    "nin_bn",
    "cifar_preact_resnet18",
    "cifar_resnet", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
    "cifar_resnet110", "cifar_resnet164", "cifar_resnet1001",
    "cifar_resnext", "cifar_resnext29_8x64d", "cifar_resnext29_16x64d",
    "cifar_wide_resnet", "cifar_WRN_16_4", "cifar_WRN_16_8", "cifar_WRN_28_10", "cifar_WRN_40_4",
    "resnet50", "resnet50_v2", "se_resnet50",
    "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19", "cifar_vgg_bn",
]
