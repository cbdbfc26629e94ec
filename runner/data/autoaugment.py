"""AutoAugment and RandAugment on a batch: per-image operations chosen and parameterised
from a stateless seed, so a batch is a function of (run seed, batch number).

Papers:
- Cubuk, Zoph, Mane, Vasudevan, Le, "AutoAugment: Learning Augmentation Strategies from
  Data", CVPR 2019, arXiv:1805.09501: the operations and their ranges, the CIFAR-10
  policy (25 sub-policies) and the ImageNet policy, from the tables of its appendix.
- Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data augmentation with a
  reduced search space", NeurIPS 2020, arXiv:1909.13719: N operations drawn uniformly from
  14, each at the one magnitude M.

Keras 3 has a RandAugment layer, but it draws its operations once per batch (every image
of a batch gets the same ones), samples the magnitude uniformly in [0, factor] instead of
using M, has 11 of the paper's 14 operations, and takes its randomness from a stateful
SeedGenerator that no per-batch seed can set: a resumed run would not see the same
images. The operations are therefore written here, each a few lines on the images in pixel
units [0, 255]; AutoContrast and Equalize, which draw nothing, are Keras' layers.

Magnitudes are levels on AutoAugment's scale: level / 10 of each operation's largest
change (the authors' augmentation_transforms.py, PARAMETER_MAX = 10); a signed operation
(rotate, shear, translate, and the enhancements' factor 1 +- m) takes either sign with
probability 1/2. The geometric operations fill uncovered pixels with grey (128), as
tensorflow/models' and timm's implementations do, and sample the nearest pixel, as PIL's
default in the authors' code.
"""
import functools
import math

import keras
import tensorflow as tf

OPS = ('Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color', 'Posterize',
       'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY',
       'Invert')
# RandAugment's 14 (Cubuk et al. 2020, section 3): all but Invert.
RANDAUGMENT_OPS = OPS[:14]
MAX_LEVEL = 10.0
FILL = 128.0                  # grey, for pixels a geometric operation uncovers
MAX_ROTATE_DEGREES = 30.0     # AutoAugment's appendix: [-30, 30] degrees
MAX_SHEAR = 0.3               # [-0.3, 0.3]
MAX_TRANSLATE = 10 / 32       # the authors' CIFAR code: 10 pixels of 32 (ImageNet: 150 of 331)
MAX_ENHANCE = 0.9             # Color, Contrast, Brightness, Sharpness: factor in [0.1, 1.9]
POSTERIZE_BITS = (8, 4)       # the appendix's [4, 8] bits: level 0 keeps 8, level 10 keeps 4

