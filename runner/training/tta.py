"""Test-time augmentation (TTA): the views of an image a model is evaluated on, and how
their predictions are combined. The one home of the modes, for training's own evaluations
(`train_parameters.eval_tta`) and for `python -m runner evaluate --tta`.

- none: the image.
- flip: the image and its mirror, their softmax averaged.
- flip_translate: airbench94's TTA level 2 (Jordan 2024, arXiv:2404.00498): the image,
  shifted one pixel up-left and down-right, and the mirrors of the three; the logits
  weighted 1/4 for the image and its mirror and 1/8 for each shifted view, then the softmax.
- 10crop: the four corner crops and the centre crop, and their mirrors, their softmax
  averaged (Krizhevsky et al. 2012; He et al. 2015, arXiv:1512.03385).

The modes are the schema's choices (runner.config.schema.TTA_MODES). No TensorFlow at
import: reading a config must stay light. TensorFlow (and runner.data.transforms) are imported in the functions.
"""

from runner.config.schema import TTA_MODES as MODES  # the schema holds the choices

# airbench's TTA level 2: 0.5 * (image and mirror) + 0.5 * mean(shifted pairs), on logits.
FLIP_TRANSLATE_WEIGHTS = (0.25, 0.125, 0.125, 0.25, 0.125, 0.125)
# How many views of each image a mode evaluates (what an evaluation costs, in model calls).
VIEWS = {'none': 1, 'flip': 2, 'flip_translate': len(FLIP_TRANSLATE_WEIGHTS), '10crop': 10}


def tta_views(x, tta='none', crop_padding=4, crop_padding_mode='zeros'):
    """The views of a batch of normalised images [B, H, W, C] that `tta` averages over.

    none:   the image.
    flip:   the image and its horizontal mirror.
    flip_translate: the image, the image shifted by one pixel up-left and by one down-right
            (edges reflected), and the mirrors of the three (airbench's TTA level 2, Jordan
            2024; combine_views weights them as airbench does).
    10crop: the image padded by `crop_padding` on every side as training pads it
            (`crop_padding_mode`: zeros, the mean colour after normalisation, or the
            reflected image), cropped back to H x W at
            the four corners and the centre (the centre crop is the image itself), and the
            mirrors of those five. With crop_padding 0 the five crops are all the image.
            This is the cifar style's; imagenet-style runs crop the image resized whole
            (ten_crop_probability_fn).
    """
    import tensorflow as tf
    if tta == 'none':
        return [x]
    if tta == 'flip':
        return [x, tf.reverse(x, axis=[2])]
    if tta == 'flip_translate':
        h, w = x.shape[1], x.shape[2]
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode='REFLECT')
        views = [x, padded[:, :h, :w, :], padded[:, 2:h + 2, 2:w + 2, :]]
        return views + [tf.reverse(v, axis=[2]) for v in views]
    if tta != '10crop':
        # The schema and the command line offer MODES only: a caller's mistake.
        raise ValueError(f"TTA '{tta}' is not one of {', '.join(MODES)}")
    from runner.data.transforms import pad_images
    p = int(crop_padding)
    h, w = x.shape[1], x.shape[2]
    padded = pad_images(x, p, crop_padding_mode)
    crops = [padded[:, dy:dy + h, dx:dx + w, :]
             for dy, dx in ((0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p), (p, p))]
    return crops + [tf.reverse(c, axis=[2]) for c in crops]


def combine_views(logits, tta):
    """Class probabilities [B, C] from the logits of each of `tta_views`' views (a list of
    [B, C]). flip_translate is airbench94's rule exactly: the logits averaged with weight
    1/4 for the image and for its mirror and 1/8 for each shifted view, then the softmax.
    The others average the softmax of every view, as the ImageNet papers' 10-crop does."""
    import tensorflow as tf
    logits = [tf.cast(l, tf.float32) for l in logits]
    if tta == 'flip_translate':
        return tf.nn.softmax(tf.add_n([w * l for w, l in zip(FLIP_TRANSLATE_WEIGHTS, logits)]), axis=-1)
    return tf.add_n([tf.nn.softmax(l, axis=-1) for l in logits]) / float(len(logits))


def probability_fn(model, image_size, mean, std, tta='none', crop_padding=4, crop_padding_mode='zeros'):
    """A tf.function: uint8 images [B, H, W, 3] -> class probabilities [B, C] (float32)
    over the TTA views (combine_views)."""
    import tensorflow as tf
    from runner.data.transforms import normalize
    h, w = image_size

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8)])
    def probabilities(images):
        x = normalize(images, mean, std)
        views = tta_views(x, tta, crop_padding, crop_padding_mode)
        return combine_views([model(v, training=False) for v in views], tta)
    return probabilities


def ten_crop_style(run):
    """Does `--tta 10crop` of this run (anything with the DataInfo `info`, such as a
    runner.commands.inference.LoadedRun) crop an image resized whole (the imagenet style) rather than
    pad the model-size image (the cifar style)?"""
    return getattr(run.info, 'preprocessing', 'cifar') == 'imagenet'


def ten_crop_probability_fn(model, image_size, mean, std):
    """A tf.function: the ten views of a batch of images [B, 10, H, W, 3] (uint8, from
    runner.data.transforms.ten_crop) -> class probabilities [B, C], the softmax averaged
    over the views."""
    import tensorflow as tf
    from runner.data.transforms import normalize
    h, w = image_size

    @tf.function(input_signature=[tf.TensorSpec([None, 10, h, w, 3], tf.uint8)])
    def probabilities(views):
        b = tf.shape(views)[0]
        x = normalize(tf.reshape(views, [-1, h, w, 3]), mean, std)
        p = tf.nn.softmax(tf.cast(model(x, training=False), tf.float32), axis=-1)
        return tf.reduce_mean(tf.reshape(p, [b, 10, -1]), axis=1)
    return probabilities
