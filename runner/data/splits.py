"""A split of a dataset in memory or on disk: decoded once and held in memory when it fits
`dataset.cache_budget_mb` (estimated as image count x decoded size of a sample; CIFAR-10:
150 MB), else streamed from disk (`Stream`: read and decoded for every batch, so memory
stays flat however large the dataset is). Also the held-out validation split, the same for
every seed, and random stand-in data for smoke runs.

A file that cannot be read or decoded is skipped, counted and named (`Unreadable`); it
never stops a run.
"""
import dataclasses
import functools
import hashlib
import os
import sys
import threading
import time
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from runner.data import diskcache, listings, transforms
from runner.config.schema import DatasetConfig
from runner.data.info import prep_for, sample_shapes, validation_count
from runner.data.source import (DataUnavailable,
                                listing,
                                no_split_error,
                                prepared_builder,
                                source_kind,
                                tfds_builder,
                                tfds_module)
from runner.data.transforms import center_crop, decode, fit, resize_short_side

AUTOTUNE = tf.data.AUTOTUNE
# The validation split is the same for every seed and repeat of an experiment.
VALIDATION_SEED = 20161
# The schema's default, for a DatasetConfig made in code with cache_budget_mb=None.
DEFAULT_CACHE_BUDGET_MB = DatasetConfig.cache_budget_mb
# Under the runner's cache directory (runner.data.diskcache): decoded in-memory splits.
DECODED_CACHE = 'decoded'
# A split decoded faster than this gets no copy on disk (a copy reads back in about a
# tenth of the time: CIFAR-10's 60,000 images decode in 11 s on 2 cores, read back in 0.3 s).
MIN_DECODE_SECONDS = 2.0
# A split of this many images or more says it is being decoded (seconds to minutes).
SAY_DECODING_FROM = 10000


class Unreadable:
    """Files of a split that could not be read or decoded: skipped, counted, named."""

    def __init__(self):
        self._lock = threading.Lock()
        self.keys = {}  # insertion-ordered set

    def add(self, keys):
        with self._lock:
            for k in keys:
                self.keys.setdefault(k, None)

    def __len__(self):
        return len(self.keys)

    def first(self, k=3):
        with self._lock:
            return list(self.keys)[:k]


@dataclasses.dataclass
class _InMemory:
    name: str
    images: Any         # Split: uint8 array (N, H, W, C); Ragged: list of uint8 (H, W, C)
    labels: np.ndarray  # int32, (N,)
    # Position of each image in the split's listing, and the listing's length: unreadable
    # files are left out, and the held-out validation split is drawn over the listing.
    ids: Optional[np.ndarray] = None
    listed: Optional[int] = None
    unreadable: Unreadable = dataclasses.field(default_factory=Unreadable, repr=False)


@dataclasses.dataclass
class Split(_InMemory):
    """Decoded uint8 images of one size, in memory."""


@dataclasses.dataclass
class Ragged(_InMemory):
    """Decoded uint8 images of varying size, in memory (imagenet-style sources that fit)."""


@dataclasses.dataclass
class Stream:
    """A split read from disk image by image (it does not fit the cache budget)."""
    name: str
    listing: Any  # listings.Listing
    unreadable: Unreadable = dataclasses.field(default_factory=Unreadable, repr=False)

    @property
    def labels(self):
        return self.listing.labels


def size(split):
    """Number of images of a split of any kind."""
    if isinstance(split, Stream):
        return len(split.listing)
    return len(split.labels)


def cached(split):
    return not isinstance(split, Stream)


@functools.lru_cache(maxsize=None)
def _source_digest():
    """What the decoding itself depends on: TensorFlow's decoders, and the code of
    runner.data.transforms and of this module (read once a process)."""
    h = hashlib.sha256()
    for path in (transforms.__file__, __file__):
        with open(path, 'rb') as f:
            h.update(f.read())
    return tf.__version__, h.hexdigest()


