"""Input pipelines: TensorFlow Datasets or an image folder, into tf.data.

Decoded uint8 images are held in memory (CIFAR-10 is 150 MB), and each training
batch is gathered from them by index. Shuffling indices rather than images keeps
the tf.data iterator state that checkpoints save small, and deriving every random
number from (seed, batch number) makes the stream reproducible after a resume.
Augmentation works on whole batches (flip, pad-and-crop by gathering rows and
columns), which is much cheaper than per-image ops on a small CPU.
"""
import dataclasses
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
# The validation split is the same for every seed and repeat of an experiment.
VALIDATION_SEED = 20161


class DataUnavailable(Exception):
    """The data an experiment names is not on this machine (one-line message)."""


@dataclasses.dataclass
class DataInfo:
    description: str
    image_shape: tuple
    num_classes: int
    class_names: Optional[List[str]] = None


@dataclasses.dataclass
class Split:
    name: str
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,)


@dataclasses.dataclass
class Data:
    info: DataInfo
    train: Split
    eval: Split          # validation split if configured, else the test split
    test: Split
    mean: List[float]
    std: List[float]


def _tfds():
    import tensorflow_datasets as tfds
    return tfds


def _tfds_builder(cfg):
    tfds = _tfds()
    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        import difflib
        close = difflib.get_close_matches(cfg.name, tfds.list_builders(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        raise DataUnavailable(f"dataset.name: '{cfg.name}' is not a TensorFlow Datasets name{hint}") from None


def _folder_builder(cfg):
    root = os.path.expanduser(cfg.image_folder)
    if not os.path.isdir(root):
        raise DataUnavailable(f"dataset.image_folder: '{cfg.image_folder}' is not a directory")
    missing = [s for s in (cfg.train_split, cfg.test_split) if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise DataUnavailable(f"dataset.image_folder: '{cfg.image_folder}' has no split folder "
                              f"'{missing[0]}' (expected <root>/<split>/<class>/<image>)")
    return _tfds().ImageFolder(root)


def describe(cfg):
    """Shape and class count of the dataset without reading its images (works offline)."""
    if cfg.image_folder:
        b = _folder_builder(cfg)
        label = b.info.features['label']
        shape = _first_image_shape(os.path.join(os.path.expanduser(cfg.image_folder), cfg.train_split))
        desc = f'image folder {cfg.image_folder}'
    else:
        b = _tfds_builder(cfg)
        label = b.info.features['label'] if 'label' in b.info.features else None
        image = b.info.features['image'] if 'image' in b.info.features else None
        if label is None or image is None:
            raise DataUnavailable(f"dataset.name: '{cfg.name}' has no 'image' and 'label' "
                                  f"features; it is not an image-classification dataset")
        shape = tuple(image.shape)
        desc = f'tfds {cfg.name}'
    if cfg.image_size:
        shape = tuple(cfg.image_size) + (shape[-1],)
    if shape[-1] != 3 and None not in shape:
        shape = shape[:-1] + (3,)  # greyscale and RGBA images are converted to RGB
    if None in shape:
        raise DataUnavailable(f'dataset.image_size: {desc} has images of varying size; '
                              f'set dataset.image_size: [height, width]')
    return DataInfo(desc, shape, label.num_classes, list(label.names))


def _first_image_shape(split_dir):
    for cls in sorted(os.listdir(split_dir)):
        d = os.path.join(split_dir, cls)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                try:
                    img = tf.io.decode_image(tf.io.read_file(os.path.join(d, name)), channels=3,
                                             expand_animations=False)
                    return tuple(img.shape)
                except tf.errors.InvalidArgumentError:
                    continue
    raise DataUnavailable(f'dataset.image_folder: no readable image under {split_dir}')


def _not_prepared_message(cfg, builder):
    return (f"dataset: '{cfg.name}' is not prepared in {builder.data_dir} and download is off. "
            f"Point dataset.data_dir (or TFDS_DATA_DIR) at a prepared copy, set dataset.download: true "
            f"where there is network, or use dataset.image_folder")


def _read_tfds(cfg, split, limit):
    b = _tfds_builder(cfg)
    if not b.is_prepared():
        if not cfg.download:
            raise DataUnavailable(_not_prepared_message(cfg, b))
        try:
            b.download_and_prepare()
        except Exception as e:  # network, disk, manual-download datasets
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataUnavailable(f"dataset: downloading '{cfg.name}' failed: {first}") from None
    if limit:
        split = f'{split}[:{limit}]'
    try:
        ds = b.as_dataset(split=split, shuffle_files=False, as_supervised=True)
    except (ValueError, KeyError) as e:
        raise DataUnavailable(f"dataset: '{cfg.name}' has no split '{split}' "
                              f"(splits: {', '.join(b.info.splits)}): {e}") from None
    return ds


def _read_folder(cfg, split, limit):
    # ImageFolder's example order is a fixed shuffle (seeded by the split name), so the
    # held-out validation split and `limit` slices are the same on every machine.
    ds = _folder_builder(cfg).as_dataset(split=split, shuffle_files=False, as_supervised=True)
    return ds.take(limit) if limit else ds


def _to_arrays(ds, info, name):
    h, w, _ = info.image_shape

    def fix(img, label):
        if img.shape[-1] == 1:
            img = tf.image.grayscale_to_rgb(img)
        elif img.shape[-1] == 4:
            img = img[..., :3]
        if img.shape[0] != h or img.shape[1] != w:
            img = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(img, (h, w), antialias=True)),
                                           0, 255), tf.uint8)
        img.set_shape((h, w, 3))
        return img, tf.cast(label, tf.int32)
    images, labels = [], []
    for x, y in ds.map(fix, num_parallel_calls=AUTOTUNE).batch(1024).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise DataUnavailable(f"dataset: split '{name}' is empty")
    return Split(name, np.concatenate(images), np.concatenate(labels))


