"""The tf.data input pipeline: endless, shuffled, augmented training batches and
in-order evaluation batches of a split of any kind (runner.data.splits).

Training batches are gathered by index: epoch e visits the items in a permutation drawn
from (seed, e), and every random number of batch b derives from (seed, b), so the stream
is a function of the seed alone and `start_batch` resumes it exactly and at once (skipped
batches are never read). This holds for every source, cached or streamed (both give the
same batches), and under every tf.distribute strategy, where iterator checkpointing does
not (https://www.tensorflow.org/guide/data#iterator_checkpointing). An unreadable file of
a streamed split is dropped right after its decode (tf.data `ignore_errors`) and recorded;
its batch is one image short.
"""
import numpy as np
import tensorflow as tf

from runner.data import listings, mixing
from runner.data.info import Prep
from runner.data.source import DataUnavailable
from runner.data.splits import Split, Stream, size
from runner.data.transforms import (alternating_flips,
                                    augment_batch,
                                    decode,
                                    fit,
                                    normalize,
                                    prepare_eval_image,
                                    random_resized_crop)

AUTOTUNE = tf.data.AUTOTUNE
# Arrays larger than this are read through numpy rather than copied into the graph
# (a tf.constant of N bytes costs 2N more memory and seconds a GB).
_EMBED_LIMIT = 256 * 2 ** 20


def _note(split):
    """A numpy function recording the items of a batch that were dropped (unreadable)."""
    items = split.listing

    def note(requested, kept):
        missing = np.setdiff1d(requested, kept)
        if len(missing):
            split.unreadable.add(items.key(i) for i in missing)
        return np.int64(len(missing))
    return note


def _gather_fn(images):
    """indices -> uint8 images of an in-memory array: embedded in the graph when small,
    read through numpy when large (no copy of the array)."""
    if images.nbytes <= _EMBED_LIMIT:
        const = tf.constant(images)
        return lambda idx: tf.gather(const, idx)
    shape = images.shape[1:]

    def gather(idx):
        out = tf.numpy_function(lambda i: images[i], [idx], tf.uint8, stateful=False)
        out.set_shape(idx.shape.concatenate(shape))
        return out
    return gather


def item_loader(split):
    """A graph function: item index -> (uint8 image [h, w, 3] as stored, int32 label).
    For a Stream it reads and decodes, and fails on a bad file."""
    if isinstance(split, Stream):
        read = listings.read_fn(split.listing)

        def load(i):
            data, label = read(i)
            return decode(data), label
        return load
    labels = tf.constant(np.asarray(split.labels, np.int32))
    if isinstance(split, Split):
        gather = _gather_fn(split.images)
        return lambda i: (gather(i), tf.gather(labels, i))
    images = split.images

    def load(i):
        img = tf.numpy_function(lambda k: images[int(k)], [i], tf.uint8, stateful=False)
        img.set_shape([None, None, 3])
        return img, tf.gather(labels, i)
    return load


