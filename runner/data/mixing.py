"""The training-input regularisers beyond flips and crops (the keys of
runner.config.regularisers.Regularisers), on whole batches, every random
number from a stateless seed of (run seed, batch number), so a resumed run sees the same
batches:

- Cutout: DeVries & Taylor 2017, arXiv:1708.04552 (uoguelph-mlrg/Cutout): `count` squares
  of side `size` at uniformly drawn centres, clipped at the border, set to 0 after
  normalisation (the mean colour).
- Random erasing: Zhong, Zheng, Kang, Li, Yang, AAAI 2020, arXiv:1708.04896 (Algorithm 1):
  with probability p, a rectangle of area fraction U(area) and aspect ratio U(r, 1/r),
  placed where it fits (10 tries, else nothing), filled with uniform random pixel values.
- AutoAugment and RandAugment: runner.data.autoaugment (applied in pixel units).
- mixup: Zhang, Cisse, Dauphin, Lopez-Paz, ICLR 2018, arXiv:1710.09412
  (facebookresearch/mixup-cifar10): one lambda ~ Beta(alpha, alpha) per batch, the batch
  mixed with a random permutation of itself, images and one-hot labels alike.
- CutMix: Yun, Han, Oh, Chun, Choe, Yoo, ICCV 2019, arXiv:1905.04899 (clovaai/CutMix-PyTorch):
  lambda ~ Beta(alpha, alpha); a box of sides sqrt(1 - lambda) x the image's at a uniform
  centre, clipped at the border, pasted from the permuted batch; the labels mixed by the
  share of pixels each image keeps.

With both mixup and CutMix on, each batch gets one of them, CutMix with probability
`mix_switch_prob`, as timm's Mixup does (`switch_prob`); `mix_prob` is the probability that
a batch is mixed at all. Keras 3 has MixUp, CutMix and RandomErasing layers, but their
randomness comes from a stateful SeedGenerator that no per-batch seed can set (they refuse
a seed tensor), MixUp and CutMix draw a lambda per image rather than per batch, and
CutMix's box is kept inside the image: so these few lines are written here.
"""
import tensorflow as tf

from runner.data import autoaugment

# Folded into the batch's seed, one per technique, so that turning one on does not change
# the random numbers of another (nor the flips and crops, which use the seed itself).
_POLICY, _CUTOUT, _ERASING, _MIX = 0xA0A, 0xC07, 0xE5A, 0x313


def _fold(seed, tag):
    return tf.random.experimental.stateless_fold_in(seed, tag)


def _squares(h, w, ys, xs, half_h, half_w):
    """[B, H, W] bool: inside any of the boxes [y - half_h, y + half_h) x [x - half_w, x + half_w)
    (ys, xs [B, K]; half_h, half_w broadcastable), clipped by the image."""
    rows = tf.range(h)[None, None, :]
    cols = tf.range(w)[None, None, :]
    in_rows = (rows >= (ys - half_h)[..., None]) & (rows < (ys + half_h)[..., None])
    in_cols = (cols >= (xs - half_w)[..., None]) & (cols < (xs + half_w)[..., None])
    return tf.reduce_any(in_rows[:, :, :, None] & in_cols[:, :, None, :], axis=1)


