"""Model zoo: functions that build image-classification ConvNets as logits-out ``keras.Model``s.

Every model function takes ``input_shape``, ``num_classes`` and ``weight_decay``
(the papers' SGD coefficient, see :mod:`models.layers`) plus family-specific
keywords, and names its model after itself.  One module per family.

:mod:`models.zoo` is the registry (timm's ``@register_model`` and ``default_cfgs``): each
model's native input size, default weight decay, parameter count, paper, paper error and
this project's results, once; the runner and the README's table read it. A family's named
variants are the rows of its read-only ``SPECS`` table (frozen dataclasses, as Model
Garden's ``RESNET_SPECS``), whose functions :func:`models.zoo.variants` makes with the
defaults of their cfg; families sized by numbers (CIFAR ResNets, WRN, ResNeXt, DenseNet)
also keep a family function that takes them as arguments. Layers come from
:mod:`models.layers`.

``models.cifar_resnet20`` and ``from models import cifar_resnet20`` import only the family
that holds the model (Keras with it); ``models.zoo`` imports neither Keras nor TensorFlow.
"""

from .zoo import default_cfgs, model_function

__all__ = sorted(default_cfgs)


def __getattr__(name):
    """A model function by name (PEP 562), its family module imported on first use."""
    if name in default_cfgs:
        return model_function(name)
    raise AttributeError(f"module 'models' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(__all__))
