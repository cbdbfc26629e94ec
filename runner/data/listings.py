"""Where a split's images are: a listing of items and their labels, made without decoding.

Four sources, chosen by the keys of the `dataset` section:

- an image folder (`image_folder`): <root>/<split>/<class>/<image>, listed exactly as
  tfds.ImageFolder lists it (sorted, then shuffled with the split name as seed), so held-out
  validation images and `limit` slices are the same as before;
- list files (`train_list`, `test_list`, optional `list_root`): one `relative/path label`
  line per image, as in the seed's ImageNet runner;
- TFRecord shards (`tfrecord_train`, `tfrecord_test`: glob patterns) of tf.train.Examples
  with `image/encoded` and `image/class/label`;
- a prepared TensorFlow Datasets dataset (`name`), whose record files are listed through
  the split's file instructions (TFDS slicing syntax such as `train[:10%]` works).

A `Listing` holds a split's items in a fixed order. `read_fn(listing)` gives a graph function
reading item i's encoded image bytes and its label; records are read at their byte offsets,
so any item can be read without touching the ones before it. That is what lets the streamed
training input start at any batch at once.
"""
import dataclasses
import os
import random
import struct
import threading
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from runner.common import first_line
from runner.data import diskcache
from runner.config.schema import DatasetConfig

# The file types tfds.ImageFolder lists; keeping them keeps the listing (and so the
# held-out validation images) identical to what tfds.ImageFolder gave.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# The schema's defaults, for a caller that passes None.
DEFAULT_IMAGE_KEY = DatasetConfig.tfrecord_image_key
DEFAULT_LABEL_KEY = DatasetConfig.tfrecord_label_key


class SourceError(Exception):
    """The data a configuration names cannot be listed (one-line message)."""


@dataclasses.dataclass
class Listing:
    """The items of one split, in a fixed order; nothing decoded.

    `kind` 'files': `paths` are image files. `kind` 'records': item i is the TFRecord record
    at byte `offsets[i]` (length `lengths[i]`) of `files[file_ids[i]]`, parsed by `parse`
    into (encoded image, label) in graph mode. `labels` is None only when the records carry
    labels that are not read ahead (TFDS, whose labels are checked when it is prepared).
    """
    name: str
    kind: str
    labels: Optional[np.ndarray]
    paths: Optional[np.ndarray] = None
    files: Optional[List[str]] = None
    file_ids: Optional[np.ndarray] = None
    offsets: Optional[np.ndarray] = None
    lengths: Optional[np.ndarray] = None
    parse: Optional[Callable] = None
    # What the listing came from, for messages: 'image folder /data/x', ...
    origin: str = ''

    def __len__(self):
        if self.kind == 'files':
            return len(self.paths)
        return len(self.offsets)

    def key(self, i):
        """How a message names item i: its path, or shard and record number."""
        i = int(i)
        if self.kind == 'files':
            return str(self.paths[i])
        return f'{self.files[int(self.file_ids[i])]}@{int(self.offsets[i])}'

    def subset(self, index, name=None):
        """The items at `index` (an int array), in that order."""
        index = np.asarray(index, np.int64)
        pick = lambda a: None if a is None else a[index]
        return dataclasses.replace(self, name=name or self.name, labels=pick(self.labels),
                                   paths=pick(self.paths), file_ids=pick(self.file_ids),
                                   offsets=pick(self.offsets), lengths=pick(self.lengths))

    def take(self, limit):
        return self if not limit or limit >= len(self) else self.subset(np.arange(limit))


# ---------------------------------------------------------------------------
# Reading items