def _decoded_once(name, count, key, files, decode_split):
    """A split of one image size, as `decode_split()` decodes it, or its copy on disk from an
    earlier run that decoded the same `key` from the same `files` (their paths, sizes and
    times: runner.data.diskcache). A copy is kept when decoding took MIN_DECODE_SECONDS."""
    try:
        path = diskcache.entry_path(DECODED_CACHE, _source_digest(), key, diskcache.file_stamps(files))
    except diskcache.Gone:  # a file gone since it was listed: decoding says what is missing
        return decode_split()
    z = diskcache.load(path)
    if z is not None and {'images', 'labels', 'ids', 'listed', 'unreadable'} <= set(z):
        listed = int(z['listed'])
        split = Split(name, z['images'], z['labels'], z['ids'] if z['ids'].size else None,
                      listed if listed >= 0 else None)
        split.unreadable.add(z['unreadable'].tolist())
        return split
    if count and count >= SAY_DECODING_FROM:
        print(f"data: decoding the {count:,} images of split '{name}' into memory (once: later runs "
              f"read them back from {os.path.dirname(path)})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    split = decode_split()
    if isinstance(split, Split) and time.perf_counter() - start >= MIN_DECODE_SECONDS:
        diskcache.save(path, limit_bytes=diskcache.DECODED_LIMIT_BYTES, images=split.images,
                       labels=split.labels, ids=np.zeros(0, np.int64) if split.ids is None else split.ids,
                       listed=np.int64(-1 if split.listed is None else split.listed),
                       unreadable=np.array(split.unreadable.first(len(split.unreadable)), dtype=str))
    return split


def _listing_files(items):
    """The files a listing's items are read from."""
    return list(items.paths) if items.kind == 'files' else sorted(set(items.files))


def _array_digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _budget_bytes(cfg):
    mb = getattr(cfg, 'cache_budget_mb', None)
    return (DEFAULT_CACHE_BUDGET_MB if mb is None else mb) * 2 ** 20


def estimate_bytes(items, prep, sample=16):
    """Decoded size of a listing in memory: image count x decoded size (at the model size
    for the cifar style; the mean size of an evenly spaced sample for the imagenet style,
    which keeps the images whole)."""
    n = len(items)
    if prep.style == 'cifar':
        return n * prep.size[0] * prep.size[1] * 3
    shapes = sample_shapes(items, k=sample)
    if not shapes:
        return n * prep.size[0] * prep.size[1] * 3
    return int(n * np.mean([h * w * 3 for h, w in shapes]))


def _decode_all(items, transform, uniform_size=None):
    """Every item of a listing decoded (and transformed) in parallel; unreadable ones left
    out. Returns (images: array if uniform_size else list, labels, ids, bad keys)."""
    read = listings.read_fn(items)
    n = len(items)

    def load(i):
        data, label = read(i)
        return decode(data), label, i
    ds = (tf.data.Dataset.range(n).map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
          .ignore_errors()
          .map(lambda x, y, i: (transform(x), y, i), num_parallel_calls=AUTOTUNE, deterministic=True))
    if uniform_size:
        h, w = uniform_size
        images = np.empty((n, h, w, 3), np.uint8)
        labels = np.empty(n, np.int32)
        ids = np.empty(n, np.int64)
        k = 0
        for x, y, i in ds.batch(256).prefetch(2).as_numpy_iterator():
            images[k:k + len(y)], labels[k:k + len(y)], ids[k:k + len(y)] = x, y, i
            k += len(y)
        images, labels, ids = images[:k], labels[:k], ids[:k]
    else:
        images, labels, ids = [], [], []
        for x, y, i in ds.prefetch(8).as_numpy_iterator():
            images.append(x)
            labels.append(y)
            ids.append(i)
        labels, ids = np.array(labels, np.int32), np.array(ids, np.int64)
    bad = [items.key(i) for i in np.setdiff1d(np.arange(n), ids)]
    return images, labels, ids, bad


def _materialize(items, prep, budget, force_cache=False):
    """A listing as a Split/Ragged (decoded, in memory) when it fits `budget`, else a Stream."""
    if not force_cache and estimate_bytes(items, prep) > budget:
        return Stream(items.name, items)
    if prep.style == 'cifar':
        def decode_split():
            images, labels, ids, bad = _decode_all(items, lambda x: fit(x, prep.size), prep.size)
            split = Split(items.name, images, labels, ids, len(items))
            split.unreadable.add(bad)
            return split
        key = ('listing', items.name, tuple(prep.size),
               _array_digest(items.labels, items.file_ids, items.offsets, items.lengths))
        out = _decoded_once(items.name, len(items), key, _listing_files(items), decode_split)
    else:
        images, labels, ids, bad = _decode_all(items, lambda x: x)
        out = _ragged_or_uniform(items.name, images, labels, ids, len(items))
        out.unreadable.add(bad)
    if not len(out.labels):
        raise DataUnavailable(f"dataset: no readable image in split '{items.name}' of {items.origin}")
    return out


def _ragged_or_uniform(name, images, labels, ids=None, listed=None):
    if images and len({im.shape for im in images}) == 1:
        return Split(name, np.stack(images), labels, ids, listed)
    return Ragged(name, images, labels, ids, listed)


def _read_tfds(cfg, split, limit):
    b = prepared_builder(cfg)
    try:
        ds = b.as_dataset(split=split, shuffle_files=False, as_supervised=True,
                          decoders={'image': tfds_module().decode.SkipDecoding()})
    except (ValueError, KeyError) as e:
        raise no_split_error(cfg, b, split, e) from None
    if limit:
        # take(), not a '[:limit]' suffix: the split may already be a slice ('train[:2%]').
        ds = ds.take(limit)
    # Decoded here as streamed records are (TFDS's own decoding uses TensorFlow's fast JPEG
    # DCT), so a split gives the same pixels whether it is held in memory or streamed.
    return ds.map(lambda img, label: (decode(img), label), num_parallel_calls=AUTOTUNE,
                  deterministic=True)


def _to_arrays(ds, info, name):
    h, w, _ = info.image_shape

    def fix(img, label):
        return fit(img, (h, w)), tf.cast(label, tf.int32)
    images, labels = [], []
    for x, y in ds.map(fix, num_parallel_calls=AUTOTUNE).batch(1024).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise DataUnavailable(f"dataset: split '{name}' is empty")
    return Split(name, np.concatenate(images), np.concatenate(labels))


def _tfds_images(ds, transform, name):
    """A decoded TFDS split through `transform`, kept whole (imagenet style)."""
    def fix(img, label):
        return transform(img), tf.cast(label, tf.int32)
    images, labels = [], []
    for x, y in ds.map(fix, num_parallel_calls=AUTOTUNE).prefetch(8).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise DataUnavailable(f"dataset: split '{name}' is empty")
    return _ragged_or_uniform(name, images, np.array(labels, np.int32))


def _tfds_count(cfg, split, limit):
    try:
        n = tfds_builder(cfg).info.splits[split].num_examples
    except Exception:  # not prepared (mock data), unknown split: read it to find out
        return None
    return min(n, limit) if limit else n


def _read_tfds_split(cfg, info, prep, split, limit, budget):
    """A TFDS split: decoded through tfds when it fits the budget, else its records streamed."""
    n = _tfds_count(cfg, split, limit)
    if n is not None and n * _tfds_image_bytes(cfg, info, prep) > budget:
        return Stream(split, listing(cfg, split, limit))
    if prep.style != 'cifar':
        return _tfds_images(_read_tfds(cfg, split, limit), lambda x: x, split)
    decode_split = lambda: _to_arrays(_read_tfds(cfg, split, limit), info, split)
    b = prepared_builder(cfg)
    try:
        files = [os.path.join(b.data_dir, f) for f in sorted(tf.io.gfile.listdir(b.data_dir))]
    except tf.errors.OpError:  # no files behind it (tfds.testing.mock_data): nothing to key
        return decode_split()
    key = ('tfds', cfg.name, str(b.version), split, limit, tuple(info.image_shape))
    return _decoded_once(split, n, key, files, decode_split)


def _tfds_image_bytes(cfg, info, prep):
    if prep.style == 'cifar':
        return prep.size[0] * prep.size[1] * 3
    if info.source_shape:
        return info.source_shape[0] * info.source_shape[1] * 3
    try:
        shapes = [x.shape for x, _ in _read_tfds(cfg, cfg.train_split, 16).as_numpy_iterator()]
        return int(np.mean([s[0] * s[1] * 3 for s in shapes]))
    except Exception:
        return 500 * 375 * 3  # a typical ImageNet photograph


def read_split(cfg, info, split, limit=None, resized=False):
    """A split decoded into memory as the model sees it at evaluation (uint8 at the model
    size: resized for the cifar style, resized and centre-cropped for the imagenet style),
    whatever its size. For evaluation tools; training streams what does not fit.

    `resized` (imagenet style, for 10-crop): the images only through resize_short_side,
    kept whole so that ten_crop can take their corners; a Ragged when their shapes differ."""
    prep = prep_for(cfg, info)
    whole = resized and prep.style == 'imagenet'
    if prep.style == 'cifar':
        transform = lambda x: fit(x, prep.size)
    elif whole:
        transform = lambda x: resize_short_side(x, prep.size)
    else:
        transform = lambda x: center_crop(x, prep.size)
    if source_kind(cfg) == 'tfds':
        ds = _read_tfds(cfg, split, limit)
        if prep.style == 'cifar':
            out = _to_arrays(ds, info, split)
        else:
            out = _tfds_images(ds, transform, split)
        out.ids, out.listed = np.arange(len(out.labels)), len(out.labels)
    else:
        items = listing(cfg, split, limit)
        images, labels, ids, bad = _decode_all(items, transform, None if whole else prep.size)
        if whole:
            out = _ragged_or_uniform(split, images, labels, ids, len(items))
        else:
            out = Split(split, images, labels, ids, len(items))
        out.unreadable.add(bad)
        if not len(labels):
            raise DataUnavailable(f"dataset: no readable image in split '{split}' of {items.origin}")
    bad = (out.labels < 0) | (out.labels >= info.num_classes)
    if bad.any():
        raise DataUnavailable(f"dataset: split '{split}' has label {out.labels[bad][0]} outside "
                              f"[0, {info.num_classes})")
    return out


def hold_out(train, fraction):
    """Split `fraction` of train off as a validation split (fixed, seed-independent).

    The draw is over the split's listing, so a split read with some files unreadable, or
    streamed rather than held in memory, holds out the same images."""
    listed = getattr(train, 'listed', None)
    ids = getattr(train, 'ids', None)
    n = size(train) if listed is None or ids is None else listed
    n_val = validation_count(n, fraction)
    order = np.random.default_rng(VALIDATION_SEED).permutation(n)
    keep, val = np.sort(order[:-n_val]), np.sort(order[-n_val:])
    if isinstance(train, Stream):
        return (Stream(train.name, train.listing.subset(keep), train.unreadable),
                Stream('validation', train.listing.subset(val, 'validation'), train.unreadable))
    if listed is not None and ids is not None:
        is_val = np.isin(ids, val)
        keep, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    pick = (lambda a, i: a[i]) if isinstance(train, Split) else (lambda a, i: [a[k] for k in i])
    parts = []
    for name, idx in ((train.name, keep), ('validation', val)):
        part = type(train)(name, pick(train.images, idx), train.labels[idx],
                           None if ids is None else ids[idx], listed)
        part.unreadable = train.unreadable
        parts.append(part)
    return tuple(parts)


def synthetic(info, n, seed=0):
    """Random images and labels of the dataset's shape, for a smoke run with no data."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n,) + tuple(info.image_shape), dtype=np.uint8)
    labels = rng.integers(0, info.num_classes, size=(n,)).astype(np.int32)
    return Split('synthetic', images, labels)


def read_splits(cfg, info, prep, limit):
    budget = _budget_bytes(cfg)
    if source_kind(cfg) == 'tfds':
        return tuple(_read_tfds_split(cfg, info, prep, s, limit, budget)
                     for s in (cfg.train_split, cfg.test_split))
    out = []
    for s in (cfg.train_split, cfg.test_split):
        items = listing(cfg, s, limit)
        if items.labels is not None:
            bad = (items.labels < 0) | (items.labels >= info.num_classes)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataUnavailable(f"dataset: split '{s}' has label {int(items.labels[i])} "
                                      f"({items.key(i)}) outside [0, {info.num_classes})")
        out.append(_materialize(items, prep, budget))
    return tuple(out)