def _batched(split, batches, item_fn, finish):
    """(batch number, item indices) elements -> one batch each: the items loaded (an
    unreadable one dropped and recorded), put through item_fn(image, position), batched,
    then finish(batch number, images, labels, item indices, positions). A batch's content
    depends on its element alone, so the stream can start anywhere."""
    load = item_loader(split)
    streamed = isinstance(split, Stream)
    note = _note(split) if streamed else None

    def one(b, idx, pos):
        ds = tf.data.Dataset.from_tensor_slices((idx, pos)).map(
            lambda i, p: load(i) + (i, p), num_parallel_calls=AUTOTUNE, deterministic=True)
        if streamed:
            ds = ds.ignore_errors()
        ds = ds.map(lambda x, y, i, p: (item_fn(x, p), y, i, p),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(tf.cast(tf.size(idx), tf.int64))
        if streamed:
            # A batch whose every item is unreadable yields no element at all: an empty one
            # stands in, so that its files are recorded, and it is dropped after that.
            empty = tf.data.Dataset.from_tensors(tuple(
                tf.zeros([0 if d is None else d for d in spec.shape], spec.dtype)
                for spec in ds.element_spec))

            def record(x, y, kept, positions):
                dropped = tf.numpy_function(note, [idx, kept], tf.int64, stateful=True)
                with tf.control_dependencies([dropped]):
                    return tf.identity(x), y, kept, positions
            ds = (ds.concatenate(empty).take(1).map(record)
                  .filter(lambda x, *_: tf.shape(x)[0] > 0))
        return ds.map(lambda x, y, kept, positions: finish(b, x, y, kept, positions))
    return batches.interleave(one, cycle_length=2, block_length=1, num_parallel_calls=AUTOTUNE,
                              deterministic=True)


def _index_stream(n, batch_size, seed, start_batch):
    """(batch number, indices, positions) from start_batch on: epoch e is a permutation of
    range(n) drawn from (seed, e); batches run across epoch ends."""
    def epoch_order(epoch):
        keys = tf.random.stateless_uniform([n], tf.stack([seed, epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

    first = start_batch * batch_size
    indices = (tf.data.Dataset.range(first // n, 2 ** 62)
               .flat_map(epoch_order)
               .skip(first % n)
               .batch(batch_size, drop_remainder=True))
    return tf.data.Dataset.zip(tf.data.Dataset.range(start_batch, 2 ** 62), indices)


def _regulariser(regularisers, seed, mean, std, num_classes):
    """(batch number, images, labels) -> (images, labels) through the regularisers turned on
    (runner.data.mixing), their random numbers from (seed, batch number); labels become
    mixed float32 targets [batch, num_classes] with mixup or CutMix."""
    if not regularisers:
        return lambda b, x, y: (x, y)
    return lambda b, x, y: mixing.apply(x, y, tf.stack([seed, b]), regularisers, mean, std, num_classes)


def train_dataset(split, batch_size, seed, mean, std, flip=True, crop_padding=4, start_batch=0,
                  prep=None, regularisers=None, num_classes=None):
    """Endless, shuffled, augmented batches of (float32 images, int32 labels), or float32
    mixed targets [batch, num_classes] when `regularisers` (runner.config.regularisers) mix.

    Epoch e visits the images in a permutation drawn from (seed, e), and batch b is
    augmented with random numbers from (seed, b) (an image's random crop from its position
    in the stream): the stream is a function of `seed` alone, so `start_batch` resumes it
    exactly and at once, whatever the step, cached or streamed. This works under every
    tf.distribute strategy, where iterator checkpointing does not (iterators distributed
    over several devices are not trackable), and costs no checkpoint space.
    `prep`, when given, decides the augmentation (its flip and crop_padding win).
    """
    n = size(split)
    if n < batch_size:
        raise DataUnavailable(f'train_parameters.batch_size: {batch_size} is larger than the '
                              f'{n} training images')
    prep = prep or Prep('cifar', None, flip, crop_padding)
    flip, crop_padding = prep.flip, prep.crop_padding
    seed = tf.constant(seed, tf.int64)
    flips = alternating_flips(seed, n) if flip and prep.alternate_flips else None
    pad_mode = prep.crop_padding_mode
    regularise = _regulariser(regularisers, seed, mean, std, num_classes)
    fast = isinstance(split, Split) and prep.style == 'cifar' and \
        (prep.size is None or tuple(split.images.shape[1:3]) == tuple(prep.size))
    if fast:
        # Images already at the model size in memory: whole batches gathered by index.
        gather = _gather_fn(split.images)
        labels = tf.constant(split.labels)

        def make_batch(batch_index, idx):
            x = normalize(gather(idx), mean, std)
            mask = flips(idx, batch_index * batch_size + tf.range(batch_size, dtype=tf.int64)) if flips else None
            x = augment_batch(x, tf.stack([seed, batch_index]), flip, crop_padding, mask, pad_mode)
            return regularise(batch_index, x, tf.gather(labels, idx))

        return (_index_stream(n, batch_size, seed, start_batch)
                .map(make_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
                .prefetch(AUTOTUNE))

    # Image by image: read/decode (streamed) or look up (cached), then the style's crop.
    if prep.style == 'imagenet':
        base = tf.stack([seed, tf.constant(0x1D6A, tf.int64)])

        def item(x, pos):
            return random_resized_crop(x, prep.size, tf.random.experimental.stateless_fold_in(base, pos))
        padding = 0
    else:
        def item(x, pos):
            return fit(x, prep.size)
        padding = crop_padding

    def finish(b, x, y, indices, positions):
        x = normalize(x, mean, std)
        mask = flips(indices, positions) if flips else None
        return regularise(b, augment_batch(x, tf.stack([seed, b]), flip, padding, mask, pad_mode), y)

    batches = _index_stream(n, batch_size, seed, start_batch).map(
        lambda b, idx: (b, idx, b * batch_size + tf.range(batch_size, dtype=tf.int64)))
    return _batched(split, batches, item, finish).prefetch(AUTOTUNE)


def eval_dataset(split, batch_size, mean, std, prep=None):
    """The whole split once, in order, unaugmented (unreadable files skipped)."""
    small = isinstance(split, Split) and split.images.nbytes <= _EMBED_LIMIT
    at_size = isinstance(split, Split) and (prep is None or (
        prep.style == 'cifar' and tuple(split.images.shape[1:3]) == tuple(prep.size)))
    if small and at_size:
        ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
        return ds.map(lambda x, y: (normalize(x, mean, std), y),
                      num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    n = size(split)
    if at_size:
        # A large in-memory split at the model size: batches sliced through numpy.
        images, labels = split.images, np.asarray(split.labels, np.int32)
        shape = images.shape[1:]

        def piece(start):
            x, y = tf.numpy_function(lambda s: (images[s:s + batch_size], labels[s:s + batch_size]),
                                     [start], (tf.uint8, tf.int32), stateful=False)
            x.set_shape((None,) + shape)
            y.set_shape((None,))
            return normalize(x, mean, std), y
        return (tf.data.Dataset.range(0, n, batch_size)
                .map(piece, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE))
    prep = prep or Prep('cifar', tuple(split.images.shape[1:3]))

    def item(x, pos):
        return prepare_eval_image(x, prep.size, prep.style)

    def finish(b, x, y, *_):
        return normalize(x, mean, std), y

    batches = tf.data.Dataset.range(0, n, batch_size).map(
        lambda s: (s // batch_size, tf.range(s, tf.minimum(s + batch_size, n)),
                   tf.range(s, tf.minimum(s + batch_size, n))))
    return _batched(split, batches, item, finish).prefetch(AUTOTUNE)
