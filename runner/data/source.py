"""Which source an experiment's images come from, and access to it: TensorFlow Datasets
builders (preparing them, manually downloaded archives, the message when a dataset is not
on this machine), the image-folder root, and the listing of a split of any source
(runner.data.listings lists the items; nothing is decoded here).

TFDS: https://www.tensorflow.org/datasets/api_docs/python/tfds/builder (builders,
`download_and_prepare`, `manual_dir`).
"""
import os

from runner.common import did_you_mean, first_line

# The model input of images of varying size (imagenet preprocessing) without dataset.image_size.
DEFAULT_IMAGENET_SIZE = (224, 224)


class DataUnavailable(Exception):
    """The data an experiment names is not on this machine (one-line message)."""


def source_kind(cfg):
    """'folder', 'list', 'tfrecord' or 'tfds': where the dataset section's images come from."""
    if cfg.image_folder:
        return 'folder'
    if getattr(cfg, 'train_list', None) or getattr(cfg, 'test_list', None):
        return 'list'
    if getattr(cfg, 'tfrecord_train', None) or getattr(cfg, 'tfrecord_test', None):
        return 'tfrecord'
    return 'tfds'


def tfds_module():
    """tensorflow_datasets, imported when first needed (it takes seconds)."""
    import tensorflow_datasets as tfds
    return tfds


class _NotTfds:
    """Stands in for a TFDS builder when the data are files (`is_prepared`: the files were
    checked by describe)."""

    def __init__(self, cfg):
        self.data_dir = cfg.image_folder or getattr(cfg, 'list_root', None) or ''

    def is_prepared(self):
        return True


def tfds_builder(cfg):
    """The TFDS builder of the experiment's dataset (not prepared, perhaps), or a stand-in
    whose `is_prepared` is true when the data are files."""
    if source_kind(cfg) != 'tfds':
        return _NotTfds(cfg)
    tfds = tfds_module()
    try:
        return tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        hint = did_you_mean(cfg.name, tfds.list_builders())
        raise DataUnavailable(f"dataset.name: '{cfg.name}' is not a TensorFlow Datasets name{hint}") from None


def input_from_metadata(cfg):
    """(model input shape, class count, description) of a TFDS dataset from TFDS's metadata,
    without TensorFlow (tensorflow_datasets imports it only to read data), as describe gives
    them; None where describe must look at more (files, a class-names file, a name TFDS does
    not know, a num_classes to check against the data's)."""
    if source_kind(cfg) != 'tfds' or cfg.class_names_file or cfg.num_classes:
        return None
    try:
        features = tfds_builder(cfg).info.features
    except DataUnavailable:
        return None
    if 'label' not in features or 'image' not in features:
        return None
    native = tuple(features['image'].shape)[:2]
    if cfg.image_size:
        size = tuple(cfg.image_size)
    elif None not in native:
        size = native
    elif cfg.preprocessing in ('auto', 'imagenet'):
        size = DEFAULT_IMAGENET_SIZE
    else:
        return None
    return size + (3,), int(features['label'].num_classes), f'tfds {cfg.name}'


