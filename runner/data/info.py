"""Describing a dataset without reading it (but a small sample of image shapes): its
input shape, class count and names, preprocessing style (DataInfo), how its images
become model inputs (Prep), and the size mistakes caught before the first step.

`auto` preprocessing picks the imagenet style for images larger than 64 px; a TFDS
dataset is described offline through `builder.info`.
"""
import dataclasses
import json
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

from runner import rundir
from runner.data import listings
from runner.data.source import (DEFAULT_IMAGENET_SIZE, DataUnavailable, folder_root, listing, source_kind,
                                tfds_builder)
from runner.data.transforms import decode
from runner.rundir import RunDir

# auto: images up to this many pixels on their longer side get cifar-style preprocessing.
SMALL_IMAGE = 64


@dataclasses.dataclass
class DataInfo:
    description: str
    image_shape: tuple          # the model's input: (height, width, 3)
    num_classes: int
    class_names: Optional[List[str]] = None
    preprocessing: str = 'cifar'    # cifar | imagenet (resolved, never auto)
    source_shape: Optional[tuple] = None  # (height, width) of the images on disk, None if varying
    train_examples: Optional[int] = None  # images listed in the training split, None if unknown


@dataclasses.dataclass
class Prep:
    """How images become model inputs (from the dataset section and DataInfo)."""
    style: str = 'cifar'
    size: tuple = (32, 32)
    flip: bool = True
    crop_padding: int = 4
    alternate_flips: bool = False
    crop_padding_mode: str = 'zeros'


def sample_shapes(items, k=32):
    """(height, width) of the readable ones of k items spread evenly over a listing, first
    and last included: a folder lists its classes one after another, and the first class
    may share a size that the others do not."""
    n = len(items)
    if n > k:
        items = items.subset(np.unique(np.linspace(0, n - 1, k).astype(np.int64)))
    read = listings.read_fn(items)
    shapes = []
    for i in range(len(items)):
        try:
            data, _ = read(tf.constant(i, tf.int64))
            shape = tf.image.extract_jpeg_shape(data) if bool(tf.image.is_jpeg(data)) \
                else tf.shape(decode(data))
            shapes.append(tuple(int(v) for v in shape.numpy()[:2]))
        except (tf.errors.OpError, IOError, OSError):
            continue
    return shapes


def _check_labels(items, num_classes, what):
    labels = items.labels
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataUnavailable(f"dataset.{what}: label {int(labels[i])} of {items.key(i)} is outside "
                              f"[0, {num_classes}) ({int(bad.sum())} such labels; check num_classes, "
                              f"class_names_file and label_offset)")


def resolve_info(cfg, desc, num_classes, names, native_shapes, shape_known=True):
    """DataInfo from what describe found: native_shapes is a list of (h, w) (a sample), or
    [] when unknown (a TFDS feature of unspecified size)."""
    style = getattr(cfg, 'preprocessing', None) or 'auto'
    largest = max((max(s) for s in native_shapes), default=None)
    if style == 'auto':
        style = 'cifar' if largest is not None and largest <= SMALL_IMAGE else 'imagenet'
    uniform = native_shapes[0] if native_shapes and len(set(native_shapes)) == 1 else None
    if cfg.image_size:
        model = tuple(cfg.image_size)
    elif uniform:
        model = uniform
    elif style == 'imagenet':
        model = DEFAULT_IMAGENET_SIZE
    else:
        raise DataUnavailable(f'dataset.image_size: {desc} has images of varying size; '
                              f'set dataset.image_size: [height, width]')
    class_file = getattr(cfg, 'class_names_file', None)
    if class_file:
        try:
            file_names = listings.read_class_names(class_file)
        except listings.SourceError as e:
            raise DataUnavailable(str(e)) from None
        if num_classes is not None and len(file_names) != num_classes:
            raise DataUnavailable(f"dataset.class_names_file: '{class_file}' names {len(file_names)} "
                                  f"classes, the data has {num_classes}")
        names, num_classes = file_names, len(file_names)
    if getattr(cfg, 'num_classes', None):
        if num_classes is not None and cfg.num_classes != num_classes and source_kind(cfg) != 'list':
            raise DataUnavailable(f'dataset.num_classes: {cfg.num_classes}, but the data has {num_classes} classes')
        num_classes = cfg.num_classes
        if names is not None and len(names) != num_classes:
            names = None
    return DataInfo(desc, tuple(model) + (3,), int(num_classes), list(names) if names is not None else None,
                    style, uniform)