class _RecordReader:
    """Reads byte ranges of record files; thread-safe (os.pread), descriptors kept open."""

    MAX_OPEN = 256

    def __init__(self, files):
        self.files = list(files)
        self.local = all('://' not in f for f in self.files)
        self.fds = {}
        self.lock = threading.Lock()

    def _fd(self, file_id):
        with self.lock:
            fd = self.fds.get(file_id)
            if fd is None and len(self.fds) < self.MAX_OPEN:
                fd = self.fds[file_id] = os.open(self.files[file_id], os.O_RDONLY)
            return fd

    def read(self, file_id, offset, length):
        file_id, offset, length = int(file_id), int(offset), int(length)
        # A TFRecord record: uint64 length, uint32 CRC of the length, data, uint32 CRC.
        start = offset + 12
        if self.local:
            fd = self._fd(file_id)
            if fd is None:
                fd = os.open(self.files[file_id], os.O_RDONLY)
                try:
                    data = os.pread(fd, length, start)
                finally:
                    os.close(fd)
            else:
                data = os.pread(fd, length, start)
        else:
            with tf.io.gfile.GFile(self.files[file_id], 'rb') as f:
                f.seek(start)
                data = f.read(length)
        if len(data) != length:
            raise IOError(f'{self.files[file_id]}: record at byte {offset} is cut short')
        # An object array: a numpy bytes_ scalar would drop trailing zero bytes.
        return np.array(data, dtype=object)

    def __del__(self, close=os.close):
        # `close` bound now: at interpreter exit the module's globals may already be gone.
        for fd in self.fds.values():
            try:
                close(fd)
            except OSError:
                pass


def read_fn(listing):
    """A graph function: item index (int64) -> (encoded image bytes, int32 label).

    Reading may fail (a missing file); decoding is left to the caller."""
    labels = None if listing.labels is None else tf.constant(listing.labels, tf.int32)
    if listing.kind == 'files':
        paths = tf.constant(listing.paths.astype(str))

        def read(i):
            return tf.io.read_file(tf.gather(paths, i)), tf.gather(labels, i)
        return read
    reader = _RecordReader(listing.files)
    file_ids = tf.constant(listing.file_ids, tf.int64)
    offsets = tf.constant(listing.offsets, tf.int64)
    lengths = tf.constant(listing.lengths, tf.int64)
    parse = listing.parse

    def read(i):
        record = tf.numpy_function(reader.read, [tf.gather(file_ids, i), tf.gather(offsets, i),
                                                 tf.gather(lengths, i)], tf.string, stateful=False)
        record.set_shape([])
        image, label = parse(record)
        if labels is not None:
            label = tf.gather(labels, i)
        return image, tf.cast(label, tf.int32)
    return read


# ---------------------------------------------------------------------------
# Image folders

def _folders(path):
    return sorted(f for f in tf.io.gfile.listdir(path) if tf.io.gfile.isdir(os.path.join(path, f)))


_FOLDER_CACHE = {}


def folder_listing(root, split):
    """<root>/<split>/<class>/<image>, in tfds.ImageFolder's order. Class names (sorted) are
    the class folders of every split. Returns (Listing, class_names)."""
    root = os.path.expanduser(root)
    splits = [s.rstrip('/') for s in _folders(root)]
    stamp = tuple(tf.io.gfile.stat(os.path.join(root, s)).mtime_nsec for s in splits)
    key = (root, split, stamp)
    if key in _FOLDER_CACHE:
        return _FOLDER_CACHE[key]
    classes = set()
    examples = []
    for s in splits:
        for c in _folders(os.path.join(root, s)):
            c = c.rstrip('/')
            classes.add(c)
            if s != split:
                continue
            d = os.path.join(root, s, c)
            names = [f for f in tf.io.gfile.listdir(d) if f.lower().endswith(IMAGE_EXTENSIONS)]
            examples += [(p, c) for p in sorted(os.path.join(d, f) for f in names)]
    classes = sorted(classes)
    # tfds.ImageFolder shuffles the examples with the split name as seed; so do we.
    random.Random(split).shuffle(examples)
    index = {c: i for i, c in enumerate(classes)}
    listing = Listing(split, 'files', np.array([index[c] for _, c in examples], np.int32),
                      paths=np.array([p for p, _ in examples], dtype=object),
                      origin=f'image folder {root}')
    if len(_FOLDER_CACHE) > 16:
        _FOLDER_CACHE.clear()
    _FOLDER_CACHE[key] = (listing, classes)
    return listing, classes


# ---------------------------------------------------------------------------
# Class names, list files

