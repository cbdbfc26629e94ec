"""Input pipelines: shapes, dtypes, augmentation bounds, determinism, the TFDS and image-folder paths."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import CIFAR_JPEG, make_image_folder
from runner.data import (info as data_info,
                         loader as data_loader,
                         pipeline as data_pipeline,
                         source as data_source,
                         splits as data_splits,
                         stats as data_stats,
                         transforms as data_transforms)
from runner.config.schema import DatasetConfig


def split(n=64, size=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return data_splits.Split('train', rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                          (np.arange(n) % classes).astype(np.int32))


def test_augmentation_is_a_flip_and_a_shifted_window_of_the_padded_image():
    images = tf.constant(np.random.default_rng(1).normal(size=(16, 8, 8, 3)), tf.float32)
    out = data_transforms.augment_batch(images, tf.constant([3, 7], tf.int64), flip=True, crop_padding=2).numpy()
    assert out.shape == images.shape
    padded = np.pad(images.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    seen_flip, seen_shift = set(), set()
    for i in range(16):
        matches = [(f, dy, dx) for f in (False, True) for dy in range(5) for dx in range(5)
                   if np.array_equal(out[i], (padded[i, :, ::-1] if f else padded[i])[dy:dy + 8, dx:dx + 8])]
        assert matches, f'image {i} is not a flipped/shifted window of its padded original'
        seen_flip.add(matches[0][0])
        seen_shift.add(matches[0][1:])
    assert seen_flip == {False, True} and len(seen_shift) > 3  # both flips and several shifts occur


def test_augmentation_off_is_the_identity():
    images = tf.random.normal((4, 8, 8, 3))
    out = data_transforms.augment_batch(images, tf.constant([0, 0], tf.int64), flip=False, crop_padding=0)
    np.testing.assert_array_equal(out.numpy(), images.numpy())


def test_train_dataset_shapes_dtypes_and_epochs():
    s = split(n=64)
    ds = data_pipeline.train_dataset(s, 16, seed=1, mean=[0.5], std=[0.25], flip=False, crop_padding=0)
    batches = list(ds.take(8).as_numpy_iterator())  # two epochs of 4 batches
    x, y = batches[0]
    assert x.shape == (16, 8, 8, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6
    # without augmentation each epoch is a permutation of the split
    for epoch in (batches[:4], batches[4:]):
        labels = np.concatenate([b[1] for b in epoch])
        assert sorted(labels.tolist()) == sorted(s.labels.tolist())
    first, second = np.concatenate([b[1] for b in batches[:4]]), np.concatenate([b[1] for b in batches[4:]])
    imgs1 = np.concatenate([b[0] for b in batches[:4]])
    imgs2 = np.concatenate([b[0] for b in batches[4:]])
    assert not np.array_equal(imgs1, imgs2), 'each epoch is shuffled anew'


def test_train_dataset_is_reproducible_from_its_seed():
    s = split()
    take = lambda seed: [b[0] for b in data_pipeline.train_dataset(s, 16, seed, [0.5], [0.25]).take(3).as_numpy_iterator()]
    a, b, c = take(5), take(5), take(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_batch_larger_than_the_data_is_a_clear_error():
    with pytest.raises(data_source.DataUnavailable, match='larger than the 64 training images'):
        data_pipeline.train_dataset(split(n=64), 128, 0, [0.5], [0.25])


def test_eval_dataset_is_everything_once_in_order_unaugmented():
    s = split(n=50)
    batches = list(data_pipeline.eval_dataset(s, 16, [0.0], [1.0]).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    x = np.concatenate([b[0] for b in batches])
    np.testing.assert_allclose(x, s.images / 255.0, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), s.labels)


def test_channel_stats_on_known_images():
    images = np.zeros((10, 4, 4, 3), np.uint8)
    images[:5, ..., 0] = 255  # channel 0: half 1.0, half 0.0 -> mean 0.5, std 0.5
    images[..., 1] = 51       # channel 1: constant 0.2
    mean, std = data_stats.channel_stats(images)
    assert mean == pytest.approx([0.5, 0.2, 0.0], abs=1e-6)
    assert std[0] == pytest.approx(0.5, abs=1e-6) and std[1] == pytest.approx(0.0, abs=1e-5)


def test_validation_hold_out_is_disjoint_fixed_and_sized():
    s = split(n=100)
    s.images[:, 0, 0, 0] = np.arange(100)  # tag each image
    train, val = data_splits.hold_out(s, 0.2)
    assert len(val.labels) == 20 and len(train.labels) == 80 and val.name == 'validation'
    tags_t, tags_v = set(train.images[:, 0, 0, 0]), set(val.images[:, 0, 0, 0])
    assert not tags_t & tags_v and len(tags_t | tags_v) == 100
    again = data_splits.hold_out(s, 0.2)[1]
    np.testing.assert_array_equal(again.images, val.images)


def test_tfds_path_with_mock_data():
    import tensorflow_datasets as tfds
    cfg = DatasetConfig(name='cifar10', download=True)
    with tfds.testing.mock_data(num_examples=40):
        data = data_loader.load(cfg)
    assert data.info.image_shape == (32, 32, 3) and data.info.num_classes == 10
    assert data.train.images.shape == (40, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.test.labels.dtype == np.int32 and data.eval is data.test
    assert len(data.mean) == 3 and all(0 < v < 1 for v in data.std)


def test_tfds_not_prepared_and_no_download_is_one_clear_line(tmp_path):
    cfg = DatasetConfig(name='cifar10', data_dir=str(tmp_path), download=False)
    with pytest.raises(data_source.DataUnavailable) as e:
        data_loader.load(cfg)
    assert "'cifar10' is not prepared in" in str(e.value) and '\n' not in str(e.value)


def test_synthetic_stand_in_when_data_is_absent(tmp_path):
    cfg = DatasetConfig(name='cifar100', data_dir=str(tmp_path))
    data = data_loader.load(cfg, limit=16, allow_synthetic=True)
    assert data.train.images.shape == (16, 32, 32, 3) and data.info.num_classes == 100
    assert 'synthetic' in data.info.description


def test_image_folder_with_greyscale_alpha_and_other_sizes(tmp_path):
    root = make_image_folder(tmp_path / 'f', splits=(('train', 6), ('test', 2)), classes=2, size=12)
    grey = tf.io.encode_png(np.full((20, 16, 1), 200, np.uint8)).numpy()
    rgba = tf.io.encode_png(np.full((12, 12, 4), 100, np.uint8)).numpy()
    (tmp_path / 'f' / 'train' / 'class0' / 'grey.png').write_bytes(grey)
    (tmp_path / 'f' / 'train' / 'class1' / 'rgba.png').write_bytes(rgba)
    cfg = DatasetConfig(image_folder=root, image_size=[12, 12], validation_fraction=0.25)
    data = data_loader.load(cfg)
    assert data.info.image_shape == (12, 12, 3) and data.info.class_names == ['class0', 'class1']
    assert data.train.images.shape[1:] == (12, 12, 3)
    assert len(data.train.labels) + len(data.eval.labels) == 14 and data.eval.name == 'validation'
    assert len(data.test.labels) == 4


def test_image_folder_of_varying_sizes_needs_image_size(tmp_path):
    root = make_image_folder(tmp_path / 'f', splits=(('train', 2), ('test', 1)), classes=2, size=12)
    cfg = DatasetConfig(image_folder=root)
    assert data_info.describe(cfg).image_shape == (12, 12, 3)
    cfg = DatasetConfig(image_folder=root, train_split='nope')
    with pytest.raises(data_source.DataUnavailable, match="no split folder 'nope'"):
        data_info.describe(cfg)


@pytest.mark.needs('cifar10-jpeg')
def test_image_folder_on_the_cifar10_jpeg_copy():
    cfg = DatasetConfig(image_folder=CIFAR_JPEG)
    info = data_info.describe(cfg)
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.class_names[:3] == ['airplane', 'automobile', 'bird']
    data = data_loader.load(cfg, info, limit=200)
    assert data.train.images.shape == (200, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert len(set(data.train.labels.tolist())) > 5  # the file order is shuffled across classes
    again = data_loader.load(cfg, info, limit=200)
    np.testing.assert_array_equal(again.train.labels, data.train.labels)


AIRBENCH_AUGMENTATION = data_info.Prep('cifar', None, flip=True, crop_padding=2, alternate_flips=True,
                                      crop_padding_mode='reflect')


@pytest.mark.parametrize('prep', [None, AIRBENCH_AUGMENTATION], ids=['default', 'airbench'])
def test_train_dataset_resumes_exactly_at_any_batch(prep):
    s = split(n=40)  # batches of 16 run across epoch ends
    full = [b for b in data_pipeline.train_dataset(s, 16, 3, [0.5], [0.25], prep=prep).take(12).as_numpy_iterator()]
    for start in (1, 2, 5, 7):
        resumed = data_pipeline.train_dataset(s, 16, 3, [0.5], [0.25], start_batch=start, prep=prep)
        for want, got in zip(full[start:], resumed.take(12 - start).as_numpy_iterator()):
            np.testing.assert_array_equal(want[0], got[0])
            np.testing.assert_array_equal(want[1], got[1])


def test_reflect_padding_crops_windows_of_the_mirrored_border():
    images = tf.constant(np.random.default_rng(2).normal(size=(16, 8, 8, 3)), tf.float32)
    out = data_transforms.augment_batch(images, tf.constant([5, 1], tf.int64), flip=False, crop_padding=2,
                                 crop_padding_mode='reflect').numpy()
    padded = np.pad(images.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)], mode='reflect')
    shifts = set()
    for i in range(16):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
        assert found, f'image {i} is not a window of its reflect-padded original'
        shifts.add(found[0])
    assert any(s != (2, 2) for s in shifts)
    # no zero (mean-colour) border: every output pixel is one of the image's own pixels
    assert not np.any(np.all(out == 0, axis=-1))


def mirrored_by_epoch(s, seed, epochs, batch):
    """[epoch, image] -> was it mirrored, from a pipeline without crops whose labels are the
    image indices and whose outputs are the raw pixel values."""
    n = len(s.labels)
    prep = data_info.Prep('cifar', None, flip=True, crop_padding=0, alternate_flips=True)
    ds = data_pipeline.train_dataset(s, batch, seed=seed, mean=[0.0], std=[1 / 255], prep=prep)
    batches = list(ds.take(epochs * n // batch).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches]).round().astype(np.int64)
    labels = np.concatenate([b[1] for b in batches])
    mirrored = np.zeros((epochs, n), bool)
    for position, (image, label) in enumerate(zip(images, labels)):
        original = s.images[label].astype(np.int64)
        flipped = np.array_equal(image, original[:, ::-1])
        assert flipped or np.array_equal(image, original)
        mirrored[position // n, label] = flipped
    return mirrored


def test_alternating_flips_mirror_each_image_in_every_other_epoch():
    s = split(n=10, classes=10)  # label = image index; batches of 4 run across epoch ends
    mirrored = mirrored_by_epoch(s, seed=7, epochs=4, batch=4)
    assert mirrored[0].any() and not mirrored[0].all(), 'the first epoch mirrors some images, not all'
    np.testing.assert_array_equal(mirrored[1], ~mirrored[0])
    np.testing.assert_array_equal(mirrored[2], mirrored[0])
    np.testing.assert_array_equal(mirrored[3], ~mirrored[0])
    # which images start mirrored comes from the seed
    assert not np.array_equal(mirrored_by_epoch(s, seed=8, epochs=1, batch=4)[0], mirrored[0])


def test_a_streamed_batch_of_only_unreadable_files_is_recorded(tmp_path):
    """ignore_errors() leaves no element for a batch whose every file fails: its files must
    still be recorded as unreadable, and the other batches come through whole."""
    root = make_image_folder(tmp_path / 'imgs', splits=(('train', 4), ('test', 3)), classes=3)
    cfg = DatasetConfig(image_folder=root, cache_budget_mb=0, mean=[0.5] * 3, std=[0.25] * 3)
    test = data_loader.load(cfg).test
    assert not data_splits.cached(test)
    keys = [test.listing.key(i) for i in range(len(test.listing))]

    def spoil(*paths):
        for path in paths:
            with open(path, 'wb') as f:
                f.write(b'not an image')
        return data_loader.load(cfg)

    # The last of 9 files alone in the last batch of 4.
    data = spoil(keys[8])
    sizes = [int(x.shape[0]) for x, _ in data_loader.eval_input(data, data.test, 4)]
    assert sizes == [4, 4], sizes
    assert list(data.test.unreadable.keys) == [keys[8]]
    # The whole middle batch of 3 unreadable: the batches before and after come through.
    data = spoil(*keys[3:6])
    sizes = [int(x.shape[0]) for x, _ in data_loader.eval_input(data, data.test, 3)]
    assert sizes == [3, 2], sizes
    assert sorted(data.test.unreadable.keys) == sorted(keys[3:6] + keys[8:])


@pytest.mark.parametrize('budget', [None, 0], ids=['cached', 'streamed'])
@pytest.mark.needs('cifar10-tfds')
def test_a_tfds_slice_split_with_a_smoke_limit_reads_the_real_data(cifar10_tfds_dir, budget):
    """A smoke run caps each split with `limit`; a split that is already a slice must still
    be read (it once became 'train[:2%][:32]', which TFDS refuses, and the smoke run fell
    back to random images)."""
    cfg = DatasetConfig(name='cifar10', data_dir=cifar10_tfds_dir, train_split='train[:2%]',
                        test_split='test[10:30]', cache_budget_mb=budget, mean=[0.5] * 3,
                        std=[0.25] * 3)
    data = data_loader.load(cfg, limit=12, allow_synthetic=True)
    assert 'synthetic' not in data.info.description, data.info.description
    assert data_splits.size(data.train) == 12 and data_splits.size(data.test) == 12
    import tensorflow_datasets as tfds
    want = [int(y) for _, y in tfds.load('cifar10', split='test[10:22]', data_dir=cifar10_tfds_dir,
                                         as_supervised=True, shuffle_files=False)]
    got = [int(y) for _, ys in data_loader.eval_input(data, data.test, 5) for y in ys]
    assert got == want


def test_normalize_false_reads_no_statistics(tmp_path, monkeypatch, capsys):
    """Without normalisation the mean and std are not used, so no pass over the training
    images computes them (on a streamed ImageNet that pass takes minutes)."""
    root = make_image_folder(tmp_path / 'imgs', splits=(('train', 6), ('test', 2)), classes=2)
    calls = []
    monkeypatch.setattr(data_loader, 'split_stats', lambda *a, **k: calls.append(a) or ([0.4] * 3, [0.2] * 3))
    data = data_loader.load(DatasetConfig(image_folder=root, normalize=False, cache_budget_mb=0,
                                       stats_sample=5))
    assert calls == [] and (data.mean, data.std) == ([0.0], [1.0])
    assert 'computing mean and std' not in capsys.readouterr().err
    data_loader.load(DatasetConfig(image_folder=root, cache_budget_mb=0, stats_sample=5))
    assert len(calls) == 1, 'with normalisation the statistics are computed'


def test_image_size_is_judged_from_images_spread_over_the_split(tmp_path):
    """A folder's first class of one size and a later class of others: the images vary, so
    the imagenet style takes 224x224, not the first images' size."""
    root = tmp_path / 'mixed'
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for cls, shapes in (('a', [(100, 100)] * 40), ('b', [(150, 80), (90, 120), (100, 100)])):
            os.makedirs(root / split / cls)
            for i, (h, w) in enumerate(shapes):
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                (root / split / cls / f'{i}.png').write_bytes(tf.io.encode_png(img).numpy())
    info = data_info.describe(DatasetConfig(image_folder=str(root)))
    assert info.preprocessing == 'imagenet'
    assert info.image_shape == (224, 224, 3), info


