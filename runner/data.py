"""Input pipelines: TFDS, an image folder, list files or TFRecords, into tf.data.

Where the images come from is runner.sources (a listing of items, nothing decoded). Here:

- **Memory.** A split whose decoded images fit `dataset.cache_budget_mb` (estimated as
  image count x decoded size of a sample) is decoded once and held in memory (CIFAR-10:
  150 MB); a larger one is streamed from disk, read and decoded in parallel for every
  batch, so memory stays flat however large the dataset is.
- **Resumable streams.** Training batches are gathered by index: epoch e visits the items
  in a permutation drawn from (seed, e), and every random number of batch b derives from
  (seed, b), so the stream is a function of the seed alone and `start_batch` resumes it
  exactly and at once (skipped batches are never read). The same holds for every source,
  cached or streamed; both give the same batches.
- **Preprocessing.** `cifar` style: images at the model size, random flips and
  pad-and-crop of whole batches. `imagenet` style: a random resized crop (Inception:
  area 8%-100%, aspect ratio 3/4-4/3) and flip in training; at evaluation the short side
  resized to size/0.875 and a centre crop. `auto` picks imagenet for images larger than
  64 px. Greyscale, CMYK and images with alpha become RGB.
- **Bad files.** A file that cannot be read or decoded is skipped (tf.data
  `ignore_errors` right after the decode), counted, and named in a warning line; it never
  stops a run. A training batch holding one loses that image and is one image short.
"""
import dataclasses
import math
import os
import sys
import threading
from typing import Any, List, Optional

import numpy as np
import tensorflow as tf

from runner import sources
from runner.config import ConfigError

AUTOTUNE = tf.data.AUTOTUNE
# The validation split is the same for every seed and repeat of an experiment.
VALIDATION_SEED = 20161

STYLES = ('auto', 'cifar', 'imagenet')
# auto: images up to this many pixels on their longer side get cifar-style preprocessing.
SMALL_IMAGE = 64
DEFAULT_IMAGENET_SIZE = (224, 224)
CROP_FRACTION = 0.875          # evaluation: resize to size / 0.875, centre crop
CROP_AREA = (0.08, 1.0)        # training: random resized crop (Szegedy et al. 2015)
CROP_RATIO = (3 / 4, 4 / 3)
DEFAULT_CACHE_BUDGET_MB = 2048
DEFAULT_STATS_SAMPLE = 10000
# Known statistics, in [0, 1] pixel units (`dataset.mean_std`).
MEAN_STD = {
    'imagenet': ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    'cifar10': ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    'cifar100': ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
# Arrays larger than this are read through numpy rather than copied into the graph
# (a tf.constant of N bytes costs 2N more memory and seconds a GB).
_EMBED_LIMIT = 256 * 2 ** 20


class DataUnavailable(Exception):
    """The data an experiment names is not on this machine (one-line message)."""


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
class Split:
    """Decoded uint8 images of one size, in memory."""
    name: str
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,)
    # Position of each image in the split's listing, and the listing's length: unreadable
    # files are left out, and the held-out validation split is drawn over the listing.
    ids: Optional[np.ndarray] = None
    listed: Optional[int] = None
    unreadable: Unreadable = dataclasses.field(default_factory=Unreadable, repr=False)


@dataclasses.dataclass
class Ragged:
    """Decoded uint8 images of varying size, in memory (imagenet-style sources that fit)."""
    name: str
    images: List[np.ndarray]
    labels: np.ndarray
    ids: Optional[np.ndarray] = None
    listed: Optional[int] = None
    unreadable: Unreadable = dataclasses.field(default_factory=Unreadable, repr=False)


@dataclasses.dataclass
class Stream:
    """A split read from disk image by image (it does not fit the cache budget)."""
    name: str
    listing: Any  # sources.Listing
    unreadable: Unreadable = dataclasses.field(default_factory=Unreadable, repr=False)

    @property
    def labels(self):
        return self.listing.labels