def _read_lines(path, what):
    """The stripped lines of a text file, blank lines and # comments skipped, with their
    line numbers. A UTF-8 byte-order mark (as Windows editors write) is not part of the
    first line; a file that is not UTF-8 text (an image named by mistake) is a SourceError."""
    try:
        # utf-8-sig: drops a leading BOM, reads plain UTF-8 (and ASCII) as it is.
        with open(path, encoding='utf-8-sig') as f:
            lines = [(n, l.strip()) for n, l in enumerate(f, 1)]
    except OSError as e:
        raise SourceError(f"dataset.{what}: cannot read '{path}': {e.strerror}") from None
    except UnicodeDecodeError:
        raise SourceError(f"dataset.{what}: '{path}' is not a text file") from None
    # NUL bytes are valid UTF-8 but no text file of paths or names holds them.
    if any('\0' in l for _, l in lines):
        raise SourceError(f"dataset.{what}: '{path}' is not a text file")
    return [(n, l) for n, l in lines if l and not l.startswith('#')]


def read_class_names(path):
    """One class name a line, in label order. A leading 'i ' or 'i:' (the line's own
    label, then any whitespace: `0<TAB>tench`) is dropped, so `0 tench` and `tench` name
    the same class; the rest of the line is the name, spaces and all."""
    lines = [l for _, l in _read_lines(os.path.expanduser(path), 'class_names_file')]
    names = []
    for i, line in enumerate(lines):
        parts = line.replace(':', ' ', 1).split(None, 1)
        head, rest = parts[0], (parts[1].strip() if len(parts) > 1 else '')
        names.append(rest if head == str(i) and rest else line)
    if not names:
        raise SourceError(f"dataset.class_names_file: '{path}' names no classes")
    return names


def _resolve_list(path, root, key):
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and not os.path.exists(path) and root:
        in_root = os.path.join(os.path.expanduser(root), path)
        if os.path.exists(in_root):
            return in_root
    if not os.path.isfile(path):
        raise SourceError(f"dataset.{key}: '{path}' is not a file")
    return path


_LIST_CACHE = {}


def list_file_listing(list_path, root, key, split, label_offset=0):
    """A list file: `relative/path label` a line (blank lines and # comments skipped);
    paths are relative to `root`, or to the list file's folder when root is null."""
    path = _resolve_list(list_path, root, key)
    base = os.path.expanduser(root) if root else os.path.dirname(os.path.abspath(path))
    if root and not os.path.isdir(base):
        raise SourceError(f"dataset.list_root: '{root}' is not a directory")
    st = os.stat(path)
    cache_key = (os.path.abspath(path), base, st.st_size, st.st_mtime_ns, label_offset, split)
    if cache_key in _LIST_CACHE:
        return _LIST_CACHE[cache_key]
    paths, labels = [], []
    for n, line in _read_lines(path, key):
        # The label is the last field, so a path may hold spaces.
        parts = line.rsplit(None, 1)
        try:
            label = int(parts[1])
        except (IndexError, ValueError):
            raise SourceError(f"dataset.{key}: line {n} of {path} is not 'relative/path label': "
                              f"{line[:80]!r}") from None
        paths.append(os.path.join(base, parts[0]))
        labels.append(label + label_offset)
    if not paths:
        raise SourceError(f"dataset.{key}: {path} lists no images")
    listing = Listing(split, 'files', np.array(labels, np.int64).astype(np.int32),
                      paths=np.array(paths, dtype=object), origin=f'list file {path}')
    if len(_LIST_CACHE) > 16:
        _LIST_CACHE.clear()
    _LIST_CACHE[cache_key] = listing
    return listing


# ---------------------------------------------------------------------------
# TFRecords