def download_if_needed(cfg):
    """With download on, TFDS downloads and prepares a dataset it can fetch by itself that is not
    here yet (once, before the smoke run); DataUnavailable in one line if it cannot."""
    if source_kind(cfg) != 'tfds' or not cfg.download:
        return
    b = tfds_builder(cfg)
    if not b.is_prepared() and not getattr(b, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        host = unreachable_host(b)
        if host:
            raise DataUnavailable(offline_message(cfg, b, host))
        prepared_builder(cfg)


def data_ready(cfg):
    """Is the experiment's data on this machine (or may TFDS prepare it from its archives)?"""
    if source_kind(cfg) != 'tfds':
        return True  # describe() has listed the files
    b = tfds_builder(cfg)
    if b.is_prepared():
        return True
    if getattr(b, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        # Preparing needs the archives the user puts in manual_dir, network or not.
        return cfg.download and _has_manual_files(cfg, b)
    return False


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


def not_prepared_message(cfg, builder):
    """The one line saying where to put a TFDS dataset that is not prepared here."""
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


def unreachable_host(builder):
    """The host of the dataset's homepage (for CIFAR its download host too) when it cannot be
    reached within seconds, else None: offline, TFDS would retry its download for minutes
    before failing. Behind a proxy nothing is probed (TFDS's requests go through it)."""
    import socket
    import urllib.parse
    import urllib.request
    host = urllib.parse.urlparse(builder.info.homepage or '').hostname
    if not host or urllib.request.getproxies():
        return None
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return host
    return None


def offline_message(cfg, builder, host):
    """The one line for a dataset that is neither here nor downloadable now: both ways out."""
    tool = (' (for CIFAR-10 the offline quick start\'s make_tfds_cifar10.py builds one)'
            if cfg.name == 'cifar10' else '')
    return (f"dataset: '{cfg.name}' is not prepared in {builder.data_dir} and cannot be downloaded "
            f"now ({host} is unreachable). With network access, run again and TFDS downloads it "
            f"once; offline, point dataset.data_dir (or TFDS_DATA_DIR) at a prepared copy{tool}, "
            f"or use dataset.image_folder")


def prepared_builder(cfg):
    b = tfds_builder(cfg)
    if b.is_prepared():
        return b
    if not cfg.download:
        raise DataUnavailable(not_prepared_message(cfg, b))
    tfds = tfds_module()
    kwargs = {}
    if getattr(b, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
        if not _has_manual_files(cfg, b):
            raise DataUnavailable(not_prepared_message(cfg, b))
        kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=_manual_dir(cfg, b))
    try:
        b.download_and_prepare(**kwargs)
    except Exception as e:  # network, disk, incomplete manual downloads
        first = first_line(e)
        where = f' (manual_dir {_manual_dir(cfg, b)})' if kwargs else ''
        raise DataUnavailable(f"dataset: downloading '{cfg.name}' failed{where}: {first}") from None
    return b


def folder_root(cfg):
    root = os.path.expanduser(cfg.image_folder)
    if not os.path.isdir(root):
        raise DataUnavailable(f"dataset.image_folder: '{cfg.image_folder}' is not a directory")
    missing = [s for s in (cfg.train_split, cfg.test_split) if not os.path.isdir(os.path.join(root, s))]
    if missing:
        raise DataUnavailable(f"dataset.image_folder: '{cfg.image_folder}' has no split folder "
                              f"'{missing[0]}' (expected <root>/<split>/<class>/<image>)")
    return root


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
    from runner.data import listings  # imports TensorFlow: only here, so --list needs none
    kind = source_kind(cfg)
    offset = getattr(cfg, 'label_offset', None) or 0
    try:
        if kind == 'folder':
            folder_root(cfg)
            out, _ = listings.folder_listing(cfg.image_folder, split)
        elif kind == 'list':
            part = _which(cfg, split)
            key = f'{part}_list'
            out = listings.list_file_listing(getattr(cfg, key), cfg.list_root, key, split, offset)
        elif kind == 'tfrecord':
            part = _which(cfg, split)
            key = f'tfrecord_{part}'
            out = listings.tfrecord_listing(getattr(cfg, key), key, split, cfg.tfrecord_image_key,
                                           cfg.tfrecord_label_key, offset)
        else:
            b = prepared_builder(cfg)
            try:
                out = listings.tfds_listing(b, split)
            except (KeyError, ValueError) as e:
                raise no_split_error(cfg, b, split, e) from None
    except listings.SourceError as e:
        raise DataUnavailable(str(e)) from None
    return out.take(limit)


def no_split_error(cfg, builder, split, error):
    """DataUnavailable for a split name TFDS does not know."""
    # TFDS's split errors run to several lines (the split grammar); the message gets the first.
    return DataUnavailable(f"dataset: '{cfg.name}' has no split '{split}' "
                           f"(splits: {', '.join(builder.info.splits)}): {first_line(error)}")
