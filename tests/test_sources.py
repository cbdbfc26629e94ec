"""Data sources beyond CIFAR (issue 7): an ImageNet-layout folder with bad files in it, list
files, TFRecords; imagenet-style preprocessing and its 10-crop; streaming in flat memory;
the stats command; a few training steps through each source.

The images are CIFAR-10 pictures from ../shared upscaled to 64-96 px (so `auto` picks the
imagenet style), made once per session; tests that need them are skipped where ../shared
is absent.
"""
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import CIFAR_JPEG, ROOT, one_line_error, subprocess_env
from runner.data import (info as data_info,
                         loader as data_loader,
                         pipeline as data_pipeline,
                         source as data_source,
                         splits as data_splits,
                         transforms as data_transforms)
from runner.data import listings as sources
from runner.config.schema import DatasetConfig

from PIL import Image as PIL  # pillow: the test extra
needs_cifar = pytest.mark.needs('cifar10-jpeg')

CLASSES = ('airplane', 'automobile', 'bird')
PER_CLASS = {'train': 12, 'test': 4}
# Among the training images, beside 36 ordinary RGB JPEGs:
ODD = {
    'grey': 'train/bird/grey.png',           # a greyscale PNG
    'cmyk': 'train/airplane/cmyk.jpg',       # a CMYK JPEG
    'truncated': 'train/airplane/truncated.jpg',  # the first half of a JPEG
    'text': 'train/automobile/notes.jpg',    # a text file named .jpg
}
BAD = ('truncated', 'text')
MODEL_SIZE = 48  # the model's input in the training runs: crops of 48 x 48


def _upscaled(split, cls, i, size):
    """CIFAR-10 image i of a class, upscaled to size = (width, height)."""
    path = os.path.join(CIFAR_JPEG, split, cls, f'{i:04d}.jpg')
    return PIL.open(path).convert('RGB').resize(size, PIL.BICUBIC)


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, 'JPEG', quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope='session')
def imagenet_folder(tmp_path_factory):
    """<root>/<split>/<class>/<image> of CIFAR-10 images upscaled to 64-96 px, sides drawn
    independently, with the ODD files among the training images. Returns (root, sizes):
    sizes maps each readable file's path relative to root to its (height, width)."""
    root = tmp_path_factory.mktemp('imagenet_layout')
    rng = np.random.default_rng(7)
    sizes = {}
    for split, n in PER_CLASS.items():
        for cls in CLASSES:
            os.makedirs(root / split / cls)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(64, 97, 2))
                rel = f'{split}/{cls}/{i:04d}.jpg'
                (root / rel).write_bytes(_jpeg(_upscaled(split, cls, i, (w, h))))
                sizes[rel] = (h, w)
    _upscaled('train', 'bird', 20, (72, 90)).convert('L').save(root / ODD['grey'])
    sizes[ODD['grey']] = (90, 72)
    (root / ODD['cmyk']).write_bytes(_jpeg(_upscaled('train', 'airplane', 20, (80, 64)).convert('CMYK')))
    sizes[ODD['cmyk']] = (64, 80)
    whole = _jpeg(_upscaled('train', 'airplane', 21, (96, 96)))
    (root / ODD['truncated']).write_bytes(whole[:len(whole) // 2])
    (root / ODD['text']).write_text('not an image, whatever the name says\n')
    return str(root), sizes


def tf_pixels(path):
    """The file decoded as the pipeline decodes it (TensorFlow), uint8 [h, w, 3]."""
    return data_transforms.decode(tf.io.read_file(path)).numpy()


def numpy_stats(images):
    """Per-channel mean and std over every pixel of every image (pixel-weighted)."""
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    return pixels.mean(0), pixels.std(0)


def readable(sizes, split='train'):
    return sorted(rel for rel in sizes if rel.startswith(split + '/'))


# ---------------------------------------------------------------------------
# Decoding odd files

@needs_cifar
def test_greyscale_cmyk_and_alpha_become_rgb(imagenet_folder, tmp_path):
    root, _ = imagenet_folder
    grey = tf_pixels(os.path.join(root, ODD['grey']))
    assert grey.shape == (90, 72, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 0], np.asarray(PIL.open(os.path.join(root, ODD['grey']))))
    cmyk_path = os.path.join(root, ODD['cmyk'])
    assert PIL.open(cmyk_path).mode == 'CMYK'
    cmyk = tf_pixels(cmyk_path)
    pil_rgb = np.asarray(PIL.open(cmyk_path).convert('RGB'), np.float64)
    assert cmyk.shape == (64, 80, 3)
    # The same colours as PIL's conversion (not inverted, not a channel dropped).
    assert np.abs(cmyk - pil_rgb).mean() < 4
    rgba = np.concatenate([cmyk, np.full((64, 80, 1), 7, np.uint8)], axis=-1)
    (tmp_path / 'a.png').write_bytes(tf.io.encode_png(rgba).numpy())
    np.testing.assert_array_equal(tf_pixels(str(tmp_path / 'a.png')), cmyk)


# ---------------------------------------------------------------------------
# Listings: folder, list files, TFRecords

@needs_cifar
def test_folder_listing_finds_every_file_with_its_class(imagenet_folder):
    root, sizes = imagenet_folder
    listing, classes = sources.folder_listing(root, 'train')
    assert classes == list(CLASSES)
    rel = [os.path.relpath(p, root) for p in listing.paths]
    assert sorted(rel) == sorted(readable(sizes) + [ODD[b] for b in BAD])
    assert [CLASSES[k] for k in listing.labels] == [r.split('/')[1] for r in rel]
    # the order is shuffled (tfds.ImageFolder's) and the same on every call
    assert rel != sorted(rel)
    again, _ = sources.folder_listing(root, 'train')
    assert list(again.paths) == list(listing.paths)


def write_lists(root, sizes, tmp_path, extra_label=None):
    """The seed's layout: `relative/path label` lists beside a class names file."""
    for split in ('train', 'test'):
        lines = [f'{rel} {CLASSES.index(rel.split("/")[1])}' for rel in readable(sizes, split)]
        if split == 'train' and extra_label is not None:
            lines.append(f'{readable(sizes)[0]} {extra_label}')
        (tmp_path / f'{split}.txt').write_text('# path label\n' + '\n'.join(lines) + '\n')
    (tmp_path / 'names.txt').write_text(''.join(f'{i} {c}\n' for i, c in enumerate(CLASSES)))
    return {'list_root': root, 'train_list': str(tmp_path / 'train.txt'),
            'test_list': str(tmp_path / 'test.txt'), 'class_names_file': str(tmp_path / 'names.txt')}


@needs_cifar
def test_list_files_read_the_same_images_and_labels_as_the_folder(imagenet_folder, tmp_path):
    root, sizes = imagenet_folder
    cfg = DatasetConfig(**write_lists(root, sizes, tmp_path), image_size=[MODEL_SIZE] * 2)
    info = data_info.describe(cfg)
    assert info.class_names == list(CLASSES) and info.num_classes == 3
    assert info.preprocessing == 'imagenet' and info.image_shape == (MODEL_SIZE, MODEL_SIZE, 3)
    items = data_source.listing(cfg, 'train')
    assert [os.path.relpath(p, root) for p in items.paths] == readable(sizes)
    data = data_loader.load(cfg, info)
    assert isinstance(data.train, data_splits.Ragged)  # whole images of varying size, in memory
    want = [tf_pixels(os.path.join(root, rel)) for rel in readable(sizes)]
    assert len(data.train.images) == len(want)
    for got, exp in zip(data.train.images, want):
        np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(data.train.labels,
                                  [CLASSES.index(r.split('/')[1]) for r in readable(sizes)])


@needs_cifar
def test_cached_and_streamed_give_the_same_batches(imagenet_folder, tmp_path):
    root, sizes = imagenet_folder
    lists = write_lists(root, sizes, tmp_path)  # the readable images only
    batches = {}
    for budget in (None, 0):
        cfg = DatasetConfig(**lists, image_size=[MODEL_SIZE] * 2, cache_budget_mb=budget,
                            mean_std='imagenet')
        data = data_loader.load(cfg)
        assert data_splits.cached(data.train) == (budget is None)
        batches[budget] = list(data_loader.train_input(data, cfg, 8, seed=4, start_batch=3)
                               .take(2).as_numpy_iterator())
        batches[budget] += list(data_loader.eval_input(data, data.test, 8).as_numpy_iterator())
    for (xa, ya), (xb, yb) in zip(batches[None], batches[0]):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_allclose(xa, xb, atol=1e-6)


@pytest.mark.parametrize('augmentation', [{}, dict(alternate_flips=True, crop_padding_mode='reflect')],
                         ids=['default', 'airbench'])
@pytest.mark.needs('cifar10-tfds')
def test_a_tfds_dataset_streamed_gives_the_batches_it_gives_from_memory(cifar10_tfds_dir, augmentation):
    batches = {}
    for budget in (None, 0):
        cfg = DatasetConfig(name='cifar10', data_dir=cifar10_tfds_dir, cache_budget_mb=budget,
                            mean_std='cifar10', **augmentation)
        data = data_loader.load(cfg, limit=64)
        assert data_splits.cached(data.train) == (budget is None) and data_splits.size(data.train) == 64
        batches[budget] = list(data_loader.train_input(data, cfg, 16, seed=1, start_batch=2)
                               .take(2).as_numpy_iterator())
        batches[budget] += list(data_loader.eval_input(data, data.test, 16).as_numpy_iterator())
    assert len(batches[0]) == 6
    for (xa, ya), (xb, yb) in zip(batches[None], batches[0]):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def write_tfrecords(root, sizes, out_dir, shards=3, label_base=1):
    """tf.train.Examples in the common ImageNet layout, labels counted from label_base."""
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for split in ('train', 'test'):
        rels = readable(sizes, split)
        for s in range(shards):
            path = os.path.join(out_dir, f'{split}-{s:05d}-of-{shards:05d}')
            with tf.io.TFRecordWriter(path) as w:
                for rel in rels[s::shards]:
                    label = CLASSES.index(rel.split('/')[1]) + label_base
                    ex = tf.train.Example(features=tf.train.Features(feature={
                        'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(
                            value=[open(os.path.join(root, rel), 'rb').read()])),
                        'image/class/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        'image/filename': tf.train.Feature(bytes_list=tf.train.BytesList(value=[rel.encode()])),
                    }))
                    w.write(ex.SerializeToString())
        files[split] = os.path.join(out_dir, f'{split}-*')
    return files