def describe(cfg):
    """Shape, class count and preprocessing of the dataset without reading its images (but
    a small sample); works offline for TFDS names through builder.info."""
    kind = source_kind(cfg)
    if kind == 'folder':
        folder_root(cfg)
        items, classes = listings.folder_listing(cfg.image_folder, cfg.train_split)
        shapes = sample_shapes(items)
        if not shapes:
            raise DataUnavailable(f'dataset.image_folder: no readable image under '
                                  f'{os.path.join(cfg.image_folder, cfg.train_split)}')
        info = resolve_info(cfg, f'image folder {cfg.image_folder}', len(classes), classes, shapes)
        return dataclasses.replace(info, train_examples=len(items))
    if kind in ('list', 'tfrecord'):
        train = listing(cfg, cfg.train_split)
        test = listing(cfg, cfg.test_split)
        shapes = sample_shapes(train)
        if not shapes:
            raise DataUnavailable(f'dataset: no readable image among the first items of {train.origin}')
        if kind == 'list':
            desc = f'list file {cfg.train_list}'
            top = int(max(train.labels.max(), test.labels.max())) + 1
            num = None if (cfg.num_classes or cfg.class_names_file) else top
        else:
            desc = f'TFRecords {cfg.tfrecord_train}'
            num = None
        info = resolve_info(cfg, desc, num, None, shapes)
        _check_labels(train, info.num_classes, f'{kind}_train' if kind == 'tfrecord' else 'train_list')
        _check_labels(test, info.num_classes, f'{kind}_test' if kind == 'tfrecord' else 'test_list')
        return dataclasses.replace(info, train_examples=len(train))
    b = tfds_builder(cfg)
    label = b.info.features['label'] if 'label' in b.info.features else None
    image = b.info.features['image'] if 'image' in b.info.features else None
    if label is None or image is None:
        raise DataUnavailable(f"dataset.name: '{cfg.name}' has no 'image' and 'label' "
                              f"features; it is not an image-classification dataset")
    if b.is_prepared() and b.info.splits:
        for key in ('train_split', 'test_split'):
            split = getattr(cfg, key)
            try:
                b.info.splits[split]
            except (KeyError, ValueError):
                raise DataUnavailable(f"dataset.{key}: '{cfg.name}' has no split '{split}' "
                                      f"(splits: {', '.join(b.info.splits)})") from None
    shape = tuple(image.shape)
    shapes = [shape[:2]] if None not in shape[:2] else []
    info = resolve_info(cfg, f'tfds {cfg.name}', label.num_classes, list(label.names), shapes)
    if b.is_prepared() and b.info.splits:
        try:
            info = dataclasses.replace(info, train_examples=int(b.info.splits[cfg.train_split].num_examples))
        except (KeyError, ValueError, TypeError):  # a split expression TFDS cannot count
            pass
    return info


def check_sizes(cfg, info, batch_size):
    """The data-size mistakes that can be caught before step 1 (they would otherwise end
    the run when its turn comes, perhaps hours into a file of experiments): a batch larger
    than the training split, a validation fraction that empties a split, reflect padding
    wider than the image."""
    problem = reflect_padding_problem(cfg.crop_padding, cfg.crop_padding_mode, info.image_shape)
    if problem:
        raise DataUnavailable(problem)
    n = info.train_examples
    if n is None:
        return
    if cfg.validation_fraction:
        n -= validation_count(n, cfg.validation_fraction)
    if n < batch_size:
        left = ' left after the validation split' if cfg.validation_fraction else ''
        raise DataUnavailable(f'train_parameters.batch_size: {batch_size} is larger than the {n} '
                              f'training images{left}')


def reflect_padding_problem(crop_padding, mode, image_shape):
    """Reflect padding mirrors the image's own pixels, so it must be narrower than the image."""
    if mode == 'reflect' and crop_padding >= min(image_shape[:2]):
        return (f'dataset.crop_padding: {crop_padding} pixels of reflect padding need images '
                f'larger than that; the model input is {tuple(image_shape[:2])}')
    return None


def validation_count(n, fraction):
    """Images of n held out by validation_fraction; an error if that empties either split."""
    n_val = int(round(n * fraction))
    if n_val == 0 or n_val == n:
        raise DataUnavailable(f'dataset.validation_fraction: {fraction} of {n} training images '
                              f'leaves an empty split')
    return n_val


def prep_for(cfg, info):
    return Prep(info.preprocessing, tuple(info.image_shape[:2]), cfg.flip, cfg.crop_padding,
                cfg.alternate_flips, cfg.crop_padding_mode)


def default_class_names(names, num_classes):
    """Are `names` only the stand-ins "0".."C-1" (or none at all)? TFDS gives those for a
    dataset that is not prepared here (e.g. cifar10 reads its names from the downloaded
    files), so they say nothing about the real classes."""
    return not names or list(names) == [str(i) for i in range(num_classes)]


def read_data_info(run_dir):
    """The cached DataInfo of the run's data_info.json (written by training or by an earlier
    evaluate/predict/export; rundir.DATA_INFO), or None."""
    from runner.data import info as data_info
    try:
        with open(RunDir(run_dir).data_info) as f:
            d = json.load(f)
        return data_info.DataInfo(d['description'], tuple(d['image_shape']), d['num_classes'],
                                 d.get('class_names'), d.get('preprocessing', 'cifar'))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_data_info(run_dir, info):
    """Cache `info` as the run's data_info.json, unless that would replace real class names
    with the stand-ins "0".."C-1" (a good cache is the only copy once the data is gone)."""
    cached = read_data_info(run_dir)
    if (cached is not None and cached.num_classes == info.num_classes
            and default_class_names(info.class_names, info.num_classes)
            and not default_class_names(cached.class_names, cached.num_classes)):
        return
    try:
        rundir.write_atomic(RunDir(run_dir).data_info, json.dumps({
            'description': info.description, 'image_shape': list(info.image_shape),
            'num_classes': info.num_classes, 'class_names': info.class_names,
            'preprocessing': info.preprocessing}, indent=1) + '\n')
    except OSError:
        pass  # a read-only run directory: fine, the cache is only a convenience
