"""The time-to-accuracy options: weight averaging (ema_decay), flip and translate TTA in the
runner's own evaluations (eval_tta), data-dependent layers (adapt_examples), the batch-norm
offsets' learning rate (bn_bias_lr_multiplier), the airbench94 / ResNet-9 networks of
models/fast.py with airbench's patch whitening, and the cifar10_fast recipe. Parameter counts of the networks are pinned in test_models.py."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, flip_translate_probabilities, flip_translate_views, subprocess_env
from models import fast
from runner.data import info as data_info, loader as data_loader, splits as data_splits
from runner import rundir
from runner.training import session
from runner.training.trainer import Trainer
from runner.config.errors import ConfigError
from runner.config.expand import experiment_from_dict, load_experiments


def asymmetric_cnn(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4):
    """Logits from the flattened image: a mirrored image gets other logits (module: test_fast)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name='logits')(x))


def normalized_cnn(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4):
    """A Keras Normalization layer after a conv: adapted to features, not to images."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
    x = keras.layers.Normalization(name='norm')(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def make_data(n=48, seed=0):
    info = data_info.DataInfo('random', (32, 32, 3), 10)
    split = data_splits.synthetic(info, n, seed=seed)
    return data_loader.Data(info, split, split, split, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])


def make_exp(tmp_path, model='tiny_cnn', module='tiny_models', model_parameters=None,
             **train_parameters):
    tp = dict(logdir=str(tmp_path), run_name='run', batch_size=8, eval_batch_size=16,
              log_interval=2, val_interval=3, checkpoint_interval=3, lr_values=[0.1],
              lr_boundaries=[6])
    tp.update(train_parameters)
    doc = {'model': model, 'model_parameters': model_parameters or {}, 'train_parameters': tp}
    return experiment_from_dict({**doc, 'module': module} if module else doc)


def train_images(data, n):
    """The first n training images as the runner adapts layers to them (un-augmented)."""
    return np.concatenate([x.numpy() for x, _ in data_loader.eval_input(data, data.train, 16)])[:n]


def make_trainer(exp, data):
    # Fresh layer names (conv2d, conv2d_1, ...) in every model: weights files match by name.
    keras.backend.clear_session()
    keras.utils.set_random_seed(exp.train_parameters.seed)
    trainer = Trainer(exp, data, tf.distribute.get_strategy())
    trainer.start_input()
    return trainer


def run(exp, data):
    keras.backend.clear_session()
    return session.run(exp, data=data, quiet=True)


def values(variables):
    return [np.array(tf.convert_to_tensor(v)) for v in variables]


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize('key, value, message', [
    ('ema_decay', 1.0, 'train_parameters.ema_decay: must be in (0, 1) or null, got 1.0'),
    ('ema_decay', 0, 'train_parameters.ema_decay: must be in (0, 1) or null, got 0.0'),
    ('ema_decay', 'yes', "train_parameters.ema_decay: expected number, got str 'yes'"),
    ('eval_tta', 'flips', "train_parameters.eval_tta: 'flips' is not one of none, flip, "
                          "flip_translate; did you mean 'flip'?"),
    ('bn_bias_lr_multiplier', 0, 'train_parameters.bn_bias_lr_multiplier: must be positive, got 0.0'),
    ('adapt_examples', 0, 'train_parameters.adapt_examples: must be at least 1, got 0'),
    ('lookahead_interval', 0, 'train_parameters.lookahead_interval: must be in [1, 1000000000] or null, got 0'),
    ('lookahead_decay', 0, 'train_parameters.lookahead_decay: must be in (0, 1], got 0.0'),
    ('lookahead_decay', 1.5, 'train_parameters.lookahead_decay: must be in (0, 1], got 1.5'),
])
def test_bad_values_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({'model': 'cifar_airbench94', 'train_parameters': {key: value}})
    assert str(info.value).endswith(message)
    assert '\n' not in str(info.value)


@pytest.mark.parametrize('key, value, message', [
    ('crop_padding_mode', 'reflection', "dataset.crop_padding_mode: 'reflection' is not one of zeros, "
                                        "reflect; did you mean 'reflect'?"),
    ('alternate_flips', 'yes', "dataset.alternate_flips: expected true/false, got str 'yes'"),
])
def test_bad_augmentation_values_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({'model': 'cifar_airbench94', 'dataset': {key: value}})
    assert str(info.value).endswith(message) and '\n' not in str(info.value)


def test_alternate_flips_need_flips():
    with pytest.raises(ConfigError, match=r'dataset.alternate_flips: needs dataset.flip: true'):
        experiment_from_dict({'model': 'cifar_airbench94', 'dataset': {'alternate_flips': True,
                                                                       'flip': False}})


# --- weight averaging ---------------------------------------------------------------------


def test_averages_cover_weights_and_bn_statistics_and_start_at_the_weights(tmp_path):
    trainer = make_trainer(make_exp(tmp_path, ema_decay=0.9), make_data())
    paths = [v.path for v in trainer.ema.weights]
    assert set(paths) >= {v.path for v in trainer.model.trainable_variables}
    assert any('moving_mean' in p for p in paths) and any('moving_variance' in p for p in paths)
    assert not any('seed_generator' in p for p in paths)
    for a, w in zip(values(trainer.ema.averages), values(trainer.ema.weights)):
        np.testing.assert_array_equal(a, w)
    no_average = make_trainer(make_exp(tmp_path / 'off'), make_data())
    assert no_average.ema is None and no_average.evaluated_weights == 'raw'


def test_averages_move_toward_the_weights_at_the_configured_rate(tmp_path):
    decay = 0.5
    trainer = make_trainer(make_exp(tmp_path, ema_decay=decay), make_data())
    # Steps 0 and 1 follow the warm-up rule (1 + n) / (10 + n) < 0.5; from step 8 on the
    # configured decay holds: jump the step counter there (the schedule is flat).
    for n in (0, 1, 100):
        trainer.optimizer.iterations.assign(n)
        before = values(trainer.ema.averages)
        trainer.train_step(trainer.iterator)
        after, weights = values(trainer.ema.averages), values(trainer.ema.weights)
        d = min(decay, (1 + n) / (10 + n))
        moved = 0
        for a0, a1, w in zip(before, after, weights):
            np.testing.assert_allclose(a1, d * a0 + (1 - d) * w, rtol=1e-5, atol=1e-6)
            moved += not np.array_equal(a0, a1)
        assert moved > len(after) // 2, 'the averages did not follow the training weights'


def test_evaluation_uses_the_averages_and_swapping_back_is_exact(tmp_path):
    data = make_data()
    trainer = make_trainer(make_exp(tmp_path, ema_decay=0.9), data)
    for _ in range(3):
        trainer.train_step(trainer.iterator)
    raw, averages = values(trainer.ema.weights), values(trainer.ema.averages)
    assert any(not np.array_equal(r, a) for r, a in zip(raw, averages))
    with trainer.averaged_weights():
        for v, a in zip(values(trainer.ema.weights), averages):
            np.testing.assert_array_equal(v, a)
        averaged_eval = trainer.evaluate(data.test)
    for v, r in zip(values(trainer.ema.weights), raw):
        np.testing.assert_array_equal(v, r)
    for v, a in zip(values(trainer.ema.averages), averages):
        np.testing.assert_array_equal(v, a)
    assert averaged_eval['loss'] != trainer.evaluate(data.test)['loss']


def test_a_run_evaluates_and_saves_the_averaged_weights(tmp_path):
    data = make_data()
    exp = make_exp(tmp_path, ema_decay=0.8)
    summary = run(exp, data)
    run_dir = tmp_path / 'run'
    assert summary['status'] == 'finished'
    assert summary['evaluated_weights'] == 'exponential moving average, decay 0.8'
    # The last checkpoint holds raw weights and averages; final.weights.h5 is the averages.
    trainer = make_trainer(exp, data)
    trainer.checkpoint.restore(str(summary['last_checkpoint'])).assert_existing_objects_matched()
    averages, raw = values(trainer.ema.averages), values(trainer.ema.weights)
    saved = make_trainer(exp, data)
    saved.model.load_weights(str(run_dir / rundir.FINAL_WEIGHTS))
    for s, a in zip(values(saved.ema.weights), averages):
        np.testing.assert_array_equal(s, a)
    assert any(not np.array_equal(a, r) for a, r in zip(averages, raw))
    final = [r for r in rundir.read_metrics(str(run_dir)) if r['kind'] == 'test'][-1]
    assert final['weights'] == summary['evaluated_weights']
    np.testing.assert_allclose(final['loss'], saved.evaluate(data.test)['loss'], rtol=1e-5)
    assert summary['test_top1_accuracy'] == pytest.approx(final['top1_accuracy'], abs=1e-6)


def test_a_checkpoint_restores_the_averages(tmp_path):
    data = make_data()
    exp = make_exp(tmp_path, ema_decay=0.9)
    first = make_trainer(exp, data)
    for _ in range(3):
        first.train_step(first.iterator)
    path = first.checkpoint.save(str(tmp_path / 'ckpt'))
    second = make_trainer(exp, data)
    second.train_step(second.iterator)  # other averages before the restore
    second.checkpoint.restore(path).assert_existing_objects_matched()
    second.start_input()
    for a, b in zip(values(second.ema.averages), values(first.ema.averages)):
        np.testing.assert_array_equal(a, b)
    first.train_step(first.iterator)
    second.train_step(second.iterator)
    for a, b in zip(values(second.ema.averages), values(first.ema.averages)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_resumed_run_ends_with_the_averages_of_an_uninterrupted_one(tmp_path):
    data = make_data()
    straight = run(make_exp(tmp_path / 'a', ema_decay=0.8), data)
    run(make_exp(tmp_path / 'b', ema_decay=0.8, steps=3), data)
    resumed = run(make_exp(tmp_path / 'b', ema_decay=0.8), data)
    assert straight['steps'] == resumed['steps'] == 6
    exp = make_exp(tmp_path / 'c', ema_decay=0.8)
    fresh = values(make_trainer(exp, data).ema.weights)
    final = {}
    for name in 'ab':
        trainer = make_trainer(exp, data)
        trainer.model.load_weights(str(tmp_path / name / 'run' / rundir.FINAL_WEIGHTS))
        final[name] = values(trainer.ema.weights)
    assert all(not np.allclose(x, y) for x, y in zip(final['a'], fresh) if x.ndim == 4)
    # A resume that lost the averages would start them afresh and end 1e-3 away.
    for x, y in zip(final['a'], final['b']):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_init_weights_restart_the_averages_there(tmp_path):
    data = make_data()
    source = make_trainer(make_exp(tmp_path / 'src'), data)
    source.model.save_weights(str(tmp_path / 'init.weights.h5'))
    exp = make_exp(tmp_path, ema_decay=0.99, init_weights=str(tmp_path / 'init.weights.h5'),
                   steps=1, seed=5)
    run(exp, data)
    trainer = make_trainer(exp, data)
    ckpt = tf.train.latest_checkpoint(str(tmp_path / 'run' / 'checkpoints'))
    trainer.checkpoint.restore(ckpt).assert_existing_objects_matched()
    # After one step from the loaded weights w0 to w1 the average is 0.1 w0 + 0.9 w1 (decay
    # (1 + 0) / 10); averages left at the fresh seed-5 weights would differ from that.
    first = trainer.model.trainable_variables[0]
    i = next(i for i, v in enumerate(trainer.ema.weights) if v is first)
    w0 = np.array(tf.convert_to_tensor(source.model.trainable_variables[0]))
    w1 = np.array(tf.convert_to_tensor(first))
    np.testing.assert_allclose(np.array(trainer.ema.averages[i]), 0.1 * w0 + 0.9 * w1,
                               rtol=1e-5, atol=1e-6)


# --- Lookahead ------------------------------------------------------------------------------


def test_lookahead_pulls_the_weights_to_the_slow_copy_and_ends_on_it(tmp_path):
    data = make_data()
    exp = make_exp(tmp_path, lookahead_interval=2, lookahead_decay=0.9, lr_boundaries=[6])
    trainer = make_trainer(exp, data)
    assert trainer.evaluated_weights == 'Lookahead every 2 steps'
    paths = [v.path for v in trainer.lookahead.weights]
    assert set(paths) >= {v.path for v in trainer.model.trainable_variables}
    assert any('moving_mean' in p for p in paths)
    start = values(trainer.lookahead.weights)
    trainer.train_step(trainer.iterator)  # step 1: no synchronisation
    for slow, s0 in zip(values(trainer.lookahead.slow), start):
        np.testing.assert_array_equal(slow, s0)
    path = trainer.checkpoint.save(str(tmp_path / 'ckpt'))
    # The weights step 2 trains to, before the synchronisation: the same step without Lookahead.
    plain = make_trainer(make_exp(tmp_path / 'plain', lr_boundaries=[6]), data)
    plain.checkpoint.restore(path).assert_existing_objects_matched()
    plain.start_input()
    plain.train_step(plain.iterator)
    trained = values(plain.lookahead.weights if plain.lookahead else [v for v in plain.model.variables
                                               if keras.backend.is_float_dtype(v.dtype)])
    trainer.train_step(trainer.iterator)  # step 2: synchronise
    alpha = 0.9 ** 2 * (2 / 6) ** 3
    moved = 0
    for slow, weights, s0, w in zip(values(trainer.lookahead.slow), values(trainer.lookahead.weights), start, trained):
        np.testing.assert_allclose(slow, s0 + (1 - alpha) * (w - s0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(weights, slow)
        moved += not np.allclose(slow, w)
    assert moved, 'alpha > 0 keeps part of the old slow weights'
    for _ in range(3):
        trainer.train_step(trainer.iterator)  # steps 3-5
    slow5, fast5 = values(trainer.lookahead.slow), values(trainer.lookahead.weights)
    assert any(not np.array_equal(a, b) for a, b in zip(slow5, fast5))
    trainer.train_step(trainer.iterator)  # step 6, the last: the run ends on the slow weights
    for slow, weights, s5 in zip(values(trainer.lookahead.slow), values(trainer.lookahead.weights), slow5):
        np.testing.assert_array_equal(slow, s5)
        np.testing.assert_array_equal(weights, s5)


def test_resumed_lookahead_run_ends_where_an_uninterrupted_one_does(tmp_path):
    data = make_data()
    options = dict(lookahead_interval=2, lookahead_decay=0.9)
    straight = run(make_exp(tmp_path / 'a', **options), data)
    run(make_exp(tmp_path / 'b', steps=3, **options), data)  # stops between synchronisations
    resumed = run(make_exp(tmp_path / 'b', **options), data)
    assert straight['steps'] == resumed['steps'] == 6
    assert resumed['evaluated_weights'] == 'Lookahead every 2 steps'
    exp = make_exp(tmp_path / 'c', **options)
    final = {}
    for name in 'ab':
        trainer = make_trainer(exp, data)
        trainer.model.load_weights(str(tmp_path / name / 'run' / rundir.FINAL_WEIGHTS))
        final[name] = values(trainer.lookahead.weights)
    # A resume that lost the slow weights would restart them at the initialisation.
    for x, y in zip(final['a'], final['b']):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# --- flip test-time augmentation -----------------------------------------------------------


def numpy_views(images, tta):
    """The TTA views written out with numpy, independently of tta.tta_views."""
    x = np.asarray(images)
    return flip_translate_views(x) if tta == 'flip_translate' else [x, x[:, :, ::-1, :]]


@pytest.mark.parametrize('tta', ['flip', 'flip_translate'])
def test_tta_combines_its_views_as_the_papers_do(tmp_path, tta):
    """flip: the mean softmax of the image and its mirror; flip_translate: airbench's
    weighted logits."""
    data = make_data()
    exp_none = make_exp(tmp_path, model='asymmetric_cnn', module='test_fast')
    exp_tta = make_exp(tmp_path, model='asymmetric_cnn', module='test_fast', eval_tta=tta)
    plain, flipped = make_trainer(exp_none, data), make_trainer(exp_tta, data)
    flipped.model.set_weights(plain.model.get_weights())
    got, without = flipped.evaluate(data.test), plain.evaluate(data.test)

    probs, labels = [], []
    for images, y in data_loader.eval_input(data, data.test, 16):
        views = numpy_views(images, tta)
        assert len(views) == {'flip': 2, 'flip_translate': 6}[tta]
        if tta == 'flip_translate':
            p = flip_translate_probabilities([plain.model(v).numpy() for v in views])
        else:
            p = (sum(tf.nn.softmax(plain.model(v)) for v in views) / len(views)).numpy()
        probs.append(p)
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    p_true = probs[np.arange(len(labels)), labels]
    order = np.argsort(-probs, axis=1)
    assert got['examples'] == len(labels)
    np.testing.assert_allclose(got['loss'], np.mean(-np.log(p_true)), rtol=1e-5)
    assert got['top1_accuracy'] == pytest.approx(np.mean(order[:, 0] == labels))
    assert got['top5_accuracy'] == pytest.approx(np.mean((order[:, :5] == labels[:, None]).any(1)))
    assert got['loss'] != pytest.approx(without['loss'], rel=1e-4)


def test_run_records_say_which_views_and_weights_they_measured(tmp_path):
    summary = run(make_exp(tmp_path, eval_tta='flip'), make_data())
    assert summary['eval_tta'] == 'flip' and summary['evaluated_weights'] == 'raw'
    records = rundir.read_metrics(str(tmp_path / 'run'))
    evals = [r for r in records if r['kind'] == 'test']
    assert [r['step'] for r in evals] == [3, 6]
    assert all(r['eval_tta'] == 'flip' and r['eval_seconds'] >= 0 for r in evals)
    walls = [r['wall_seconds'] for r in records]
    assert walls == sorted(walls) and walls[-1] <= summary['wall_seconds'] + 0.1


def test_translated_views_shift_by_one_pixel_with_reflected_edges():
    from runner.training.tta import tta_views
    x = tf.reshape(tf.range(2 * 4 * 5 * 1, dtype=tf.float32), (2, 4, 5, 1))
    views = [np.array(v) for v in tta_views(x, 'flip_translate')]
    x = np.array(x)
    assert len(views) == 6
    np.testing.assert_array_equal(views[1][:, 1:, 1:], x[:, :-1, :-1])   # content moves down-right
    np.testing.assert_array_equal(views[1][:, 0, 1:], x[:, 1, :-1])      # reflected top row
    np.testing.assert_array_equal(views[2][:, :-1, :-1], x[:, 1:, 1:])
    for plain, mirror in zip(views[:3], views[3:]):
        np.testing.assert_array_equal(mirror, plain[:, :, ::-1])


# --- data-dependent layers and the BN offsets' learning rate --------------------------------


def airbench_exp(tmp_path, **train_parameters):
    return make_exp(tmp_path, model='cifar_airbench94', module=None,
                    model_parameters={'widths': [8, 8, 8]}, lr_boundaries=[3], **train_parameters)


def test_patch_whitening_whitens_the_patches_it_was_adapted_to():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 12, 12, 3))
    x = base + 0.8 * np.roll(base, 1, axis=1)   # neighbouring rows correlate
    x[..., 1] += 0.5 * x[..., 0]                # and so do the channels
    layer = fast.PatchWhitening(2)
    layer.build(x.shape)
    assert not layer.kernel.trainable and layer.bias.trainable
    layer.adapt(x)
    y = np.asarray(layer(x.astype('float32')))
    assert y.shape == (64, 11, 11, 24)
    first = y[..., :12].reshape(-1, 12)
    # Uncorrelated unit-variance outputs (eigenvalues >> epsilon), largest eigenvalue first.
    np.testing.assert_allclose(first.T @ first / len(first), np.eye(12), atol=0.01)
    np.testing.assert_allclose(y[..., 12:], -y[..., :12], rtol=1e-6)
    kernel = np.array(layer.kernel).reshape(12, 24)
    norms = np.linalg.norm(kernel[:, :12], axis=0)  # 1 / sqrt(eigenvalue + eps)
    assert (np.diff(norms) >= 0).all()


def test_a_fresh_run_adapts_the_whitening_to_the_training_images(tmp_path):
    data = make_data(n=48)
    exp = airbench_exp(tmp_path, adapt_examples=40, ema_decay=0.9)
    summary = run(exp, data)
    assert summary['status'] == 'finished'
    images = train_images(data, 40)
    expected = fast.PatchWhitening(2)
    expected.build(images.shape)
    expected.adapt(images)
    # final.weights.h5 holds the averages: they restarted at the adapted kernel, which
    # training (no gradient: frozen) leaves alone.
    trainer = make_trainer(exp, data)
    fresh = np.array(trainer.model.get_layer('stem_whiten').kernel)
    trainer.model.load_weights(str(tmp_path / 'run' / rundir.FINAL_WEIGHTS))
    got = np.array(trainer.model.get_layer('stem_whiten').kernel)
    np.testing.assert_allclose(got, np.array(expected.kernel), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, fresh)


def test_layers_deeper_in_the_model_are_adapted_to_their_own_inputs(tmp_path):
    data = make_data()
    trainer = make_trainer(make_exp(tmp_path, model='normalized_cnn', module='test_fast',
                                    adapt_examples=20), data)
    assert trainer.adapt_layers() == ['norm']
    images = train_images(data, 20)
    features = keras.Model(trainer.model.input, trainer.model.get_layer('conv').output)(images)
    norm = trainer.model.get_layer('norm')
    np.testing.assert_allclose(np.ravel(norm.mean), np.mean(features, axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_bn_bias_lr_multiplier_scales_only_the_bn_offsets_step(tmp_path):
    data = make_data()
    deltas = {}
    for m in (1.0, 8.0):
        trainer = make_trainer(make_exp(tmp_path / str(m), momentum=0.0, bn_bias_lr_multiplier=m,
                                        weight_decay=0.0), data)
        before = {v.path: np.array(v) for v in trainer.model.trainable_variables}
        trainer.train_step(trainer.iterator)
        deltas[m] = {v.path: np.array(v) - before[v.path] for v in trainer.model.trainable_variables}
        if m != 1:
            assert trainer.lr_boosted == {p for p in before if p.endswith('beta')} != set()
    for path, d in deltas[1.0].items():
        scale = 8.0 if path.endswith('beta') else 1.0
        np.testing.assert_allclose(deltas[8.0][path], scale * d, rtol=1e-4, atol=1e-7)
        assert np.abs(d).max() > 0


def test_bn_bias_lr_multiplier_leaves_the_offsets_weight_decay_alone(tmp_path):
    """airbench's bias_scaler raises the BN offsets' learning rate but not their weight decay:
    one SGD step (no momentum) moves a decayed offset b by -lr * (m * g_loss + wd * b)."""
    data = make_data()
    lr, wd, m = 0.1, 0.05, 8.0
    deltas, offsets = {}, {}
    for mult in (1.0, m):
        trainer = make_trainer(airbench_exp(tmp_path / str(mult), momentum=0.0, weight_decay=wd,
                                            bn_bias_lr_multiplier=mult, lr_values=[lr]), data)
        for v in trainer.model.trainable_variables:   # offsets start at 0: no decay to see
            if v.path.endswith('beta'):
                v.assign(np.linspace(-1, 1, v.shape[0]).astype('float32'))
        before = {v.path: np.array(v) for v in trainer.model.trainable_variables}
        trainer.train_step(trainer.iterator)
        deltas[mult] = {v.path: np.array(v) - before[v.path] for v in trainer.model.trainable_variables}
        offsets = {p: b for p, b in before.items() if p.endswith('beta')}
    assert len(offsets) == 6
    for path, b in offsets.items():
        g_loss = -deltas[1.0][path] / lr - wd * b
        assert np.abs(g_loss).max() > 1e-4
        np.testing.assert_allclose(deltas[m][path], -lr * (m * g_loss + wd * b), rtol=1e-3, atol=1e-6)
    # The kernels and the whitening bias take the same step either way.
    for path in deltas[1.0].keys() - offsets.keys():
        np.testing.assert_allclose(deltas[m][path], deltas[1.0][path], rtol=1e-4, atol=1e-7)


def test_freeze_after_stops_a_layer_at_its_step_and_nothing_else(tmp_path):
    """airbench's whitening bias trains for 3 epochs and then not at all: from the step
    named, its weights stay put (no gradient, momentum or decay), the rest trains on."""
    data = make_data()
    trainer = make_trainer(airbench_exp(tmp_path, freeze_after={'stem_whiten': 2}, weight_decay=0.01), data)
    bias = trainer.model.get_layer('stem_whiten').bias
    conv = trainer.model.get_layer('block1_conv1').kernel
    seen = [(np.array(bias), np.array(conv))]
    for _ in range(4):
        trainer.train_step(trainer.iterator)
        seen.append((np.array(bias), np.array(conv)))
    bias_moved = [not np.array_equal(a[0], b[0]) for a, b in zip(seen, seen[1:])]
    conv_moved = [not np.array_equal(a[1], b[1]) for a, b in zip(seen, seen[1:])]
    assert bias_moved == [True, True, False, False]   # steps 1-2 train it, 3-4 do not
    assert conv_moved == [True] * 4


@pytest.mark.parametrize('freeze, message', [
    ({'stem_whitten': 3}, "train_parameters.freeze_after: the model has no layer 'stem_whitten'; "
                          "did you mean 'stem_whiten'?"),
    ({'max_pool': 3}, "train_parameters.freeze_after: layer 'max_pool' has no trainable weights"),
])
def test_freeze_after_names_a_layer_with_weights(tmp_path, freeze, message):
    with pytest.raises(ConfigError) as e:
        make_trainer(airbench_exp(tmp_path, freeze_after=freeze), make_data())
    assert str(e.value) == message


def test_freeze_after_wants_a_step():
    with pytest.raises(ConfigError, match=r"train_parameters.freeze_after.stem_whiten: expected a step"):
        experiment_from_dict({'model': 'cifar_airbench94',
                              'train_parameters': {'freeze_after': {'stem_whiten': 'epoch 3'}}})


# --- models/fast.py -----------------------------------------------------------------------


@pytest.mark.parametrize('name', ['cifar_airbench94', 'cifar_resnet9'])
def test_the_speed_record_networks_decay_every_trainable_weight(name):
    """Both released codes hand every parameter to SGD's weight decay (decay_all=False:
    the kernels only)."""
    build = getattr(fast, name)
    model = build(weight_decay=1e-3)
    assert len(model.losses) == len(model.trainable_variables)
    kernels = [v for v in model.trainable_variables if v.path.endswith('kernel')]
    assert len(build(weight_decay=1e-3, decay_all=False).losses) == len(kernels) < len(model.trainable_variables)
    if name == 'cifar_airbench94':
        layer = model.get_layer('stem_whiten')
        again = fast.PatchWhitening.from_config(layer.get_config())
        assert again.bias_regularizer.get_config() == layer.bias_regularizer.get_config() == {'l2': 5e-4}


def test_partial_dirac_passes_the_first_channels_through():
    init = fast.PartialDirac('zeros')
    kernel = np.array(init((3, 3, 4, 6)))
    x = np.random.default_rng(0).standard_normal((1, 5, 5, 4)).astype('float32')
    y = tf.nn.conv2d(x, kernel, 1, 'SAME').numpy()
    np.testing.assert_allclose(y[..., :4], x, rtol=1e-6)
    assert not y[..., 4:].any()
    # A 2x2 kernel's centre is (1, 1), as torch.nn.init.dirac_ has it; filters past the
    # input channels keep the base initialiser's values.
    kernel = np.array(fast.PartialDirac(keras.initializers.Constant(0.5))((2, 2, 3, 5)))
    identity = np.zeros((2, 2, 3, 3))
    identity[1, 1, [0, 1, 2], [0, 1, 2]] = 1
    np.testing.assert_array_equal(kernel[..., :3], identity)
    assert (kernel[..., 3:] == 0.5).all()


def test_airbench_layout():
    model = fast.cifar_airbench94()
    kinds = [type(l).__name__ for l in model.layers[1:]]
    group = ['Conv2D', 'MaxPooling2D', 'BatchNormalization', 'Activation', 'Conv2D',
             'BatchNormalization', 'Activation']
    assert kinds == ['PatchWhitening', 'Activation'] + group * 3 + ['GlobalMaxPooling2D', 'Dense',
                                                                    'Rescaling']
    widths = [l.filters for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert widths == [64, 64, 256, 256, 256, 256]
    assert model.get_layer('stem_whiten').kernel.shape == (2, 2, 3, 24)
    assert model.get_layer('block1_conv1').input.shape[1:] == (31, 31, 24)
    # Without whitening the stem is a trainable 2x2 valid conv with a bias (288 + 24 weights).
    plain = fast.cifar_airbench94(whiten=False)
    stem = plain.get_layer('stem_conv')
    assert stem.kernel.shape == (2, 2, 3, 24) and stem.padding == 'valid' and stem.use_bias
    assert len(plain.trainable_weights) == len(model.trainable_weights) + 1
    bn = model.get_layer('block1_bn1')
    assert not bn.scale and bn.momentum == 0.6
    assert model.get_layer('block1_act1').activation is keras.activations.gelu
    # The logits are the classifier's output times 1/9.
    x = tf.random.normal((2, 32, 32, 3))
    features = keras.Model(model.input, model.get_layer('classifier').output)(x)
    np.testing.assert_allclose(model(x), features / 9, rtol=1e-5)


def test_resnet9_residual_stages_add_their_input():
    model = fast.cifar_resnet9()
    adds = [l for l in model.layers if isinstance(l, keras.layers.Add)]
    assert [l.name for l in adds] == ['block1_add', 'block3_add']
    assert [l.input[0].shape[-1] for l in adds] == [128, 512]
    assert model.get_layer('logits').scale == 0.125


def test_widths_are_checked():
    with pytest.raises(ValueError, match='widths must be 3 positive integers'):
        fast.cifar_airbench94(widths=[64, 256])


# --- the recipe -----------------------------------------------------------------------------


def test_fast_recipe_uses_the_fast_options():
    for exp in load_experiments(os.path.join(ROOT, 'experiments', 'cifar10_fast.yaml')):
        tp = exp.train_parameters
        assert exp.model == 'cifar_airbench94'
        assert tp.eval_tta == 'flip_translate'
        # airbench94's tricks, as measured in the README (Lookahead, not a weight average)
        assert tp.lookahead_interval == 5 and tp.ema_decay is None
        assert tp.precision == 'fastest'   # bfloat16 only where this CPU runs it faster
        assert tp.bn_bias_lr_multiplier == 64 and exp.model_parameters.get('whiten', True)
        assert tp.label_smoothing > 0
        # airbench's schedule: 0.2x the peak, the peak at 23% of the steps, 0.07x at the end
        assert tp.lr_schedule == 'piecewise_linear' and tp.warmup_steps == 0
        start, peak, end = tp.lr_values
        assert (start / peak, end / peak) == pytest.approx((0.2, 0.07))
        assert tp.lr_boundaries[1] == int(0.23 * tp.lr_boundaries[2])
        assert exp.dataset.flip and exp.dataset.crop_padding == 2
        assert exp.dataset.alternate_flips and exp.dataset.crop_padding_mode == 'reflect'


@pytest.mark.slow
def test_fast_options_under_mirrored_strategy(tmp_path, image_folder):
    # Two logical CPUs, split before TensorFlow starts. The network has batch norm, whose
    # statistics are per replica variables that the averages must read and swap too, BN
    # offsets whose gradients are scaled, a whitening layer adapted before step 1, and
    # Lookahead's slow copy, synchronised in the cross-replica context.
    script = ("import sys, tensorflow as tf\n"
              "cpu = tf.config.list_physical_devices('CPU')[0]\n"
              "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
              "from runner.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    path = tmp_path / 'mirrored.yaml'
    path.write_text(f"""