@needs_cifar
def test_tfrecord_round_trip(imagenet_folder, tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))  # the record index cache
    root, sizes = imagenet_folder
    files = write_tfrecords(root, sizes, str(tmp_path / 'rec'))
    cfg = DatasetConfig(tfrecord_train=files['train'], tfrecord_test=files['test'], num_classes=3,
                        label_offset=-1, image_size=[MODEL_SIZE] * 2)
    items = data_source.listing(cfg, 'train')
    # every record, read alone at its byte offset: the file's bytes and its label
    parse = {'image/filename': tf.io.FixedLenFeature([], tf.string),
             'image/encoded': tf.io.FixedLenFeature([], tf.string)}
    expected = {}
    for path in sorted(tf.io.gfile.glob(files['train'])):
        for r in tf.data.TFRecordDataset(path).as_numpy_iterator():
            ex = tf.io.parse_single_example(r, parse)
            expected[len(expected)] = ex['image/filename'].numpy().decode()
    assert len(items) == len(expected) == len(readable(sizes))
    read = sources.read_fn(items)
    for i in (len(items) - 1, 0, 17, 5):  # any order
        encoded, label = read(tf.constant(i, tf.int64))
        rel = expected[i]
        assert encoded.numpy() == open(os.path.join(root, rel), 'rb').read()
        assert int(label) == CLASSES.index(rel.split('/')[1])
    # through the pipeline, cached and streamed: the images the files hold
    for budget in (None, 0):
        data = data_loader.load(dataclasses_replace(cfg, cache_budget_mb=budget, mean_std='imagenet'))
        assert data_splits.cached(data.train) == (budget is None)
        ids = np.arange(len(items))
        x, y = _decode_items(data.train, ids)
        for k in (0, 9, len(ids) - 1):
            np.testing.assert_array_equal(x[k], tf_pixels(os.path.join(root, expected[k])))
        np.testing.assert_array_equal(y, [CLASSES.index(expected[k].split('/')[1]) for k in ids])


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def _decode_items(split, ids):
    """Images and labels of a cached or streamed split by listing position."""
    if data_splits.cached(split):
        return [split.images[i] for i in ids], split.labels[ids]
    load = data_pipeline.item_loader(split)
    out = [load(tf.constant(i, tf.int64)) for i in ids]
    return [x.numpy() for x, _ in out], np.array([int(y) for _, y in out])


