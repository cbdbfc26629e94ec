"""Images into model inputs: graph functions on one image (decoding, the cifar style's
resize, the imagenet style's crops) and on a batch (normalisation, flips, pad-and-crop).

- `cifar` style: images at the model size, random flips and pad-and-crop of whole batches
  (He et al. 2015, arXiv:1512.03385, section 4.2).
- `imagenet` style: a random resized crop in training (Szegedy et al. 2015,
  arXiv:1409.4842: area 8%-100%, aspect ratio 3/4-4/3) and flip; at evaluation the short
  side resized to size/0.875 and a centre crop; 10-crop views for test-time augmentation
  (Krizhevsky et al. 2012).
- airbench94's alternating flips (Jordan 2024, arXiv:2404.00498).

Every random number comes from a stateless seed, so a batch is a function of its seed.
"""
import math

import tensorflow as tf

CROP_FRACTION = 0.875          # evaluation: resize to size / 0.875, centre crop
CROP_AREA = (0.08, 1.0)        # training: random resized crop (Szegedy et al. 2015)
CROP_RATIO = (3 / 4, 4 / 3)


def decode(data):
    """Encoded bytes (JPEG incl. CMYK, PNG, GIF, BMP, WebP) -> uint8 [h, w, 3]: greyscale is
    repeated, alpha dropped, CMYK converted. Raises for data that is not a whole image.

    JPEGs are decoded with the accurate integer DCT: TensorFlow's default (INTEGER_FAST)
    comes out about 1.2 levels darker in red and blue than the encoded image and than
    PIL/libjpeg's default, so dataset statistics would not match other tools'; the
    accurate DCT costs a few percent of decoding time."""
    img = tf.cond(tf.io.is_jpeg(data),
                  lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
                  lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    img.set_shape([None, None, 3])
    return img


def _to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def fit(img, image_size):
    """Resize to exactly image_size when it differs (antialiased, rounded): cifar style."""
    h, w = image_size
    shape = tf.shape(img)
    same = tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w))
    out = tf.cond(same, lambda: img,
                  lambda: _to_uint8(tf.image.resize(img, (h, w), antialias=True)))
    out.set_shape((h, w, 3))
    return out


def resize_short_side(img, image_size, crop_fraction=CROP_FRACTION):
    """The first half of the imagenet style's evaluation: resize (antialiased, rounded) so the
    image covers image_size / crop_fraction, aspect ratio kept (for 224 x 224: the short side
    to 256). The result is at least image_size on both sides."""
    h, w = image_size
    shape = tf.cast(tf.shape(img)[:2], tf.float64)
    scale = tf.maximum(h / (crop_fraction * shape[0]), w / (crop_fraction * shape[1]))
    nh = tf.maximum(tf.cast(tf.round(shape[0] * scale), tf.int32), h)
    nw = tf.maximum(tf.cast(tf.round(shape[1] * scale), tf.int32), w)
    return _to_uint8(tf.image.resize(img, tf.stack([nh, nw]), antialias=True))