# --- the decoded copy (runner.data.diskcache): start-up reads a split back, never a stale one

def _count_decoding(monkeypatch, fn_name):
    calls = []
    real = getattr(data_splits, fn_name)
    monkeypatch.setattr(data_splits, fn_name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _same_data(a, b):
    for x, y in ((a.train, b.train), (a.eval, b.eval), (a.test, b.test)):
        assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
        assert (x.ids is None and y.ids is None) or np.array_equal(x.ids, y.ids)
    assert (a.mean, a.std) == (b.mean, b.std)


def test_a_decoded_split_is_read_back_by_the_next_run_until_a_file_changes(tmp_path, monkeypatch):
    """A split held in memory is decoded once: the next load reads its decoded copy (no image
    decoded) and gets the same pixels, labels, held-out validation images, statistics and
    unreadable files. An image rewritten is decoded again, and so is a damaged copy."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setattr(data_splits, 'MIN_DECODE_SECONDS', 0.0)  # tiny splits decode at once
    decoded = _count_decoding(monkeypatch, '_decode_all')
    root = make_image_folder(tmp_path / 'imgs', splits=(('train', 10), ('test', 4)))
    (tmp_path / 'imgs' / 'train' / 'class1' / '0003.png').write_bytes(b'not an image')
    cfg = DatasetConfig(image_folder=root, validation_fraction=0.25)
    first = data_loader.load(cfg)
    assert len(decoded) == 2
    second = data_loader.load(cfg)
    assert len(decoded) == 2  # both splits read back
    _same_data(first, second)
    assert data_loader.unreadable_report(second, new_only=False) == \
        data_loader.unreadable_report(first, new_only=False) != None  # noqa: E711
    assert 'class1/0003.png' in data_loader.unreadable_report(second, new_only=False)

    # One test image rewritten with other pixels: that split is decoded again, and shows them.
    changed = tmp_path / 'imgs' / 'test' / 'class2' / '0001.png'
    changed.write_bytes(tf.io.encode_png(np.full((32, 32, 3), 255, np.uint8)).numpy())
    third = data_loader.load(cfg)
    assert len(decoded) == 3
    assert (third.test.images == 255).all(axis=(1, 2, 3)).sum() == 1
    assert np.array_equal(third.train.images, first.train.images)

    # Damaged copies (cut in half) are decoded again, not an error.
    copies = list((tmp_path / 'cache' / 'convnet-runner' / 'decoded').glob('*.npz'))
    assert len(copies) == 3  # train, test, test as rewritten
    for p in copies:
        p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
    fourth = data_loader.load(cfg)
    assert len(decoded) == 5
    _same_data(third, fourth)


@pytest.mark.needs('cifar10-tfds')
def test_a_tfds_split_is_read_back_and_decoded_again_when_its_files_change(cifar10_tfds_dir, tmp_path,
                                                                         monkeypatch):
    """The same for a prepared TFDS dataset: keyed by the files of its version directory."""
    import shutil
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.setattr(data_splits, 'MIN_DECODE_SECONDS', 0.0)
    decoded = _count_decoding(monkeypatch, '_read_tfds')
    data_dir = tmp_path / 'tfds'
    shutil.copytree(os.path.join(cifar10_tfds_dir, 'cifar10'), data_dir / 'cifar10')
    cfg = DatasetConfig(name='cifar10', data_dir=str(data_dir), train_split='train[:300]',
                        test_split='test[:100]', mean_std='cifar10')
    first = data_loader.load(cfg)
    assert len(decoded) == 2
    second = data_loader.load(cfg)
    assert len(decoded) == 2
    _same_data(first, second)
    import tensorflow_datasets as tfds
    want = np.stack([x for x, _ in tfds.as_numpy(tfds.load('cifar10', split='test[:100]', data_dir=str(data_dir),
                                                           as_supervised=True, shuffle_files=False))])
    assert np.array_equal(second.test.images, want)
    info = data_dir / 'cifar10' / '3.0.2' / 'dataset_info.json'
    os.utime(info, ns=(info.stat().st_atime_ns, info.stat().st_mtime_ns + 10 ** 9))
    data_loader.load(cfg)
    assert len(decoded) == 4