model: cifar_airbench94
model_parameters: {{widths: [8, 8, 8]}}
dataset: {{image_folder: {image_folder}, alternate_flips: true, crop_padding_mode: reflect}}
train_parameters:
  logdir: {tmp_path / 'logs'}
  run_name: dist
  lookahead_interval: 2
  batch_size: 16
  val_interval: 3
  lr_values: [0.1]
  lr_boundaries: [6]
  distribution: mirrored
  ema_decay: 0.8
  eval_tta: flip_translate
  bn_bias_lr_multiplier: 64
  adapt_examples: 20
""")
    p = subprocess.run([sys.executable, '-c', script, str(path), '--no-smoke'], cwd=ROOT,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((tmp_path / 'logs' / 'dist' / 'summary.json').read_text())
    assert s['replicas'] == 2 and s['status'] == 'finished'
    assert s['evaluated_weights'] == 'exponential moving average, decay 0.8, over Lookahead every 2 steps'
    assert 'the final evaluation and final.weights.h5 use the averaged weights' in p.stdout
    assert 'adapted stem_whiten to 20 training images' in p.stdout
    # Seeds 0-2 reached 0.75, 0.75 and 0.875 after these 6 steps (40 test images of 4
    # colour classes, chance 0.25): a working run is far above chance; the margin is six
    # images below the lowest.
    assert s['eval_tta'] == 'flip_translate' and s['test_top1_accuracy'] >= 0.6, s


def test_deterministic_is_one_experiments_setting(tmp_path):
    # Op determinism is a process-wide switch: an experiment without `deterministic: true`
    # that runs after one with it must not inherit it.
    from runner import compat
    data = make_data()
    run(make_exp(tmp_path / 'a', deterministic=True, lr_boundaries=[1]), data)
    assert compat.op_determinism_enabled()
    run(make_exp(tmp_path / 'b', lr_boundaries=[1]), data)
    assert not compat.op_determinism_enabled()