# ---------------------------------------------------------------------------
# Preprocessing

def test_imagenet_style_crops_shapes_and_values():
    rng = np.random.default_rng(0)
    img = tf.constant(rng.integers(40, 200, (80, 120, 3), dtype=np.uint8))
    size = (56, 56)
    # evaluation: short side to 56 / 0.875 = 64, then the central 56 x 56
    out = data_transforms.center_crop(img, size).numpy()
    resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(img, (64, 96), antialias=True)), 0, 255),
                      tf.uint8).numpy()
    np.testing.assert_array_equal(out, resized[4:60, 20:76])
    # training: a window of 8%-100% of the area, aspect 3/4-4/3, resized; reproducible
    crops = [data_transforms.random_resized_crop(img, size, tf.constant([s, 1], tf.int64)).numpy()
             for s in range(12)]
    assert all(c.shape == (56, 56, 3) and c.dtype == np.uint8 for c in crops)
    assert all(c.min() >= 40 - 1 and c.max() <= 200 + 1 for c in crops)  # antialiased, not beyond
    assert len({c.tobytes() for c in crops}) == 12
    np.testing.assert_array_equal(
        crops[3], data_transforms.random_resized_crop(img, size, tf.constant([3, 1], tf.int64)).numpy())
    # a smooth gradient shows the window's scale: zoomed-in crops span less of it
    ramp = tf.constant(np.tile(np.linspace(0, 255, 120)[None, :, None], (80, 1, 3)).astype(np.uint8))
    spans = [np.ptp(data_transforms.random_resized_crop(ramp, size, tf.constant([s, 2], tf.int64)).numpy()[..., 0]
                    .astype(int)) for s in range(20)]
    assert min(spans) < 120 < max(spans)