def cutout(images, seed, size, count=1):
    """Cutout: `count` squares of side `size` per image (centres uniform over the image,
    clipped at its border, as uoguelph-mlrg/Cutout) set to 0 (the mean after normalisation)."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    s = tf.random.experimental.stateless_split(seed, 2)
    ys = tf.random.stateless_uniform([b, count], s[0], 0, h, dtype=tf.int32)
    xs = tf.random.stateless_uniform([b, count], s[1], 0, w, dtype=tf.int32)
    mask = _squares(h, w, ys, xs, size // 2, size // 2)
    return tf.where(mask[..., None], tf.zeros_like(images), images)


def random_erasing(images, seed, prob, area, ratio, mean, std, attempts=100):
    """Random erasing (Zhong et al. 2020, Algorithm 1): with probability `prob` per image, a
    rectangle of area U(area) x the image's and aspect ratio U(ratio, 1/ratio), at a random
    place where it fits (the first of `attempts` sizes that fits), filled with uniform random pixel
    values (RE-R), normalised with mean and std like the image."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    s = tf.random.experimental.stateless_split(seed, 6)
    target = hf * wf * tf.random.stateless_uniform([b, attempts], s[0], area[0], area[1])
    r = tf.random.stateless_uniform([b, attempts], s[1], ratio, 1.0 / ratio)
    eh = tf.cast(tf.round(tf.sqrt(target * r)), tf.int32)
    ew = tf.cast(tf.round(tf.sqrt(target / r)), tf.int32)
    fits = (eh > 0) & (ew > 0) & (eh < h) & (ew < w)
    k = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    eh, ew = tf.gather(eh, k, batch_dims=1), tf.gather(ew, k, batch_dims=1)
    u = tf.random.stateless_uniform([b, 2], s[2])
    y0 = tf.cast(u[:, 0] * tf.cast(h - eh, tf.float32), tf.int32)
    x0 = tf.cast(u[:, 1] * tf.cast(w - ew, tf.float32), tf.int32)
    on = (tf.random.stateless_uniform([b], s[3]) < prob) & tf.reduce_any(fits, axis=1)
    rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None]
    noise = tf.random.stateless_uniform(shape, s[4])
    noise = (noise - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return tf.where(mask[..., None], noise, images)


def _beta(seed, alpha):
    """One draw of Beta(alpha, alpha), from two stateless gamma draws."""
    g = tf.random.stateless_gamma([2], seed, alpha)
    return g[0] / (g[0] + g[1])


def _cutmix_mask(shape, seed, lam):
    """CutMix-PyTorch's rand_bbox: sides int(H sqrt(1 - lam)), int(W sqrt(1 - lam)), a
    uniform centre, clipped at the border; [H, W] bool, and the share of pixels outside."""
    h, w = shape[1], shape[2]
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
    s = tf.random.experimental.stateless_split(seed, 2)
    cy = tf.random.stateless_uniform([1, 1], s[0], 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([1, 1], s[1], 0, w, dtype=tf.int32)
    y1, y2 = tf.clip_by_value(cy - cut_h // 2, 0, h), tf.clip_by_value(cy + cut_h // 2, 0, h)
    x1, x2 = tf.clip_by_value(cx - cut_w // 2, 0, w), tf.clip_by_value(cx + cut_w // 2, 0, w)
    rows, cols = tf.range(h), tf.range(w)
    mask = (((rows >= y1[0]) & (rows < y2[0]))[:, None] & ((cols >= x1[0]) & (cols < x2[0]))[None, :])
    kept = 1.0 - tf.cast((y2 - y1) * (x2 - x1), tf.float32)[0, 0] / tf.cast(h * w, tf.float32)
    return mask, kept


def mix(images, labels, seed, num_classes, reg):
    """mixup or CutMix on a batch: (images, soft labels [B, num_classes] float32). A batch
    left unmixed (mix_prob) keeps its one-hot labels."""
    s = tf.random.experimental.stateless_split(seed, 5)
    b = tf.shape(images)[0]
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    perm = tf.argsort(tf.random.stateless_uniform([b], s[0]))
    other_x, other_y = tf.gather(images, perm), tf.gather(onehot, perm)
    u = tf.random.stateless_uniform([2], s[1])
    apply = u[0] < reg.mix_prob

    def mixup():
        lam = _beta(s[2], reg.mixup_alpha)
        return lam * images + (1 - lam) * other_x, lam

    def cutmix():
        mask, kept = _cutmix_mask(tf.shape(images), s[4], _beta(s[3], reg.cutmix_alpha))
        return tf.where(mask[None, :, :, None], other_x, images), kept

    if reg.mixup_alpha > 0 and reg.cutmix_alpha > 0:
        x, lam = tf.cond(u[1] < reg.mix_switch_prob, cutmix, mixup)
    else:
        x, lam = cutmix() if reg.cutmix_alpha > 0 else mixup()
    lam = tf.where(apply, lam, 1.0)
    x = tf.where(apply, x, images)
    return x, lam * onehot + (1 - lam) * other_y


def apply(images, labels, seed, reg, mean, std, num_classes):
    """Every regulariser `reg` turns on, in the papers' order: the policy (AutoAugment or
    RandAugment, in pixel units), Cutout and random erasing, then mixup/CutMix. images:
    normalised float32 [B, H, W, 3] after flips and crops; seed: the batch's [2] int64."""
    if reg.policy:
        mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
        pixels = tf.clip_by_value(tf.round((images * std_t + mean_t) * 255.0), 0.0, 255.0)
        if reg.autoaugment:
            pixels = autoaugment.auto_augment(pixels, _fold(seed, _POLICY), reg.autoaugment)
        if reg.randaugment_ops:
            pixels = autoaugment.rand_augment(pixels, _fold(seed, _POLICY + 1), reg.randaugment_ops,
                                              reg.randaugment_magnitude)
        images = (pixels / 255.0 - mean_t) / std_t
    if reg.cutout_size:
        images = cutout(images, _fold(seed, _CUTOUT), reg.cutout_size, reg.cutout_count)
    if reg.random_erasing_prob:
        images = random_erasing(images, _fold(seed, _ERASING), reg.random_erasing_prob,
                                reg.random_erasing_area, reg.random_erasing_ratio, mean, std)
    if reg.mixing:
        return mix(images, labels, _fold(seed, _MIX), num_classes, reg)
    return images, labels