def record_offsets(path):
    """Byte offset and data length of every record of a TFRecord file, from the record
    headers alone (a seek past each record's data)."""
    offsets, lengths = [], []
    try:
        with tf.io.gfile.GFile(path, 'rb') as f:
            size = f.size()
            pos = 0
            while pos < size:
                head = f.read(12)
                if len(head) < 12:
                    raise SourceError(f'{path}: truncated TFRecord file (a record header is cut short)')
                (length,) = struct.unpack('<Q', head[:8])
                offsets.append(pos)
                lengths.append(length)
                pos += 12 + length + 4
                if pos > size:
                    raise SourceError(f'{path}: truncated TFRecord file (the last record is cut short)')
                f.seek(pos)
    except (tf.errors.OpError, OSError) as e:
        # A directory, a file without read permission, one that vanished since the glob.
        raise SourceError(_unreadable_shard(path, e)) from None
    return offsets, lengths


def _unreadable_shard(path, error):
    return f'{path}: cannot read it as a TFRecord file ({first_line(error)})'



# Under the runner's cache directory (runner.data.diskcache): the record indexes.
INDEX_CACHE = 'tfrecord-index'


def _index_files(files, label_key, key):
    """(file_ids, offsets, lengths, labels) of every record of `files`; labels read with
    one sequential pass over the files (label_key None: not read). Kept in
    ~/.cache/convnet-runner, keyed by the files' paths, sizes and times. A file that cannot
    be read is a SourceError naming it and dataset.`key`."""
    try:
        stamps = diskcache.file_stamps(files)
    except diskcache.Gone as e:  # since the glob
        raise SourceError(f'dataset.{key}: {_unreadable_shard(e.path, e.cause)}') from None
    cache = diskcache.entry_path(INDEX_CACHE, label_key, stamps)
    z = diskcache.load(cache)
    if z is not None and {'file_ids', 'offsets', 'lengths', 'labels'} <= set(z):
        return z['file_ids'], z['offsets'], z['lengths'], (z['labels'] if label_key else None)
    file_ids, offsets, lengths = [], [], []
    for k, f in enumerate(files):
        try:
            o, l = record_offsets(f)
        except SourceError as e:
            raise SourceError(f'dataset.{key}: {e}') from None
        file_ids += [k] * len(o)
        offsets += o
        lengths += l
    labels = None
    if label_key:
        spec = {label_key: tf.io.FixedLenFeature([], tf.int64)}
        ds = (tf.data.TFRecordDataset(files, buffer_size=8 << 20)
              .map(lambda r: tf.io.parse_single_example(r, spec)[label_key],
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(4096))
        try:
            labels = np.concatenate(list(ds.as_numpy_iterator())) if offsets else np.zeros(0, np.int64)
        except tf.errors.InvalidArgumentError as e:
            raise SourceError(f"dataset: the TFRecords {files[0]}... have records without an int64 "
                              f"feature '{label_key}' ({first_line(e)}); set dataset.tfrecord_label_key"
                              ) from None
        except tf.errors.OpError as e:
            # A corrupt record (bad CRC): the one pass over all files does not say whose.
            raise SourceError(f'dataset.{key}: {_unreadable_shard(_bad_record_file(files) or files[0], e)}'
                              ) from None
    out = (np.array(file_ids, np.int32), np.array(offsets, np.int64), np.array(lengths, np.int64), labels)
    diskcache.save(cache, file_ids=out[0], offsets=out[1], lengths=out[2],
                   labels=labels if labels is not None else np.zeros(0))
    return out


def _bad_record_file(files):
    """The first of `files` TensorFlow cannot read through (only after a pass failed)."""
    for f in files:
        try:
            for _ in tf.data.TFRecordDataset(f):
                pass
        except tf.errors.OpError:
            return f
    return None


def tfrecord_files(pattern, key):
    matches = sorted(tf.io.gfile.glob(os.path.expanduser(pattern)))
    # A pattern such as 'dir/*' also matches sub-directories; they hold no records.
    files = [f for f in matches if not tf.io.gfile.isdir(f)]
    if not files:
        raise SourceError(f"dataset.{key}: '{pattern}' matches only directories, no file" if matches
                          else f"dataset.{key}: no file matches '{pattern}'")
    return files


def _check_image_key(files, file_ids, offsets, lengths, image_key, key):
    """The first record has a bytes feature `image_key`; else a message naming the key and
    the features the records do have (a wrong key would otherwise leave every image
    unreadable, with nothing pointing at the key)."""
    data = _RecordReader(files).read(file_ids[0], offsets[0], lengths[0]).item()
    try:
        features = tf.train.Example.FromString(data).features.feature
    except DecodeError:  # not a tf.train.Example: left to the parsing that reports it
        return
    if image_key in features and features[image_key].WhichOneof('kind') == 'bytes_list':
        return
    have = ', '.join(f"'{k}' ({features[k].WhichOneof('kind')})" for k in sorted(features)) or 'none'
    what = 'no bytes feature' if image_key in features else 'no feature'
    raise SourceError(f"dataset.tfrecord_image_key: the records of {files[int(file_ids[0])]} "
                      f"({key}) have {what} '{image_key}' (features: {have})")


def tfrecord_listing(pattern, key, split, image_key=None, label_key=None, label_offset=0):
    """TFRecord shards of tf.train.Examples (the common ImageNet layout: `image/encoded`,
    `image/class/label`), in sorted file order, records in file order."""
    image_key = image_key or DEFAULT_IMAGE_KEY
    label_key = label_key or DEFAULT_LABEL_KEY
    files = tfrecord_files(pattern, key)
    file_ids, offsets, lengths, labels = _index_files(files, label_key, key)
    if not len(offsets):
        raise SourceError(f"dataset.{key}: the files matching '{pattern}' hold no records")
    try:
        _check_image_key(files, file_ids, offsets, lengths, image_key, key)
    except (OSError, tf.errors.OpError) as e:  # OpError: GFile on gs:// and other remote files
        raise SourceError(f'dataset.{key}: {files[int(file_ids[0])]}: {first_line(e)}') from None
    spec = {image_key: tf.io.FixedLenFeature([], tf.string)}

    def parse(record):
        return tf.io.parse_single_example(record, spec)[image_key], tf.constant(0, tf.int32)
    return Listing(split, 'records', (labels + label_offset).astype(np.int32), files=files,
                   file_ids=file_ids, offsets=offsets, lengths=lengths, parse=parse,
                   origin=f'TFRecords {pattern}')


# ---------------------------------------------------------------------------
# TensorFlow Datasets

def tfds_listing(builder, split):
    """The records of a prepared TFDS split (slicing syntax allowed), in the order
    `as_dataset(shuffle_files=False)` reads them; labels stay in the records."""
    import tensorflow_datasets as tfds
    if str(getattr(builder.info, 'file_format', 'tfrecord')).lower().split('.')[-1] != 'tfrecord':
        raise SourceError(f"dataset: '{builder.name}' is stored as {builder.info.file_format}; "
                          f"streaming reads TFRecord-format TFDS datasets only (raise "
                          f"dataset.cache_budget_mb to hold it in memory)")
    instructions = builder.info.splits[split].file_instructions
    files, file_ids, offsets, lengths = [], [], [], []
    for ins in instructions:
        # Newer TFDS gives the whole path (relative when data_dir is), older the file name.
        name = str(ins.filename)
        path = name if tf.io.gfile.exists(name) else os.path.join(builder.data_dir, os.path.basename(name))
        o, l = record_offsets(str(path))
        if len(o) != ins.examples_in_shard:
            raise SourceError(f'{path}: holds {len(o)} records, TFDS expects {ins.examples_in_shard}')
        k = len(files)
        files.append(str(path))
        file_ids += [k] * ins.take
        offsets += o[ins.skip:ins.skip + ins.take]
        lengths += l[ins.skip:ins.skip + ins.take]
    features = builder.info.features
    decoders = {'image': tfds.decode.SkipDecoding()}

    def parse(record):
        ex = features.deserialize_example(record, decoders=decoders)
        return ex['image'], tf.cast(ex['label'], tf.int32)
    return Listing(split, 'records', None, files=files, file_ids=np.array(file_ids, np.int32),
                   offsets=np.array(offsets, np.int64), lengths=np.array(lengths, np.int64),
                   parse=parse, origin=f'tfds {builder.name}')