def center_crop(img, image_size, crop_fraction=CROP_FRACTION):
    """Evaluation preprocessing of the imagenet style: resize_short_side, then the central
    image_size window."""
    h, w = image_size
    resized = resize_short_side(img, image_size, crop_fraction)
    nh, nw = tf.shape(resized)[0], tf.shape(resized)[1]
    out = resized[(nh - h) // 2:(nh - h) // 2 + h, (nw - w) // 2:(nw - w) // 2 + w]
    out.set_shape((h, w, 3))
    return out


def ten_crop(resized, image_size):
    """The imagenet style's 10-crop test-time views of an image already through
    resize_short_side: its four corner windows and its central window at image_size, then
    the mirrors of those five (Krizhevsky et al. 2012; He et al. 2015). [10, h, w, 3]."""
    h, w = image_size
    nh, nw = tf.shape(resized)[0], tf.shape(resized)[1]
    crops = [resized[y:y + h, x:x + w]
             for y, x in ((0, 0), (0, nw - w), (nh - h, 0), (nh - h, nw - w),
                          ((nh - h) // 2, (nw - w) // 2))]
    out = tf.stack(crops + [tf.reverse(c, axis=[1]) for c in crops])
    out.set_shape((10, h, w, 3))
    return out


def random_resized_crop(img, image_size, seed, area=CROP_AREA, ratio=CROP_RATIO, attempts=10):
    """Training preprocessing of the imagenet style (Inception / torchvision
    RandomResizedCrop): a window of area fraction `area` and aspect ratio `ratio` (log-
    uniform), at a random place, resized to image_size. Ten tries; if none fits, the
    central window of the whole image clipped to the ratio range. Stateless: `seed`."""
    h, w = image_size
    shape = tf.shape(img)
    H, W = shape[0], shape[1]
    Hf, Wf = tf.cast(H, tf.float32), tf.cast(W, tf.float32)
    s = tf.random.experimental.stateless_split(seed, 4)
    target = Hf * Wf * tf.random.stateless_uniform([attempts], s[0], area[0], area[1])
    r = tf.exp(tf.random.stateless_uniform([attempts], s[1], math.log(ratio[0]), math.log(ratio[1])))
    cw = tf.cast(tf.round(tf.sqrt(target * r)), tf.int32)
    ch = tf.cast(tf.round(tf.sqrt(target / r)), tf.int32)
    ok = (cw > 0) & (ch > 0) & (cw <= W) & (ch <= H)
    k = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(ok)
    aspect = Wf / Hf
    fw = tf.where(aspect < ratio[0], W, tf.where(aspect > ratio[1], tf.cast(tf.round(Hf * ratio[1]), tf.int32), W))
    fh = tf.where(aspect < ratio[0], tf.cast(tf.round(Wf / ratio[0]), tf.int32), H)
    fw, fh = tf.minimum(tf.maximum(fw, 1), W), tf.minimum(tf.maximum(fh, 1), H)
    ch = tf.where(found, ch[k], fh)
    cw = tf.where(found, cw[k], fw)
    oy_rand = tf.random.stateless_uniform([], s[2], 0, H - ch + 1, dtype=tf.int32)
    ox_rand = tf.random.stateless_uniform([], s[3], 0, W - cw + 1, dtype=tf.int32)
    oy = tf.where(found, oy_rand, (H - ch) // 2)
    ox = tf.where(found, ox_rand, (W - cw) // 2)
    crop = img[oy:oy + ch, ox:ox + cw]
    out = _to_uint8(tf.image.resize(crop, (h, w), antialias=True))
    out.set_shape((h, w, 3))
    return out


def prepare_eval_image(img, image_size, style):
    """uint8 [h, w, 3] of any size -> the model's evaluation input (uint8 at image_size)."""
    return center_crop(img, image_size) if style == 'imagenet' else fit(img, image_size)


def normalize(images, mean, std):
    """uint8 images -> float32, per-channel standardised (the model's input)."""
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def pad_images(images, padding, mode='zeros'):
    """Pad a batch [B, H, W, C] by `padding` pixels on each side: zeros (after normalisation,
    the mean colour) or the image reflected at its edges (dataset.crop_padding_mode)."""
    p = padding
    return tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]],
                  mode='REFLECT' if mode == 'reflect' else 'CONSTANT')


def augment_batch(images, seed, flip=True, crop_padding=4, flip_mask=None, crop_padding_mode='zeros'):
    """Horizontal flip and pad-and-crop of a whole batch, from a stateless seed. The flips
    are random unless `flip_mask` ([batch] bool) says which images to mirror."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if flip:
        mask = tf.random.stateless_uniform([b], seeds[0]) < 0.5 if flip_mask is None else flip_mask
        images = tf.where(mask[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if crop_padding:
        p = crop_padding
        padded = pad_images(images, p, crop_padding_mode)
        dy = tf.random.stateless_uniform([b], seeds[1], 0, 2 * p + 1, dtype=tf.int32)
        dx = tf.random.stateless_uniform([b], seeds[2], 0, 2 * p + 1, dtype=tf.int32)
        rows = dy[:, None] + tf.range(h)[None, :]
        cols = dx[:, None] + tf.range(w)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images


def alternating_flips(seed, n):
    """airbench94's alternating flip as a function (image indices, stream positions) ->
    which images to mirror: image i is mirrored in the first epoch when a draw from
    (seed, i) says so, and then in every other epoch, so any two consecutive epochs show
    it both ways round. The epoch of an item is its stream position // n."""
    first = tf.random.stateless_uniform([n], tf.stack([tf.cast(seed, tf.int64), 0xF11B])) < 0.5

    def mask(indices, positions):
        odd_epoch = tf.math.floormod(tf.cast(positions, tf.int64) // n, 2) == 1
        return tf.not_equal(tf.gather(first, indices), odd_epoch)
    return mask