# (operation, probability, level) pairs of the AutoAugment paper's appendix: CIFAR-10 (the
# 25 sub-policies of its five best policies) and ImageNet; the same tables as torchvision's
# and DeepVoltaire/AutoAugment's.
POLICIES = {
    'cifar10': (
        (('Invert', 0.1, 7), ('Contrast', 0.2, 6)), (('Rotate', 0.7, 2), ('TranslateX', 0.3, 9)),
        (('Sharpness', 0.8, 1), ('Sharpness', 0.9, 3)), (('ShearY', 0.5, 8), ('TranslateY', 0.7, 9)),
        (('AutoContrast', 0.5, 8), ('Equalize', 0.9, 2)), (('ShearY', 0.2, 7), ('Posterize', 0.3, 7)),
        (('Color', 0.4, 3), ('Brightness', 0.6, 7)), (('Sharpness', 0.3, 9), ('Brightness', 0.7, 9)),
        (('Equalize', 0.6, 5), ('Equalize', 0.5, 1)), (('Contrast', 0.6, 7), ('Sharpness', 0.6, 5)),
        (('Color', 0.7, 7), ('TranslateX', 0.5, 8)), (('Equalize', 0.3, 7), ('AutoContrast', 0.4, 8)),
        (('TranslateY', 0.4, 3), ('Sharpness', 0.2, 6)), (('Brightness', 0.9, 6), ('Color', 0.2, 8)),
        (('Solarize', 0.5, 2), ('Invert', 0.0, 3)), (('Equalize', 0.2, 0), ('AutoContrast', 0.6, 0)),
        (('Equalize', 0.2, 8), ('Equalize', 0.6, 4)), (('Color', 0.9, 9), ('Equalize', 0.6, 6)),
        (('AutoContrast', 0.8, 4), ('Solarize', 0.2, 8)), (('Brightness', 0.1, 3), ('Color', 0.7, 0)),
        (('Solarize', 0.4, 5), ('AutoContrast', 0.9, 3)), (('TranslateY', 0.9, 9), ('TranslateY', 0.7, 9)),
        (('AutoContrast', 0.9, 2), ('Solarize', 0.8, 3)), (('Equalize', 0.8, 8), ('Invert', 0.1, 3)),
        (('TranslateY', 0.7, 9), ('AutoContrast', 0.9, 1)),
    ),
    'imagenet': (
        (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)), (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
        (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)), (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
        (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)), (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
        (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)), (('Posterize', 0.8, 5), ('Equalize', 1.0, 2)),
        (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)), (('Equalize', 0.6, 8), ('Posterize', 0.4, 6)),
        (('Rotate', 0.8, 8), ('Color', 0.4, 0)), (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
        (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)), (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
        (('Color', 0.6, 4), ('Contrast', 1.0, 8)), (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
        (('Color', 0.8, 8), ('Solarize', 0.8, 7)), (('Sharpness', 0.4, 7), ('Invert', 0.6, 8)),
        (('ShearX', 0.6, 5), ('Equalize', 1.0, 9)), (('Color', 0.4, 0), ('Equalize', 0.6, 3)),
        (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)), (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
        (('Invert', 0.6, 4), ('Equalize', 1.0, 8)), (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
        (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
    ),
}



@functools.cache
def _keras_op(name):
    """Keras' AutoContrast or Equalization layer on [0, 255] images, made once when first used."""
    return getattr(keras.layers, name)(value_range=(0, 255))


def _grey(x):
    """Luminance as PIL's convert('L'): 0.299 R + 0.587 G + 0.114 B, [B, H, W, 1]."""
    return tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def _blend(degenerate, x, factor):
    """PIL.ImageEnhance: degenerate + factor * (x - degenerate), clipped to [0, 255]."""
    return tf.clip_by_value(degenerate + factor[:, None, None, None] * (x - degenerate), 0.0, 255.0)


def _smooth(x):
    """PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) inside, the border
    pixels kept: the degenerate image of ImageEnhance.Sharpness."""
    kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID')
    inner = tf.pad(inner, [[0, 0], [1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    border = tf.pad(tf.zeros([h - 2, w - 2], tf.bool), [[1, 1], [1, 1]], constant_values=True)
    return tf.where(border[None, :, :, None], x, tf.round(inner))


def _affine(x, rows):
    """keras.ops.image.affine_transform with one [a0, a1, a2, b0, b1, b2] row per image
    (output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2)), nearest pixel,
    grey outside."""
    transform = tf.concat([rows, tf.zeros([tf.shape(rows)[0], 2])], axis=1)
    return keras.ops.image.affine_transform(x, transform, interpolation='nearest',
                                            fill_mode='constant', fill_value=FILL)


def _geometric(name, x, m):
    """Rotate, ShearX/Y, TranslateX/Y by the signed fraction m [B] of the largest change."""
    one, zero = tf.ones_like(m), tf.zeros_like(m)
    h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    if name == 'Rotate':
        a = m * MAX_ROTATE_DEGREES * math.pi / 180.0
        cx, cy = (w - 1) / 2, (h - 1) / 2
        cos, sin = tf.cos(a), tf.sin(a)
        rows = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    elif name == 'ShearX':
        rows = [one, m * MAX_SHEAR, zero, zero, one, zero]
    elif name == 'ShearY':
        rows = [one, zero, zero, m * MAX_SHEAR, one, zero]
    elif name == 'TranslateX':
        rows = [one, zero, tf.round(m * MAX_TRANSLATE * w), zero, one, zero]
    else:
        rows = [one, zero, zero, zero, one, tf.round(m * MAX_TRANSLATE * h)]
    return _affine(x, tf.stack(rows, axis=1))


def apply_op(name, x, level, sign):
    """Operation `name` on images x (float32 [B, H, W, 3] in [0, 255]) at AutoAugment levels
    `level` [B] (0-10; beyond 10 extrapolates, as the authors' code) with signs `sign` [B]
    (+-1) for the signed operations."""
    frac = level / MAX_LEVEL
    if name == 'Identity':
        return x
    if name == 'AutoContrast':
        return _keras_op('AutoContrast')(x)
    if name == 'Equalize':
        return _keras_op('Equalization')(x)
    if name == 'Invert':
        return 255.0 - x
    if name == 'Solarize':  # pixels at or above the threshold inverted; level 0: none
        threshold = 256.0 - frac * 256.0
        return tf.where(x >= threshold[:, None, None, None], 255.0 - x, x)
    if name == 'Posterize':  # keep the high `bits` bits
        bits = POSTERIZE_BITS[0] - tf.cast(frac * (POSTERIZE_BITS[0] - POSTERIZE_BITS[1]), tf.int32)
        shift = tf.cast(8 - bits, tf.uint8)[:, None, None, None]
        pixels = tf.cast(x, tf.uint8)
        return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(pixels, shift), shift), tf.float32)
    if name in ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'):
        return _geometric(name, x, frac * sign)
    factor = 1.0 + frac * MAX_ENHANCE * sign
    if name == 'Color':
        return _blend(_grey(x), x, factor)
    if name == 'Contrast':
        mean = tf.reduce_mean(_grey(x), axis=[1, 2, 3], keepdims=True)
        return _blend(mean, x, factor)
    if name == 'Brightness':
        return _blend(tf.zeros_like(x), x, factor)
    if name == 'Sharpness':
        return _blend(_smooth(x), x, factor)
    raise ValueError(f'unknown augmentation operation {name!r}')


def _apply_each(x, op_index, level, sign):
    """Image i through operation OPS[op_index[i]]: the batch split by operation
    (tf.dynamic_partition), each part through its operation, put back in order."""
    n = len(OPS)
    ids = tf.range(tf.shape(x)[0])
    parts = tf.dynamic_partition(ids, op_index, n)
    out = []
    for k, name in enumerate(OPS):
        # One image more, dropped after: an operation may get no image this time, and
        # Keras' Equalization fails on an empty batch (a tf.cond instead costs 10x in tf.data).
        idx = tf.concat([parts[k], [0]], axis=0)
        part = apply_op(name, tf.gather(x, idx), tf.gather(level, idx), tf.gather(sign, idx))
        out.append(part[:-1])
    return tf.dynamic_stitch(parts, out)


def _signs(seed, b):
    return tf.where(tf.random.stateless_uniform([b], seed) < 0.5, -1.0, 1.0)


def rand_augment(x, seed, num_ops, magnitude):
    """RandAugment: each image through `num_ops` operations drawn uniformly (with
    replacement) from the 14, all at level `magnitude`. x: float32 [B, H, W, 3] in [0, 255]."""
    b = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2 * num_ops)
    level = tf.fill([b], tf.cast(magnitude, tf.float32))
    for i in range(num_ops):
        op = tf.random.stateless_uniform([b], seeds[2 * i], 0, len(RANDAUGMENT_OPS), dtype=tf.int32)
        x = tf.round(_apply_each(x, op, level, _signs(seeds[2 * i + 1], b)))
    return x


def auto_augment(x, seed, policy):
    """AutoAugment: each image through one sub-policy of `policy` drawn uniformly; each of
    its two operations applied with its probability, at its level."""
    table = POLICIES[policy]
    ops = tf.constant([[OPS.index(name) for name, _, _ in sub] for sub in table], tf.int32)
    probs = tf.constant([[p for _, p, _ in sub] for sub in table], tf.float32)
    levels = tf.constant([[float(l) for _, _, l in sub] for sub in table], tf.float32)
    b = tf.shape(x)[0]
    s = tf.random.experimental.stateless_split(seed, 5)
    which = tf.random.stateless_uniform([b], s[0], 0, len(table), dtype=tf.int32)
    for slot in range(2):
        applied = tf.random.stateless_uniform([b], s[1 + slot]) < tf.gather(probs[:, slot], which)
        op = tf.where(applied, tf.gather(ops[:, slot], which), OPS.index('Identity'))
        x = tf.round(_apply_each(x, op, tf.gather(levels[:, slot], which), _signs(s[3 + slot], b)))
    return x