def read_split(cfg, info, split, limit=None):
    ds = _read_folder(cfg, split, limit) if cfg.image_folder else _read_tfds(cfg, split, limit)
    out = _to_arrays(ds, info, split)
    bad = (out.labels < 0) | (out.labels >= info.num_classes)
    if bad.any():
        raise DataUnavailable(f"dataset: split '{split}' has label {out.labels[bad][0]} outside "
                              f"[0, {info.num_classes})")
    return out


def hold_out(train, fraction):
    """Split `fraction` of train off as a validation split (fixed, seed-independent)."""
    n = len(train.labels)
    n_val = int(round(n * fraction))
    if n_val == 0 or n_val == n:
        raise DataUnavailable(f'dataset.validation_fraction: {fraction} of {n} training images '
                              f'leaves an empty split')
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    keep, val = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    return (Split(train.name, train.images[keep], train.labels[keep]),
            Split('validation', train.images[val], train.labels[val]))


def channel_stats(images):
    """Per-channel mean and standard deviation in [0, 1] units, in float64 chunks."""
    total = np.zeros(3)
    sq = np.zeros(3)
    n = 0
    for start in range(0, len(images), 4096):
        x = images[start:start + 4096].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 1, 2))
        sq += (x * x).sum(axis=(0, 1, 2))
        n += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def synthetic(info, n, seed=0):
    """Random images and labels of the dataset's shape, for a smoke run with no data."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n,) + tuple(info.image_shape), dtype=np.uint8)
    labels = rng.integers(0, info.num_classes, size=(n,)).astype(np.int32)
    return Split('synthetic', images, labels)


def load(cfg, info=None, limit=None, allow_synthetic=False):
    """Everything one experiment reads. `limit` caps each split (smoke runs).

    With `allow_synthetic`, data that is not on this machine is replaced by random
    images of the right shape and class count, so a smoke run needs no data.
    """
    info = info or describe(cfg)
    try:
        train = read_split(cfg, info, cfg.train_split, limit)
        test = read_split(cfg, info, cfg.test_split, limit)
    except DataUnavailable:
        if not allow_synthetic:
            raise
        train = synthetic(info, limit or 256, 1)
        test = synthetic(info, limit or 256, 2)
        info = dataclasses.replace(info, description=info.description + ' (synthetic stand-in)')
    if cfg.validation_fraction:
        train, val = hold_out(train, cfg.validation_fraction)
    else:
        val = test
    if cfg.mean is None or cfg.std is None:
        mean, std = channel_stats(train.images)
    mean = cfg.mean if cfg.mean is not None else mean
    std = cfg.std if cfg.std is not None else std
    if not cfg.normalize:
        mean, std = [0.0], [1.0]
    return Data(info, train, val, test, list(mean), list(std))


# ---------------------------------------------------------------------------
# tf.data

def normalize(images, mean, std):
    """uint8 images -> float32, per-channel standardised (the model's input)."""
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def augment_batch(images, seed, flip=True, crop_padding=4):
    """Random horizontal flip and pad-and-crop of a whole batch, from a stateless seed."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if flip:
        mask = tf.random.stateless_uniform([b], seeds[0]) < 0.5
        images = tf.where(mask[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if crop_padding:
        p = crop_padding
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        dy = tf.random.stateless_uniform([b], seeds[1], 0, 2 * p + 1, dtype=tf.int32)
        dx = tf.random.stateless_uniform([b], seeds[2], 0, 2 * p + 1, dtype=tf.int32)
        rows = dy[:, None] + tf.range(h)[None, :]
        cols = dx[:, None] + tf.range(w)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images


def train_dataset(split, batch_size, seed, mean, std, flip=True, crop_padding=4, start_batch=0):
    """Endless, shuffled, augmented batches of (float32 images, int32 labels).

    Epoch e visits the images in a permutation drawn from (seed, e), and batch b is
    augmented with random numbers from (seed, b): the stream is a function of `seed`
    alone, so `start_batch` resumes it exactly and at once, whatever the step. This works
    under every tf.distribute strategy, where iterator checkpointing does not (iterators
    distributed over several devices are not trackable) and costs no checkpoint space.
    """
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    n = len(split.labels)
    if n < batch_size:
        raise DataUnavailable(f'train_parameters.batch_size: {batch_size} is larger than the '
                              f'{n} training images')
    seed = tf.constant(seed, tf.int64)

    def epoch_order(epoch):
        keys = tf.random.stateless_uniform([n], tf.stack([seed, epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

    def make_batch(batch_index, idx):
        x = normalize(tf.gather(images, idx), mean, std)
        x = augment_batch(x, tf.stack([seed, batch_index]), flip, crop_padding)
        return x, tf.gather(labels, idx)

    # Batches run across epoch ends, as with shuffle().repeat().batch(): batch b holds
    # elements [b * batch_size, (b + 1) * batch_size) of the endless sequence of epochs.
    first = start_batch * batch_size
    indices = (tf.data.Dataset.range(first // n, 2 ** 62)
               .flat_map(epoch_order)
               .skip(first % n)
               .batch(batch_size, drop_remainder=True))
    ds = (tf.data.Dataset.zip(tf.data.Dataset.range(start_batch, 2 ** 62), indices)
          .map(make_batch, num_parallel_calls=AUTOTUNE, deterministic=True)
          .prefetch(AUTOTUNE))
    return ds


def eval_dataset(split, batch_size, mean, std):
    """The whole split once, in order, unaugmented."""
    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
    return ds.map(lambda x, y: (normalize(x, mean, std), y), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