def test_ten_crop_is_the_corners_and_centre_of_the_resized_image_and_mirrors():
    img = tf.constant(np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    size = (48, 48)
    resized = data_transforms.resize_short_side(img, size).numpy()
    assert resized.shape == (55, 78, 3)  # 48 / 0.875 = 54.9 -> 55; 100 * 54.9 / 70 -> 78
    views = data_transforms.ten_crop(tf.constant(resized), size).numpy()
    r = resized
    want = [r[:48, :48], r[:48, -48:], r[-48:, :48], r[-48:, -48:], r[3:51, 15:63]]
    want += [v[:, ::-1] for v in want]
    assert views.shape == (10, 48, 48, 3)
    for got, exp in zip(views, want):
        np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(views[4], data_transforms.center_crop(img, size).numpy())


@needs_cifar
@pytest.mark.parametrize('style', ['cifar', 'imagenet'])
def test_train_and_eval_batches_of_each_style(imagenet_folder, style):
    root, _ = imagenet_folder
    size = 32 if style == 'cifar' else MODEL_SIZE
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    cfg = DatasetConfig(image_folder=root, image_size=[size, size], preprocessing=style,
                        mean=mean, std=std, cache_budget_mb=0)
    data = data_loader.load(cfg)
    assert data.info.preprocessing == style and not data_splits.cached(data.train)
    lo = (0 - np.array(mean)) / std - 1e-5
    hi = (1 - np.array(mean)) / std + 1e-5
    x, y = next(iter(data_loader.train_input(data, cfg, 8, seed=0)))
    assert x.shape[1:] == (size, size, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert 7 <= x.shape[0] <= 8  # one short where an unreadable file was drawn
    # every value a normalised pixel (the cifar style's zero padding, 0, is the mean colour)
    assert (x.numpy() >= lo).all() and (x.numpy() <= hi).all()
    assert set(y.numpy()) <= {0, 1, 2}
    batches = list(data_loader.eval_input(data, data.test, 5))
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    for xb, _ in batches:
        assert xb.shape[1:] == (size, size, 3)
        assert (xb.numpy() >= lo).all() and (xb.numpy() <= hi).all()


# ---------------------------------------------------------------------------
# Bad files, bad labels

@needs_cifar
@pytest.mark.parametrize('budget', [None, 0], ids=['cached', 'streamed'])
def test_bad_files_are_skipped_counted_and_named_never_stopping(imagenet_folder, budget, capsys):
    root, sizes = imagenet_folder
    cfg = DatasetConfig(image_folder=root, image_size=[MODEL_SIZE] * 2, cache_budget_mb=budget)
    data = data_loader.load(cfg)  # computes mean and std: reads every training file
    assert data_splits.cached(data.train) == (budget is None)
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning: data:')]
    assert len(warnings) == 1, warnings
    assert '2 unreadable image file(s) skipped' in warnings[0]
    for b in BAD:
        assert os.path.join(root, ODD[b]) in warnings[0]
    # the statistics are those of the readable images
    mean, std = numpy_stats([tf_pixels(os.path.join(root, rel)) for rel in readable(sizes)])
    np.testing.assert_allclose(data.mean, mean, atol=2e-6)
    np.testing.assert_allclose(data.std, std, atol=2e-6)
    # One epoch of training batches of 2: every readable image once; a batch that drew a
    # bad file (streamed) is one image short.
    n = data_splits.size(data.train)
    assert n == (38 if budget is None else 40)
    counts = [len(y) for _, y in data_loader.train_input(data, cfg, 2, seed=3).take(n // 2)]
    assert sum(counts) == 38 and min(counts) >= 1
    assert len(data.train.unreadable) == 2
    assert data_loader.unreadable_report(data) is None, 'nothing new to report'


@needs_cifar
def test_label_outside_the_class_range_is_one_line_before_training(imagenet_folder, tmp_path, capsys):
    from runner import cli
    root, sizes = imagenet_folder
    lists = write_lists(root, sizes, tmp_path, extra_label=7)
    path = tmp_path / 'e.yaml'
    path.write_text(textwrap.dedent(f"""
        module: tiny_models
        model: tiny_cnn
        dataset: {json.dumps(dict(lists, image_size=[MODEL_SIZE] * 2))}
        train_parameters: {{logdir: {tmp_path / 'logs'}, run_name: bad_label}}
    """))
    assert cli.main([str(path), '--no-smoke']) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f'error: {path}: experiment 1 (bad_label): dataset.train_list: label 7 of ')
    assert 'outside [0, 3)' in err[0] and 'Traceback' not in err[0]
    assert not (tmp_path / 'logs').exists()


# ---------------------------------------------------------------------------
# python -m runner stats

def run_stats(capsys, *argv):
    from runner.commands import stats
    code = stats.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def stats_json(capsys, *argv):
    code, out, err = run_stats(capsys, *argv, '--json')
    assert code == 0, err
    return [json.loads(l) for l in out.splitlines()], err


@needs_cifar
def test_stats_of_an_image_folder_are_numpys(imagenet_folder, capsys):
    root, sizes = imagenet_folder
    [r], err = stats_json(capsys, root)
    rels = readable(sizes)
    assert r['images'] == len(rels) == 38 and r['listed'] == 40 and r['unreadable'] == 2
    assert sorted(r['unreadable_files']) == sorted(os.path.join(root, ODD[b]) for b in BAD)
    assert all(os.path.join(root, ODD[b]) in err for b in BAD)  # the warning names them
    hs, ws = zip(*(sizes[rel] for rel in rels))
    assert (r['min_height'], r['max_height'], r['min_width'], r['max_width']) == \
        (min(hs), max(hs), min(ws), max(ws))
    # numpy on the same files decoded by TensorFlow: equal to the printed 6 decimals
    mean, std = numpy_stats([tf_pixels(os.path.join(root, rel)) for rel in rels])
    np.testing.assert_allclose(r['mean'], mean, atol=1e-6)
    np.testing.assert_allclose(r['std'], std, atol=1e-6)
    # ... and decoded by PIL: the same (TensorFlow's default JPEG DCT would be 0.005 lower
    # in red and blue; the pipeline uses the accurate one, as PIL does)
    pil = [np.asarray(PIL.open(os.path.join(root, rel)).convert('RGB')) for rel in rels]
    pil_mean, pil_std = numpy_stats(pil)
    np.testing.assert_allclose(r['mean'], pil_mean, atol=1e-5)
    np.testing.assert_allclose(r['std'], pil_std, atol=1e-5)
    # the human-readable form: YAML lines for the dataset section
    code, out, _ = run_stats(capsys, root)
    assert code == 0
    pasted = [l.strip() for l in out.splitlines() if l.strip().startswith(('mean:', 'std:'))]
    import yaml
    pasted = yaml.safe_load('\n'.join(pasted))
    assert pasted['mean'] == pytest.approx(r['mean'], abs=1e-6) and pasted['std'] == pytest.approx(r['std'], abs=1e-6)


def test_stats_on_a_set_with_known_mean_and_a_sample(tmp_path, capsys):
    """PNG images (lossless) of several sizes: numpy knows every pixel."""
    rng = np.random.default_rng(5)
    images = []
    for i in range(9):
        h, w = 20 + 7 * i, 50 - 3 * i
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[..., 0] = 255 if i % 3 == 0 else 0     # channel 0: a third of the images white
        img[..., 1] //= 2                            # channel 1: half range
        d = tmp_path / 'set' / 'train' / f'c{i % 2}'
        d.mkdir(parents=True, exist_ok=True)
        (d / f'{i}.png').write_bytes(tf.io.encode_png(img).numpy())
        images.append(img)
    [r], _ = stats_json(capsys, tmp_path / 'set')
    mean, std = numpy_stats(images)
    assert r['images'] == 9 and r['unreadable'] == 0
    assert (r['min_height'], r['max_height'], r['min_width'], r['max_width']) == (20, 76, 26, 50)
    np.testing.assert_allclose(r['mean'], mean, atol=1e-6)
    np.testing.assert_allclose(r['std'], std, atol=1e-6)
    assert r['mean'][0] == pytest.approx(sum(im.shape[0] * im.shape[1] for im in images[::3])
                                         / sum(im.shape[0] * im.shape[1] for im in images), abs=1e-6)
    # a sample: that many images, the same ones every time
    [s1], _ = stats_json(capsys, tmp_path / 'set', '--sample', 4)
    [s2], _ = stats_json(capsys, tmp_path / 'set', '--sample', 4)
    assert s1['images'] == 4 and s1['listed'] == 9 and s1 == s2 and s1['mean'] != r['mean']


@needs_cifar
def test_stats_of_an_experiment_file_are_what_training_computes(imagenet_folder, tmp_path, capsys):
    root, sizes = imagenet_folder
    lists = write_lists(root, sizes, tmp_path)
    path = tmp_path / 'e.yaml'
    docs = [{'model': 'tiny_cnn', 'module': 'tiny_models',
             'dataset': {'image_folder': root, 'image_size': [24, 24], 'preprocessing': 'cifar'},
             'train_parameters': {'run_name': 'small'}},
            {'model': 'tiny_cnn', 'module': 'tiny_models',
             'dataset': dict(lists, image_size=[MODEL_SIZE] * 2),
             'train_parameters': {'run_name': 'listed'},
             'grid': {'train_parameters.batch_size': [8, 16]}}]
    import yaml
    path.write_text(yaml.safe_dump_all(docs))
    results, _ = stats_json(capsys, path)
    assert [r['experiments'] for r in results] == [['small'], ['listed_batch_size-8', 'listed_batch_size-16']]
    [listed], _ = stats_json(capsys, path, '--experiment', 'listed_batch_size-16')
    assert listed['experiments'] == ['listed_batch_size-16']
    assert dict(listed, experiments=None) == dict(results[1], experiments=None)
    from runner.config.expand import load_experiments
    for r, exp in zip(results, load_experiments(str(path))[:2]):
        data = data_loader.load(exp.dataset)
        np.testing.assert_allclose(r['mean'], data.mean, atol=1e-6)
        np.testing.assert_allclose(r['std'], data.std, atol=1e-6)
    # cifar style: resized to the model size first, so not the whole images' statistics
    assert results[0]['mean'] != results[1]['mean'] and results[0]['images'] == 38


@pytest.mark.needs('cifar10-tfds')
def test_stats_of_a_tfds_dataset_are_numpys(cifar10_tfds_dir, capsys, monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.chdir(os.path.dirname(cifar10_tfds_dir))  # a relative data_dir works too
    [r], _ = stats_json(capsys, 'cifar10', '--data-dir', os.path.basename(cifar10_tfds_dir),
                        '--split', 'train[:300]')
    images = [x for x, _ in tfds.load('cifar10', split='train[:300]', data_dir=cifar10_tfds_dir,
                                      as_supervised=True).as_numpy_iterator()]
    mean, std = numpy_stats(images)
    assert r['images'] == 300 and (r['min_height'], r['max_width']) == (32, 32)
    np.testing.assert_allclose(r['mean'], mean, atol=1e-6)
    np.testing.assert_allclose(r['std'], std, atol=1e-6)


@pytest.mark.parametrize('argv, needle', [
    (['/no/such/dir'], '/no/such/dir: no such file or directory'),
    (['cifar11'], "'cifar11' is not a TensorFlow Datasets name; did you mean"),
    (['EXP', '--experiment', 'lsited'], "has no experiment named 'lsited'; did you mean 'listed'?"),
    (['NOTRAIN'], "has no split folder 'train'"),
    (['cifar10', '--experiment', 'x'], '--experiment: only with an experiment file'),
])
def test_stats_errors_are_one_line_exit_2(argv, needle, tmp_path, capsys):
    exp = tmp_path / 'e.yaml'
    exp.write_text('model: tiny_cnn\nmodule: tiny_models\ndataset: {image_folder: /x}\n'
                   'train_parameters: {run_name: listed}\n')
    (tmp_path / 'empty' / 'test').mkdir(parents=True)
    argv = [{'EXP': str(exp), 'NOTRAIN': str(tmp_path / 'empty')}.get(a, a) for a in argv]
    code, out, err = run_stats(capsys, *argv)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith('error: ') and needle in lines[0], err
    assert out == ''


# ---------------------------------------------------------------------------
# Streaming in flat memory

# Peak resident memory from VmHWM, this process image's own high-water mark: ru_maxrss
# would not do, Linux carries it across exec from the parent (pytest, gigabytes by then).
MEMORY_SCRIPT = """
import json, sys
from runner.data import (info as data_info,
                         loader as data_loader,
                         source as data_source,
                         splits as data_splits,
                         transforms as data_transforms)
from runner.config.schema import DatasetConfig

def peak_mb():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024

out = []
for budget in [int(b) for b in sys.argv[2:]]:  # 0: streamed; else cached, after the streamed run
    cfg = DatasetConfig(image_folder=sys.argv[1], image_size=[64, 64], preprocessing='imagenet',
                        cache_budget_mb=budget, mean_std='imagenet')
    data = data_loader.load(cfg)
    n = data_splits.size(data.train)
    seen = sum(len(y) for _, y in data_loader.train_input(data, cfg, 20, seed=0).take(n // 20))
    out.append({'cached': data_splits.cached(data.train), 'images': seen,
                'peak_mb': peak_mb()})
print(json.dumps(out))
"""


def _folder_of(root, per_class, side=160):
    """CIFAR-10 training images of every class upscaled to side x side (77 kB decoded)."""
    classes = sorted(os.listdir(os.path.join(CIFAR_JPEG, 'train')))
    for split, n in (('train', per_class), ('test', 1)):
        for c in classes:
            os.makedirs(os.path.join(root, split, c))
            for i in range(n):
                _upscaled(split, c, i, (side, side)).save(os.path.join(root, split, c, f'{i:04d}.jpg'),
                                                         quality=90)
    return str(root)


@needs_cifar
def test_streaming_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak resident memory of a process that trains on one epoch of 200 or of 800 images
    (77 kB each decoded), streamed (cache_budget_mb: 0). The control: the 800 images then
    held in memory in the same process, which the measurement does see."""
    small = _folder_of(tmp_path / 'n', 20)
    large = _folder_of(tmp_path / '4n', 80)
    script = tmp_path / 'stream.py'
    script.write_text(MEMORY_SCRIPT)
    runs = {name: subprocess.Popen([sys.executable, str(script), *args], env=subprocess_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, args in (('small', [small, '0']), ('large', [large, '0', '1024']))}
    out = {}
    for name, p in runs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    (small,), (large, control) = out['small'], out['large']
    assert (small['images'], large['images'], control['images']) == (200, 800, 800)
    assert not small['cached'] and not large['cached'] and control['cached']
    decoded_mb = 600 * 160 * 160 * 3 / 2 ** 20  # what the 600 more images take decoded: 44 MB
    assert large['peak_mb'] - small['peak_mb'] < decoded_mb / 3, out
    # the control: the same 800 images held in memory raise the peak by more than their size
    assert control['peak_mb'] - large['peak_mb'] > decoded_mb, out


# ---------------------------------------------------------------------------
# Training through each source, then evaluate's 10-crop

TRAIN_DOC = """
module: tiny_models
model: tiny_cnn
dataset: {dataset}
train_parameters:
  logdir: {logdir}
  run_name: {name}
  batch_size: 8
  eval_batch_size: 16
  steps: 3
  lr_values: [0.01]
  lr_boundaries: [3]
  log_interval: 1
  val_interval: 3
  checkpoint_interval: 3
"""


@pytest.fixture(scope='module')
def trained(imagenet_folder, tmp_path_factory):
    """run_experiments.py on one file of three experiments, one per source: the folder with
    its bad files streamed, the list files held in memory, the TFRecords streamed."""
    root, sizes = imagenet_folder
    tmp = tmp_path_factory.mktemp('trained')
    lists = write_lists(root, sizes, tmp)
    records = write_tfrecords(root, sizes, str(tmp / 'rec'), label_base=0)
    size = [MODEL_SIZE] * 2
    datasets = {
        'folder': {'image_folder': root, 'image_size': size, 'cache_budget_mb': 0},
        'listed': dict(lists, image_size=size),
        'records': {'tfrecord_train': records['train'], 'tfrecord_test': records['test'],
                    'class_names_file': lists['class_names_file'], 'image_size': size,
                    'cache_budget_mb': 0, 'mean_std': 'imagenet'},
    }
    path = tmp / 'sources.yaml'
    path.write_text('---'.join(TRAIN_DOC.format(dataset=json.dumps(d), logdir=tmp / 'logs', name=name)
                               for name, d in datasets.items()))
    proc = subprocess.run([sys.executable, 'run_experiments.py', str(path), '--no-smoke'], cwd=ROOT,
                          env=subprocess_env(XDG_CACHE_HOME=str(tmp / 'cache')), capture_output=True,
                          text=True, timeout=600)
    return {'proc': proc, 'logs': tmp / 'logs', 'root': root, 'sizes': sizes, 'names': list(datasets)}


@needs_cifar
def test_a_few_training_steps_through_each_source(trained):
    proc = trained['proc']
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in trained['names']:
        s = json.loads((trained['logs'] / name / 'summary.json').read_text())
        assert s['status'] == 'finished' and s['steps'] == 3, s
        assert 0 <= s['test_top1_accuracy'] <= 1
        metrics = [json.loads(l) for l in (trained['logs'] / name / 'metrics.jsonl').read_text().splitlines()]
        assert [m['examples'] for m in metrics if m.get('kind') == 'test'][-1] == 12
    # the bad files of the folder: named in a warning, and the run went on
    warnings = [l for l in proc.stderr.splitlines() if l.startswith('warning: data:')]
    assert warnings and all(os.path.join(trained['root'], ODD[b]) in warnings[0] for b in BAD), proc.stderr[-3000:]
    # the folder run's mean and std (computed streaming, bad files skipped) are numpy's
    import yaml
    cfg = yaml.safe_load((trained['logs'] / 'folder' / 'config.yaml').read_text())['dataset']
    mean, std = numpy_stats([tf_pixels(os.path.join(trained['root'], rel)) for rel in readable(trained['sizes'])])
    np.testing.assert_allclose(cfg['mean'], mean, atol=2e-6)
    np.testing.assert_allclose(cfg['std'], std, atol=2e-6)


@needs_cifar
def test_evaluate_10crop_of_an_imagenet_style_run(trained):
    """The ten views are the corners and centre of the image resized to a short side of
    48 / 0.875 = 55, and their mirrors: computed here by hand and run through the model."""
    from runner.commands import evaluate, inference
    assert trained['proc'].returncode == 0, trained['proc'].stderr[-3000:]
    run_dir = str(trained['logs'] / 'folder')
    results = {tta: evaluate.evaluate_runs([run_dir], tta=tta, weights='last', write=False)[0]
               for tta in ('none', '10crop')}
    r = results['10crop']
    assert r['examples'] == 12 and r['preprocessing'] == 'imagenet'
    run = inference.load_run(run_dir, 'last')
    items = data_source.listing(run.exp.dataset, 'test')
    np.testing.assert_array_equal(r['labels'], items.labels)
    for k in (0, 5, 11):
        img = tf_pixels(items.paths[k])
        h, w = img.shape[:2]
        scale = MODEL_SIZE / 0.875 / min(h, w)
        nh, nw = max(55, int(round(h * scale))), max(55, int(round(w * scale)))
        big = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(img, (nh, nw), antialias=True)), 0, 255),
                      tf.uint8).numpy()
        s = MODEL_SIZE
        cy, cx = (nh - s) // 2, (nw - s) // 2
        views = [big[:s, :s], big[:s, -s:], big[-s:, :s], big[-s:, -s:], big[cy:cy + s, cx:cx + s]]
        views = np.stack(views + [v[:, ::-1] for v in views])
        x = data_transforms.normalize(views, run.mean, run.std)
        probs = tf.nn.softmax(run.model(x, training=False), axis=-1).numpy()
        np.testing.assert_allclose(r['probabilities'][k], probs.mean(0), atol=1e-5)
        # without TTA: the centre view alone
        np.testing.assert_allclose(results['none']['probabilities'][k], probs[4], atol=1e-5)


@needs_cifar
def test_predict_of_an_imagenet_style_run_centre_crops_as_evaluation_does(trained):
    """predict reads a file as the evaluation pipeline does (short side to size/0.875, centre
    crop), not squashed to the model size: the same probabilities as evaluate."""
    from runner.commands import evaluate, inference, predict
    assert trained['proc'].returncode == 0, trained['proc'].stderr[-3000:]
    run_dir = str(trained['logs'] / 'folder')
    ev = evaluate.evaluate_runs([run_dir], tta='none', weights='last', write=False)[0]
    run = inference.load_run(run_dir, 'last')
    assert run.info.preprocessing == 'imagenet'
    items = data_source.listing(run.exp.dataset, 'test')
    # images that are not square, where squashing and centre-cropping differ
    picks = [k for k in range(len(items)) if len(set(tf_pixels(items.paths[k]).shape[:2])) == 2][:3]
    assert picks
    read = predict.read_images([items.paths[k] for k in picks], run.image_size, run.info.preprocessing)
    x = data_transforms.normalize(np.stack([img for _, img, _ in read]), run.mean, run.std)
    probs = tf.nn.softmax(run.model(x, training=False), axis=-1).numpy()
    np.testing.assert_allclose(probs, ev['probabilities'][picks], atol=1e-5)


def test_relocate_dataset_keeps_the_layout_under_the_moved_folder():
    from runner.commands.inference import relocate_dataset
    lists = {'list_root': '/data/x/images', 'train_list': '/data/x/lists/train.txt',
             'test_list': '/data/x/lists/test.txt', 'class_names_file': '/data/x/lists/names.txt'}
    assert relocate_dataset(lists, '/mnt/x') == {
        'list_root': '/mnt/x/images', 'train_list': '/mnt/x/lists/train.txt',
        'test_list': '/mnt/x/lists/test.txt', 'class_names_file': '/mnt/x/lists/names.txt'}
    # lists relative to list_root follow it; a names file elsewhere stays
    rel = {'list_root': '/data/x', 'train_list': 'train.txt', 'test_list': 'test.txt',
           'class_names_file': '/home/me/names.txt'}
    assert relocate_dataset(rel, '/mnt/x') == dict(rel, list_root='/mnt/x')
    shards = {'tfrecord_train': '/data/rec/train-*', 'tfrecord_test': '/data/rec/test-*', 'num_classes': 3}
    assert relocate_dataset(shards, '/mnt/r') == {'tfrecord_train': '/mnt/r/train-*',
                                                  'tfrecord_test': '/mnt/r/test-*', 'num_classes': 3}
    assert relocate_dataset({'name': 'cifar10', 'data_dir': '/a'}, '/b') == {'name': 'cifar10', 'data_dir': '/b'}
    assert relocate_dataset({'image_folder': '/a', 'data_dir': None}, '/b') == {'image_folder': '/b', 'data_dir': None}


@needs_cifar
@pytest.mark.parametrize('name', ['listed', 'records'])
def test_evaluate_data_dir_finds_moved_lists_and_tfrecords(trained, name, tmp_path, capsys):
    """A run whose list files / TFRecords now live elsewhere: config.yaml names a folder that
    is gone, --data-dir the one that holds the same layout, and the evaluation is the same."""
    import yaml
    from runner.commands import evaluate
    from runner.commands.inference import relocate_dataset
    assert trained['proc'].returncode == 0, trained['proc'].stderr[-3000:]
    run_dir = str(trained['logs'] / name)
    before = evaluate.evaluate_runs([run_dir], weights='last', write=False)[0]
    copy = tmp_path / 'run'
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load((copy / 'config.yaml').read_text())
    ds = cfg['dataset']
    keys = [k for k in ('list_root', 'train_list', 'test_list', 'tfrecord_train', 'tfrecord_test') if ds.get(k)]
    old_root = os.path.commonpath([ds[k] if k == 'list_root' else os.path.dirname(ds[k]) for k in keys])
    gone, moved = str(tmp_path / 'gone'), tmp_path / 'moved'
    for k in keys:   # the data, copied to the new place with its layout
        src = ds[k] if k == 'list_root' else os.path.dirname(ds[k])
        if not os.path.exists(moved / os.path.relpath(src, old_root)):
            shutil.copytree(src, moved / os.path.relpath(src, old_root))
    cfg['dataset'] = relocate_dataset(ds, gone)   # the config of a run whose data has gone
    (copy / 'config.yaml').write_text(yaml.safe_dump(cfg))
    one_line_error(capsys, evaluate.main([str(copy), '--weights', 'last']), 2, gone, '--data-dir')
    after = evaluate.evaluate_runs([str(copy)], weights='last', data_dir=str(moved), write=False)[0]
    np.testing.assert_array_equal(after['labels'], before['labels'])
    np.testing.assert_allclose(after['probabilities'], before['probabilities'], atol=1e-6)


# ---------------------------------------------------------------------------
# Odd list, class-name and TFRecord files: read as meant, or one line naming the key

def _tiny_experiment(tmp_path, dataset, name='e.yaml'):
    import yaml
    path = tmp_path / name
    path.write_text(yaml.safe_dump({'model': 'tiny_cnn', 'module': 'tiny_models', 'dataset': dataset,
                                    'train_parameters': {'run_name': 'tiny'}}))
    return path


def test_a_list_or_names_file_that_is_not_text_is_one_line(tmp_path, capsys):
    png = tmp_path / 'x.png'
    png.write_bytes(tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy())
    nul = tmp_path / 'nul.txt'
    nul.write_bytes(b'a.png 0\n\0\0\0\n')  # valid UTF-8, but not text
    for f in (png, nul):
        with pytest.raises(sources.SourceError, match=f"^dataset.train_list: '{f}' is not a text file$"):
            sources.list_file_listing(str(f), None, 'train_list', 'train')
        with pytest.raises(sources.SourceError, match=f"^dataset.class_names_file: '{f}' is not a text file$"):
            sources.read_class_names(str(f))
    # the stats command: one error line, exit status 2, no traceback
    from runner.commands import stats
    exp = _tiny_experiment(tmp_path, {'train_list': str(png), 'test_list': str(png)})
    one_line_error(capsys, stats.main([str(exp)]), 2, 'dataset.train_list', str(png), 'is not a text file')
    (tmp_path / 'names.png').write_bytes(png.read_bytes())
    with pytest.raises(data_source.DataUnavailable, match='dataset.class_names_file: .* is not a text file'):
        data_info.resolve_info(DatasetConfig(class_names_file=str(tmp_path / 'names.png')), 'x', None, None, [(4, 4)])


def test_byte_order_marks_and_tabs_in_list_and_names_files(tmp_path):
    from conftest import make_image_folder
    root = make_image_folder(tmp_path / 'imgs', splits=(('train', 2),), classes=2, size=8)
    os.rename(os.path.join(root, 'train', 'class1', '0001.png'), os.path.join(root, 'train', 'class1', 'a b.png'))
    rels = ['train/class0/0000.png', 'train/class0/0001.png', 'train/class1/0000.png', 'train/class1/a b.png']
    # as Windows Notepad saves it: a BOM, CRLF; tabs or spaces between path and label
    text = '# path label\r\n' + ''.join(f'{r}{sep}{r.split("/")[1][-1]}\r\n'
                                       for r, sep in zip(rels, ['\t', ' ', ' \t ', ' ']))
    (tmp_path / 'train.txt').write_bytes(b'\xef\xbb\xbf' + text[len('# path label\r\n'):].encode())
    (tmp_path / 'commented.txt').write_bytes(b'\xef\xbb\xbf' + text.encode())
    for name in ('train.txt', 'commented.txt'):
        items = sources.list_file_listing(str(tmp_path / name), root, 'train_list', 'train')
        assert [os.path.relpath(p, root) for p in items.paths] == rels  # a path with a space too
        assert list(items.labels) == [0, 0, 1, 1]
        read = sources.read_fn(items)
        assert read(tf.constant(0, tf.int64))[0].numpy() == open(os.path.join(root, rels[0]), 'rb').read()
    names = tmp_path / 'names.txt'
    names.write_bytes(b'\xef\xbb\xbf0\ttench\n1:\tgoldfish\n2  great white shark\n3 \t tiger shark\n')
    assert sources.read_class_names(str(names)) == ['tench', 'goldfish', 'great white shark', 'tiger shark']
    names.write_bytes(b'\xef\xbb\xbf# ImageNet\ntench\ngreat white shark\n')
    assert sources.read_class_names(str(names)) == ['tench', 'great white shark']


def _write_records(path, examples):
    """A TFRecord file of tf.train.Examples given as {key: bytes or int}."""
    def feature(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(tf.train.Example(features=tf.train.Features(
                feature={k: feature(v) for k, v in ex.items()})).SerializeToString())


def _png_examples(n):
    png = tf.io.encode_png(np.full((4, 4, 3), 9, np.uint8)).numpy()
    return [{'image/encoded': png, 'image/class/label': i % 2} for i in range(n)]


def test_a_tfrecord_glob_matching_a_directory_keeps_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    rec = tmp_path / 'rec'
    (rec / 'sub').mkdir(parents=True)
    _write_records(rec / 'train-0', _png_examples(3))
    _write_records(rec / 'train-1', _png_examples(2))
    items = sources.tfrecord_listing(str(rec / '*'), 'tfrecord_train', 'train')
    assert items.files == [str(rec / 'train-0'), str(rec / 'train-1')] and len(items) == 5
    with pytest.raises(sources.SourceError, match=r"^dataset.tfrecord_train: '.*/rec/s\*' matches only "
                                                  r"directories, no file$"):
        sources.tfrecord_listing(str(rec / 's*'), 'tfrecord_train', 'train')
    # TensorFlow's errors reading a file (here a directory; TFDS shards are read the same
    # way) are one line naming it
    with pytest.raises(sources.SourceError, match=f"^{rec / 'sub'}: cannot read it as a TFRecord file"):
        sources.record_offsets(str(rec / 'sub'))
    # a record whose data is corrupt (its checksum fails): the message names its file
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache2'))  # not the index made above
    data = bytearray((rec / 'train-1').read_bytes())
    data[20] ^= 0xFF
    (rec / 'train-1').write_bytes(bytes(data))
    with pytest.raises(sources.SourceError, match=f"^dataset.tfrecord_train: {rec / 'train-1'}: cannot read"):
        sources.tfrecord_listing(str(rec / 'train-*'), 'tfrecord_train', 'train')


def test_a_tfrecord_file_rewritten_at_once_is_indexed_again(tmp_path, monkeypatch):
    # The index cache is keyed by size and time; a rewrite within the same second at the
    # same size (a converter run twice) must not reuse the old labels.
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    examples = _png_examples(4)
    _write_records(tmp_path / 'train-0', examples)
    assert list(sources.tfrecord_listing(str(tmp_path / 'train-*'), 'tfrecord_train', 'train').labels) == [0, 1, 0, 1]
    _write_records(tmp_path / 'train-0', [dict(ex, **{'image/class/label': 1 - ex['image/class/label']})
                                          for ex in examples])
    assert list(sources.tfrecord_listing(str(tmp_path / 'train-*'), 'tfrecord_train', 'train').labels) == [1, 0, 1, 0]


def test_a_wrong_tfrecord_image_key_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    _write_records(tmp_path / 'train-0', _png_examples(3))
    _write_records(tmp_path / 'test-0', _png_examples(2))
    with pytest.raises(sources.SourceError, match=r"^dataset.tfrecord_image_key: .* have no feature 'image/jpeg' "
                                                  r"\(features: 'image/class/label' \(int64_list\), "
                                                  r"'image/encoded' \(bytes_list\)\)$"):
        sources.tfrecord_listing(str(tmp_path / 'train-*'), 'tfrecord_train', 'train', image_key='image/jpeg')
    with pytest.raises(sources.SourceError, match="no bytes feature 'image/class/label'"):
        sources.tfrecord_listing(str(tmp_path / 'train-*'), 'tfrecord_train', 'train',
                                 image_key='image/class/label')
    from runner.commands import stats
    exp = _tiny_experiment(tmp_path, {'tfrecord_train': str(tmp_path / 'train-*'), 'num_classes': 2,
                                      'tfrecord_test': str(tmp_path / 'test-*'),
                                      'tfrecord_image_key': 'image/jpeg'})
    one_line_error(capsys, stats.main([str(exp)]), 2, 'dataset.tfrecord_image_key', "'image/encoded'")
    # Remote shards (gs://) fail in GFile with TensorFlow's OpError, not OSError: one line too.
    def unreachable(*args):
        raise tf.errors.UnavailableError(None, None, 'connection reset\nretrying ...')
    monkeypatch.setattr(sources, '_check_image_key', unreachable)
    with pytest.raises(sources.SourceError, match=r'^dataset.tfrecord_train: .*train-0: connection reset$'):
        sources.tfrecord_listing(str(tmp_path / 'train-*'), 'tfrecord_train', 'train')


@pytest.mark.parametrize('budget', [None, 0], ids=['cached', 'streamed'])
def test_stats_hold_out_the_validation_images_as_training_does(budget, tmp_path, capsys):
    from conftest import make_image_folder
    from runner.config.expand import load_experiments
    root = make_image_folder(tmp_path / 'imgs', splits=(('train', 10), ('test', 1)), classes=2, size=8)
    dataset = {'image_folder': root, 'validation_fraction': 0.25, 'stats_sample': 0}
    if budget is not None:
        dataset['cache_budget_mb'] = budget
    exp = _tiny_experiment(tmp_path, dataset)
    [r], _ = stats_json(capsys, exp)
    data = data_loader.load(load_experiments(str(exp))[0].dataset)
    assert data_splits.cached(data.train) == (budget is None) and data_splits.size(data.train) == 15
    np.testing.assert_allclose(r['mean'], data.mean, atol=1.5e-6)
    np.testing.assert_allclose(r['std'], data.std, atol=1.5e-6)
    assert r['images'] == r['listed'] == 15 and r['held_out'] == 5
    # not the whole split's numbers, which the folder itself gives
    [whole], _ = stats_json(capsys, root)
    assert whole['images'] == 20 and np.abs(np.subtract(whole['mean'], r['mean'])).max() > 1e-4
    code, out, _ = run_stats(capsys, exp)
    assert code == 0 and '5 more held out for validation' in out