@dataclasses.dataclass
class Data:
    info: DataInfo
    train: Any           # Split, Ragged or Stream
    eval: Any            # validation split if configured, else the test split
    test: Any
    mean: List[float]
    std: List[float]
    prep: Optional[Prep] = None
    reported_unreadable: int = 0


def size(split):
    """Number of images of a split of any kind."""
    if isinstance(split, Stream):
        return len(split.listing)
    return len(split.labels)


def cached(split):
    return not isinstance(split, Stream)


# ---------------------------------------------------------------------------
# Which source

def source_kind(cfg):
    if cfg.image_folder:
        return 'folder'
    if getattr(cfg, 'train_list', None) or getattr(cfg, 'test_list', None):
        return 'list'
    if getattr(cfg, 'tfrecord_train', None) or getattr(cfg, 'tfrecord_test', None):
        return 'tfrecord'
    return 'tfds'


def _tfds():
    import tensorflow_datasets as tfds
    return tfds


class _NotTfds:
    """Stands in for a TFDS builder when the data are files (`is_prepared`: the files were
    checked by describe)."""

    def __init__(self, cfg):
        self.data_dir = cfg.image_folder or getattr(cfg, 'list_root', None) or ''

    def is_prepared(self):
        return True


def _tfds_builder(cfg):
    if source_kind(cfg) != 'tfds':
        return _NotTfds(cfg)
    tfds = _tfds()
    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        import difflib
        close = difflib.get_close_matches(cfg.name, tfds.list_builders(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        raise DataUnavailable(f"dataset.name: '{cfg.name}' is not a TensorFlow Datasets name{hint}") from None


def data_ready(cfg):
    """Is the experiment's data on this machine (or may TFDS download it)?"""
    if source_kind(cfg) != 'tfds':
        return True  # describe() has listed the files
    b = _tfds_builder(cfg)
    if b.is_prepared():
        return True
    if getattr(b, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        # Preparing needs the archives the user puts in manual_dir, network or not.
        return cfg.download and _has_manual_files(cfg, b)
    return cfg.download


def _has_manual_files(cfg, builder):
    manual = _manual_dir(cfg, builder)
    return os.path.isdir(manual) and bool(os.listdir(manual))


def _manual_dir(cfg, builder):
    if getattr(cfg, 'manual_dir', None):
        return os.path.expanduser(cfg.manual_dir)
    return os.path.join(str(builder.data_dir_root), 'downloads', 'manual')


def _manual_files(builder):
    import re
    text = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None) or ''
    names = re.findall(r'[\w.-]+\.(?:tar\.gz|tgz|tar|zip)\b', text)
    return list(dict.fromkeys(names))


def _not_prepared_message(cfg, builder):
    if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        files = _manual_files(builder)
        what = f"its archives ({', '.join(files)})" if files else 'its manually downloaded files'
        then = ('(dataset.download is on, so the next run prepares it once)' if cfg.download else
                'and set dataset.download: true to prepare it once')
        return (f"dataset: '{cfg.name}' is not prepared in {builder.data_dir} and cannot be downloaded "
                f"automatically: put {what} in {_manual_dir(cfg, builder)} (TFDS's manual_dir; "
                f"dataset.manual_dir moves it) {then}, or point dataset.data_dir at a prepared copy")
    return (f"dataset: '{cfg.name}' is not prepared in {builder.data_dir} and download is off. "
            f"Point dataset.data_dir (or TFDS_DATA_DIR) at a prepared copy, set dataset.download: true "
            f"where there is network, or use dataset.image_folder")


def _prepared_builder(cfg):
    b = _tfds_builder(cfg)
    if b.is_prepared():
        return b
    if not cfg.download:
        raise DataUnavailable(_not_prepared_message(cfg, b))
    tfds = _tfds()
    kwargs = {}
    if getattr(b, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        if not _has_manual_files(cfg, b):
            raise DataUnavailable(_not_prepared_message(cfg, b))
        kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=_manual_dir(cfg, b))
    try:
        b.download_and_prepare(**kwargs)
    except Exception as e:  # network, disk, incomplete manual downloads
        first = sources._first_line(e)
        where = f' (manual_dir {_manual_dir(cfg, b)})' if kwargs else ''
        raise DataUnavailable(f"dataset: downloading '{cfg.name}' failed{where}: {first}") from None
    return b


def _folder_root(cfg):
    root = os.path.expanduser(cfg.image_folder)
    if not os.path.isdir(root):
        raise DataUnavailable(f"dataset.image_folder: '{cfg.image_folder}' is not a directory")
    missing = [s for s in (cfg.train_split, cfg.test_split) if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise DataUnavailable(f"dataset.image_folder: '{cfg.image_folder}' has no split folder "
                              f"'{missing[0]}' (expected <root>/<split>/<class>/<image>)")
    return root


def _folder_builder(cfg):
    """tfds.ImageFolder of the image folder (kept for callers that want TFDS's view)."""
    return _tfds().ImageFolder(_folder_root(cfg))


def _which(cfg, split):
    """'train' or 'test': which list file / TFRecord pattern a split name means."""
    if split == cfg.train_split:
        return 'train'
    if split == cfg.test_split:
        return 'test'
    raise DataUnavailable(f"dataset: no split '{split}': list files and TFRecords have the splits "
                          f"train_split ('{cfg.train_split}') and test_split ('{cfg.test_split}')")


def listing(cfg, split, limit=None):
    """The items of a split, nothing decoded (every source; TFDS must be prepared)."""
    kind = source_kind(cfg)
    offset = getattr(cfg, 'label_offset', None) or 0
    try:
        if kind == 'folder':
            _folder_root(cfg)
            out, _ = sources.folder_listing(cfg.image_folder, split)
        elif kind == 'list':
            part = _which(cfg, split)
            key = f'{part}_list'
            out = sources.list_file_listing(getattr(cfg, key), cfg.list_root, key, split, offset)
        elif kind == 'tfrecord':
            part = _which(cfg, split)
            key = f'tfrecord_{part}'
            out = sources.tfrecord_listing(getattr(cfg, key), key, split, cfg.tfrecord_image_key,
                                           cfg.tfrecord_label_key, offset)
        else:
            b = _prepared_builder(cfg)
            try:
                out = sources.tfds_listing(b, split)
            except (KeyError, ValueError) as e:
                raise _no_split(cfg, b, split, e) from None
    except sources.SourceError as e:
        raise DataUnavailable(str(e)) from None
    return out.take(limit)


# ---------------------------------------------------------------------------
# Decoding and preprocessing (graph functions on single images)

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


# ---------------------------------------------------------------------------
# Describing the data (offline, no image decoded but a small sample)

def _sample_shapes(items, k=32):
    """(height, width) of the readable ones of k items spread evenly over a listing, first
    and last included: a folder lists its classes one after another, and the first class
    may share a size that the others do not."""
    n = len(items)
    if n > k:
        items = items.subset(np.unique(np.linspace(0, n - 1, k).astype(np.int64)))
    read = sources.read_fn(items)
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


def _resolve(cfg, desc, num_classes, names, native_shapes, shape_known=True):
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
            file_names = sources.read_class_names(class_file)
        except sources.SourceError as e:
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
        _folder_root(cfg)
        items, classes = sources.folder_listing(cfg.image_folder, cfg.train_split)
        shapes = _sample_shapes(items)
        if not shapes:
            raise DataUnavailable(f'dataset.image_folder: no readable image under '
                                  f'{os.path.join(cfg.image_folder, cfg.train_split)}')
        info = _resolve(cfg, f'image folder {cfg.image_folder}', len(classes), classes, shapes)
        return dataclasses.replace(info, train_examples=len(items))
    if kind in ('list', 'tfrecord'):
        train = listing(cfg, cfg.train_split)
        test = listing(cfg, cfg.test_split)
        shapes = _sample_shapes(train)
        if not shapes:
            raise DataUnavailable(f'dataset: no readable image among the first items of {train.origin}')
        if kind == 'list':
            desc = f'list file {cfg.train_list}'
            top = int(max(train.labels.max(), test.labels.max())) + 1
            num = None if (cfg.num_classes or cfg.class_names_file) else top
        else:
            desc = f'TFRecords {cfg.tfrecord_train}'
            num = None
        info = _resolve(cfg, desc, num, None, shapes)
        _check_labels(train, info.num_classes, f'{kind}_train' if kind == 'tfrecord' else 'train_list')
        _check_labels(test, info.num_classes, f'{kind}_test' if kind == 'tfrecord' else 'test_list')
        return dataclasses.replace(info, train_examples=len(train))
    b = _tfds_builder(cfg)
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
    info = _resolve(cfg, f'tfds {cfg.name}', label.num_classes, list(label.names), shapes)
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


# ---------------------------------------------------------------------------
# Reading splits into memory, or not

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
    shapes = _sample_shapes(items, k=sample)
    if not shapes:
        return n * prep.size[0] * prep.size[1] * 3
    return int(n * np.mean([h * w * 3 for h, w in shapes]))


def _note(split):
    """A numpy function recording the items of a batch that were dropped (unreadable)."""
    items = split.listing

    def note(requested, kept):
        missing = np.setdiff1d(requested, kept)
        if len(missing):
            split.unreadable.add(items.key(i) for i in missing)
        return np.int64(len(missing))
    return note


def _decode_all(items, transform, uniform_size=None):
    """Every item of a listing decoded (and transformed) in parallel; unreadable ones left
    out. Returns (images: array if uniform_size else list, labels, ids, bad keys)."""
    read = sources.read_fn(items)
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
        images, labels, ids, bad = _decode_all(items, lambda x: fit(x, prep.size), prep.size)
        out = Split(items.name, images, labels, ids, len(items))
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


def _no_split(cfg, builder, split, error):
    # TFDS's split errors run to several lines (the split grammar); the message gets the first.
    return DataUnavailable(f"dataset: '{cfg.name}' has no split '{split}' "
                           f"(splits: {', '.join(builder.info.splits)}): {sources._first_line(error)}")


def _read_tfds(cfg, split, limit):
    b = _prepared_builder(cfg)
    try:
        ds = b.as_dataset(split=split, shuffle_files=False, as_supervised=True,
                          decoders={'image': _tfds().decode.SkipDecoding()})
    except (ValueError, KeyError) as e:
        raise _no_split(cfg, b, split, e) from None
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
        n = _tfds_builder(cfg).info.splits[split].num_examples
    except Exception:  # not prepared (mock data), unknown split: read it to find out
        return None
    return min(n, limit) if limit else n


def _read_tfds_split(cfg, info, prep, split, limit, budget):
    """A TFDS split: decoded through tfds when it fits the budget, else its records streamed."""
    n = _tfds_count(cfg, split, limit)
    if n is not None and n * _tfds_image_bytes(cfg, info, prep) > budget:
        return Stream(split, listing(cfg, split, limit))
    ds = _read_tfds(cfg, split, limit)
    if prep.style == 'cifar':
        return _to_arrays(ds, info, split)
    return _tfds_images(ds, lambda x: x, split)


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


# ---------------------------------------------------------------------------
# Statistics

def channel_stats(images):
    """Per-channel mean and standard deviation in [0, 1] units, in float64 chunks."""
    acc = _StatsAccumulator()
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), 4096):
            acc.add_pixels(images[start:start + 4096])
    else:  # a list of images of varying size
        for img in images:
            acc.add_pixels(img[None])
    return acc.mean_std()


class _StatsAccumulator:
    def __init__(self):
        self.total = np.zeros(3)
        self.sq = np.zeros(3)
        self.n = 0

    def add_pixels(self, x):
        x = x.astype(np.float64) / 255.0
        self.total += x.sum(axis=(0, 1, 2))
        self.sq += (x * x).sum(axis=(0, 1, 2))
        self.n += x.shape[0] * x.shape[1] * x.shape[2]

    def add_sums(self, total, sq, n):
        self.total += total
        self.sq += sq
        self.n += n

    def mean_std(self):
        mean = self.total / max(self.n, 1)
        std = np.sqrt(np.maximum(self.sq / max(self.n, 1) - mean * mean, 1e-12))
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def image_sums(img):
    """Per-channel sum and sum of squares of one uint8 image in [0, 1] units (float64), its
    pixel count, height and width."""
    x = tf.cast(img, tf.float64) / 255.0
    shape = tf.shape(img)
    return (tf.reduce_sum(x, axis=[0, 1]), tf.reduce_sum(x * x, axis=[0, 1]),
            tf.cast(shape[0] * shape[1], tf.int64), shape[0], shape[1])


def stream_stats(split, sample=None, transform=None, progress=None):
    """Statistics of a streamed split in constant memory: (mean, std, count, min (h, w),
    max (h, w)), over all items or a fixed random sample of `sample` of them (the same on
    every call). `transform` is applied to each decoded image before its pixels are summed
    (e.g. `fit` for the cifar style); the size range is that of the images as decoded.
    `progress(done, total)` is called after every chunk of images."""
    items = split.listing
    n = len(items)
    index = np.arange(n)
    if sample and sample < n:
        index = np.sort(np.random.default_rng(VALIDATION_SEED).permutation(n)[:sample])
    read = sources.read_fn(items)

    def load(i):
        data, _ = read(i)
        return decode(data), i

    def sums(img, i):
        shape = tf.shape(img)
        if transform is not None:
            img = transform(img)
        total, sq, count, _, _ = image_sums(img)
        return total, sq, count, shape[0], shape[1], i
    # In order, so the float sums (and the rounded result) are the same on every run.
    ds = (tf.data.Dataset.from_tensor_slices(index)
          .map(load, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
          .map(sums, num_parallel_calls=AUTOTUNE, deterministic=True).batch(256).prefetch(2))
    acc = _StatsAccumulator()
    seen = np.zeros(n, bool)
    lo, hi = [np.inf, np.inf], [0, 0]
    for total, sq, count, h, w, i in ds.as_numpy_iterator():
        acc.add_sums(total.sum(0), sq.sum(0), int(count.sum()))
        seen[i] = True
        lo = [min(lo[0], h.min()), min(lo[1], w.min())]
        hi = [max(hi[0], h.max()), max(hi[1], w.max())]
        if progress is not None:
            progress(int(np.searchsorted(index, i[-1])) + 1, len(index))  # items done, bad ones too
    bad = index[~seen[index]]
    split.unreadable.add(items.key(i) for i in bad)
    mean, std = acc.mean_std()
    count = int(seen.sum())
    return mean, std, count, (tuple(int(v) for v in lo) if count else None), \
        (tuple(int(v) for v in hi) if count else None)


def split_stats(split, sample=None, prep=None):
    """Mean and std of any split: all images of a cached one, a sample of a streamed one."""
    if isinstance(split, Stream):
        transform = (lambda x: fit(x, prep.size)) if prep is not None and prep.style == 'cifar' else None
        return stream_stats(split, sample, transform)[:2]
    return channel_stats(split.images)


# ---------------------------------------------------------------------------
# Loading

def synthetic(info, n, seed=0):
    """Random images and labels of the dataset's shape, for a smoke run with no data."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n,) + tuple(info.image_shape), dtype=np.uint8)
    labels = rng.integers(0, info.num_classes, size=(n,)).astype(np.int32)
    return Split('synthetic', images, labels)


def _read_splits(cfg, info, prep, limit):
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


def _say(text):
    print(text, file=sys.stderr, flush=True)


def load(cfg, info=None, limit=None, allow_synthetic=False):
    """Everything one experiment reads. `limit` caps each split (smoke runs).

    With `allow_synthetic`, data that is not on this machine is replaced by random
    images of the right shape and class count, so a smoke run needs no data.
    """
    info = info or describe(cfg)
    prep = prep_for(cfg, info)
    try:
        train, test = _read_splits(cfg, info, prep, limit)
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
    preset = MEAN_STD.get(getattr(cfg, 'mean_std', None) or '')
    mean, std = preset if preset else (None, None)
    # normalize: false needs no statistics: on a streamed split they cost a decoding pass.
    if cfg.normalize and ((cfg.mean is None and mean is None) or (cfg.std is None and std is None)):
        sample = getattr(cfg, 'stats_sample', None)
        sample = DEFAULT_STATS_SAMPLE if sample is None else sample
        if isinstance(train, Stream) and (not sample or sample < size(train)):
            _say(f'data: computing mean and std from {min(sample or size(train), size(train))} of '
                 f'{size(train)} training images (give dataset.mean and std, or mean_std, to skip this)')
        mean, std = split_stats(train, sample, prep)
    mean = cfg.mean if cfg.mean is not None else mean
    std = cfg.std if cfg.std is not None else std
    if not cfg.normalize:
        mean, std = [0.0], [1.0]
    data = Data(info, train, val, test, list(mean), list(std), prep)
    line = unreadable_report(data)
    if line:
        _say(line)
    return data


def unreadable_report(data, new_only=True):
    """One warning line about the files skipped so far, or None (nothing new)."""
    counts = {}
    for split in (data.train, data.eval, data.test):
        u = getattr(split, 'unreadable', None)
        if u is not None and id(u) not in counts:
            counts[id(u)] = (split.name, u)
    total = sum(len(u) for _, u in counts.values())
    if not total or (new_only and total == data.reported_unreadable):
        return None
    data.reported_unreadable = total
    names = [k for _, u in counts.values() for k in u.first(3)][:3]
    per = ', '.join(f'{name} {len(u)}' for name, u in counts.values() if len(u))
    more = ', ...' if total > len(names) else ''
    return (f"warning: data: {total} unreadable image file(s) skipped ({per}): "
            f"{', '.join(names)}{more}")


# ---------------------------------------------------------------------------
# tf.data

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


def _loader(split):
    """A graph function: item index -> (uint8 image [h, w, 3] as stored, int32 label).
    For a Stream it reads and decodes, and fails on a bad file."""
    if isinstance(split, Stream):
        read = sources.read_fn(split.listing)

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
    load = _loader(split)
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


def train_dataset(split, batch_size, seed, mean, std, flip=True, crop_padding=4, start_batch=0,
                  prep=None):
    """Endless, shuffled, augmented batches of (float32 images, int32 labels).

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
            return x, tf.gather(labels, idx)

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
        return augment_batch(x, tf.stack([seed, b]), flip, padding, mask, pad_mode), y

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


def train_input(data, cfg, batch_size, seed, start_batch=0):
    """The training batches of a loaded experiment (Trainer.start_input); `cfg` is its
    dataset section."""
    prep = dataclasses.replace(data.prep or prep_for(cfg, data.info), flip=cfg.flip,
                               crop_padding=cfg.crop_padding, alternate_flips=cfg.alternate_flips,
                               crop_padding_mode=cfg.crop_padding_mode)
    problem = reflect_padding_problem(prep.crop_padding, prep.crop_padding_mode, data.info.image_shape)
    if problem:
        raise ConfigError(problem)
    return train_dataset(data.train, batch_size, seed, data.mean, data.std, prep.flip,
                         prep.crop_padding, start_batch=start_batch, prep=prep)


def eval_input(data, split, batch_size):
    """The evaluation batches of one split of a loaded experiment (Trainer.evaluate)."""
    prep = data.prep or Prep('cifar', tuple(data.info.image_shape[:2]))
    return eval_dataset(split, batch_size, data.mean, data.std, prep)
