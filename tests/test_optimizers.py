"""train_parameters.optimizer: every optimizer trains, resumes bit-exactly, and updates as
its documented rule says; keys that an optimizer does not read are refused in one line."""
import json
import os

import h5py
import keras
import numpy as np
import pytest
import yaml

from conftest import make_image_folder, one_line_error
from runner import cli
from runner.config.errors import ConfigError
from runner.config.expand import experiment_from_dict
from runner.training.optimizers import KernelMuon, build_optimizer

TOTAL = 24  # steps of each run; the resumed one stops at half
# Per optimizer: train_parameters beyond the shared ones. The muon_sgd case is
# airbench94_muon's arrangement (SGD with a boosted BN-offset rate on the rest, weight
# normalisation, three Newton-Schulz steps, no RMS scaling) with EMA and Lookahead on top.
CASES = {
    'adamw': {'optimizer': 'adamw', 'lr_values': [0.01], 'weight_decay': 0.05},
    'lion': {'optimizer': 'lion', 'lr_values': [0.002], 'weight_decay': 0.1},
    'lamb': {'optimizer': 'lamb', 'lr_values': [0.02], 'weight_decay': 0.01},
    'muon': {'optimizer': 'muon', 'lr_values': [0.02]},
    'muon_sgd': {'optimizer': 'muon', 'lr_values': [0.1], 'muon_other': 'sgd', 'muon_other_lr_ratio': 0.5,
                 'momentum': 0.85, 'nesterov': True, 'bn_bias_lr_multiplier': 4,
                 'muon_normalize_weights': True, 'muon_ns_steps': 3, 'muon_rms_rate': 0,
                 'weight_decay': 1e-3, 'ema_decay': 0.9, 'lookahead_interval': 5},
}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('opt_images'))


def experiment(images, logdir, run_name, **train):
    tp = dict(logdir=str(logdir), run_name=run_name, batch_size=16, eval_batch_size=40,
              log_interval=4, val_interval=TOTAL, checkpoint_interval=4, deterministic=True,
              lr_schedule='linear', lr_values=[0.05], lr_boundaries=[TOTAL])
    tp.update(train)
    return {'module': 'tiny_models', 'model': 'tiny_cnn', 'dataset': {'image_folder': images},
            'train_parameters': tp}


def run(path, capsys, *extra):
    capsys.readouterr()
    try:
        rc = cli.main([str(path), '--no-smoke', *extra])
    finally:
        keras.backend.clear_session()
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    return out


def weights(run_dir):
    out = {}
    with h5py.File(os.path.join(run_dir, 'final.weights.h5'), 'r') as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                     else None)
    return out


def train_losses(run_dir):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [(r['step'], r['loss']) for r in map(json.loads, f) if r['kind'] == 'train']


@pytest.mark.parametrize('name', sorted(CASES))  # sgd's resume: tests/test_resilience.py
def test_trains_and_resumes_bit_exactly(name, images, tmp_path, capsys):
    """The loss falls, and a run stopped at step 12 and resumed ends with the weights of the
    uninterrupted run, bit for bit, having logged the same losses."""
    whole, parts = tmp_path / 'whole.yaml', tmp_path / 'parts.yaml'
    whole.write_text(yaml.safe_dump(experiment(images, tmp_path / 'logs', 'whole', **CASES[name])))
    parts.write_text(yaml.safe_dump(experiment(images, tmp_path / 'logs', 'parts', **CASES[name])))
    run(whole, capsys)
    run(parts, capsys, '--set', f'train_parameters.steps={TOTAL // 2}')
    run(parts, capsys)
    losses = train_losses(tmp_path / 'logs' / 'whole')
    assert losses[-1][1] < 0.7 * losses[0][1], f'{name}: the loss did not fall: {losses}'
    assert train_losses(tmp_path / 'logs' / 'parts') == losses
    a, b = weights(tmp_path / 'logs' / 'whole'), weights(tmp_path / 'logs' / 'parts')
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k].tobytes() != b[k].tobytes()]
    assert not differ, f'{name}: the resumed run ends with other weights in {differ}'


# ---------------------------------------------------------------------------
# One update against the rule in numpy

def toy(tp_extra, weight_decay=0.1):
    """A conv + BN + dense model with L2 on its kernels, its optimizer, a fixed gradient."""
    tp = experiment('/nonexistent', '/tmp', 'toy', lr_values=[0.1], weight_decay=weight_decay,
                    **tp_extra)['train_parameters']
    exp = experiment_from_dict({'model': 'tiny_cnn', 'train_parameters': tp})
    reg = keras.regularizers.L2(weight_decay / 2)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, kernel_regularizer=reg)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_regularizer=reg)(x))
    optimizer = build_optimizer(exp.train_parameters, model, 0.1)
    variables = model.trainable_variables
    optimizer.build(variables)
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(v.shape).astype(np.float32) for v in variables]
    before = [v.numpy().copy() for v in variables]
    optimizer.apply_gradients(zip(grads, variables))
    model.optimizer = optimizer
    return model, variables, before, grads, [v.numpy() for v in variables]


def kernel(v):
    return len(v.shape) >= 2


def test_adamw_step_is_decoupled_adam():
    """AdamW: w -= lr * wd * w (kernels only: what the model regularised), then the
    bias-corrected Adam step; no L2 is left in the model's loss."""
    model, variables, before, grads, after = toy({'optimizer': 'adamw', 'beta_1': 0.8, 'beta_2': 0.99,
                                                  'epsilon': 1e-3})
    assert not model.losses
    for v, w, g, new in zip(variables, before, grads, after):
        decayed = w * (1 - 0.1 * 0.1) if kernel(v) else w
        m, s = 0.2 * g, 0.01 * g * g
        alpha = 0.1 * np.sqrt(1 - 0.99) / (1 - 0.8)
        np.testing.assert_allclose(new, decayed - alpha * m / (np.sqrt(s) + 1e-3), rtol=1e-5, atol=1e-6,
                                   err_msg=v.path)


def test_lion_step_is_signed_interpolation():
    """Lion: w -= lr * wd * w, then w -= lr * sign(beta_1 * m + (1 - beta_1) * g), m = 0."""
    _, variables, before, grads, after = toy({'optimizer': 'lion'})
    for v, w, g, new in zip(variables, before, grads, after):
        decayed = w * (1 - 0.1 * 0.1) if kernel(v) else w
        np.testing.assert_allclose(new, decayed - 0.1 * np.sign(0.1 * g), rtol=1e-5, atol=1e-6,
                                   err_msg=v.path)


def test_lamb_step_is_trust_ratio_adam():
    """Lamb: w -= lr * wd * w, then the Adam direction r scaled by ||w|| / ||r|| per variable."""
    _, variables, before, grads, after = toy({'optimizer': 'lamb'})
    for v, w, g, new in zip(variables, before, grads, after):
        decayed = w * (1 - 0.1 * 0.1) if kernel(v) else w
        r = g / (np.abs(g) + 1e-6)  # m_hat / (sqrt(v_hat) + eps) at step 1
        ratio = np.linalg.norm(decayed) / np.linalg.norm(r) if np.linalg.norm(decayed) > 0 else 1.0
        np.testing.assert_allclose(new, decayed - ratio * 0.1 * r, rtol=1e-4, atol=1e-6, err_msg=v.path)


def newton_schulz(g, steps):
    """Keras Muon's (and airbench's) quintic iteration, in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.astype(np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def test_muon_orthogonalises_the_flattened_conv_kernel():
    """muon: the conv kernel (not 2-D, so Keras's Muon alone would give it AdamW) takes the
    Nesterov Muon step on its (kh*kw*in, out) matrix, after airbench's normalisation to
    norm sqrt(out); the classifier and BN take SGD (muon_other: sgd), its kernel with its
    L2 gradient still from the loss, the conv kernel without any."""
    model, variables, before, grads, after = toy(
        {'optimizer': 'muon', 'muon_other': 'sgd', 'muon_momentum': 0.6, 'muon_ns_steps': 3,
         'muon_rms_rate': 0, 'muon_normalize_weights': True, 'muon_other_lr_ratio': 2.0,
         'momentum': 0.85, 'nesterov': True}, weight_decay=0.0)
    assert isinstance(model.optimizer, KernelMuon)
    conv, *rest = variables
    assert len(conv.shape) == 4
    w, g = before[0], grads[0]
    nesterov = g + 0.6 * g  # m = g at step 1
    w = w * np.sqrt(4) / np.linalg.norm(w)
    update = newton_schulz(nesterov.reshape(-1, 4), 3).reshape(w.shape)
    np.testing.assert_allclose(after[0], w - 0.1 * update, rtol=1e-4, atol=1e-5)
    for v, w, g, new in zip(rest, before[1:], grads[1:], after[1:]):
        m = -0.2 * g  # Keras SGD: m = momentum * m - lr * g, lr = 0.1 * 2
        np.testing.assert_allclose(new, w + 0.85 * m - 0.2 * g, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_muon_keeps_l2_on_its_sgd_part_only():
    """With muon_other: sgd the classifier keeps its L2 regulariser (SGD's weight decay), the
    Muon-updated conv kernel's is taken off the loss (decayed by the optimizer instead)."""
    model, variables, *_ = toy({'optimizer': 'muon', 'muon_other': 'sgd'})
    regularised = [v.path for v in model.trainable_variables if v.regularizer is not None]
    assert regularised == [variables[-2].path] and len(variables[-2].shape) == 2


# ---------------------------------------------------------------------------
# Validation

@pytest.mark.parametrize('train, needles', [
    ({'optimizer': 'adam'}, ("train_parameters.optimizer: 'adam'", "did you mean 'adamw'")),
    ({'beta_1': 0.9}, ('train_parameters.beta_1', 'optimizer sgd does not read it')),
    ({'optimizer': 'adamw', 'muon_ns_steps': 3}, ('train_parameters.muon_ns_steps', 'optimizer adamw')),
    ({'optimizer': 'lion', 'epsilon': 1e-8}, ('train_parameters.epsilon', 'optimizer lion')),
    ({'optimizer': 'adamw', 'momentum': 0.8}, ('train_parameters.momentum', 'optimizer adamw')),
    ({'optimizer': 'lamb', 'bn_bias_lr_multiplier': 64},
     ('train_parameters.bn_bias_lr_multiplier', 'Adam-type')),
    ({'optimizer': 'muon', 'nesterov': True}, ('train_parameters.nesterov', 'muon_other: adamw')),
    ({'optimizer': 'muon', 'muon_other': 'sgd', 'beta_2': 0.9}, ('train_parameters.beta_2', 'muon_other: sgd')),
    ({'optimizer': 'muon', 'muon_other': 'lion'}, ("train_parameters.muon_other: 'lion'",)),
    ({'optimizer': 'adamw', 'beta_2': 1.0}, ('train_parameters.beta_2', 'must be in [0, 1)')),
])
def test_keys_an_optimizer_does_not_read_are_refused(train, needles, tmp_path, capsys):
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(experiment(str(tmp_path), tmp_path / 'logs', 'bad', **train)))
    one_line_error(capsys, cli.main([str(path), '--list']), 2, str(path), '(bad)', *needles)


def test_sgd_is_the_default_and_unchanged():
    """Without an optimizer key the runner trains with the seed runner's optimizer: Keras's
    SGD, momentum 0.9, no Nesterov, the weight decay left in the model's loss as L2. Two
    steps move every weight exactly as keras.optimizers.SGD moves a copy of it."""
    tp = experiment_from_dict({'model': 'tiny_cnn'}).train_parameters
    assert (tp.optimizer, tp.momentum, tp.nesterov) == ('sgd', 0.9, False)
    with pytest.raises(ConfigError):
        experiment_from_dict({'model': 'tiny_cnn', 'train_parameters': {'optimizer': 'sgd', 'epsilon': 1.0}})
    model, variables, before, grads, _ = toy({})  # no optimizer key: the default
    assert len(model.losses) == 2, 'the L2 of both kernels stays in the loss'
    keras_sgd = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    copies = [keras.Variable(b) for b in before]
    keras_sgd.apply_gradients(zip(grads, copies))
    second = [-0.5 * g for g in grads]  # a second step, against the momentum of the first
    model.optimizer.apply_gradients(zip(second, variables))
    keras_sgd.apply_gradients(zip(second, copies))
    for v, c in zip(variables, copies):
        assert v.numpy().tobytes() == c.numpy().tobytes(), v.path
    assert all(not np.array_equal(v.numpy(), b) for v, b in zip(variables, before))


def test_muon_leaves_a_kernel_frozen_by_freeze_after_alone(tmp_path):
    """freeze_after on a layer whose kernel Muon updates. Muon is built with every weight of
    the model and moves the kernel (momentum and decoupled decay included) until the step
    named; from that step the train step gives the kernel no gradient and Muon, still holding
    its momentum, neither moves nor decays it, while the other Muon kernels train on."""
    from test_fast import make_data, make_exp, make_trainer
    from runner.training.optimizers import muon_variables
    exp = make_exp(tmp_path, optimizer='muon', lr_values=[0.02], weight_decay=0.1,
                   freeze_after={'conv2d': 2})
    trainer = make_trainer(exp, make_data())
    kernels = muon_variables(trainer.model)
    frozen = trainer.model.get_layer('conv2d').kernel
    assert frozen.path in [k.path for k in kernels] and len(kernels) == 2
    seen = [[k.numpy().copy() for k in kernels]]
    for _ in range(4):
        trainer.train_step(trainer.iterator)
        seen.append([k.numpy().copy() for k in kernels])
    moved = [[not np.array_equal(a, b) for a, b in zip(before, after)] for before, after in zip(seen, seen[1:])]
    i = [k.path for k in kernels].index(frozen.path)
    assert [m[i] for m in moved] == [True, True, False, False]  # steps 1-2 train it, 3-4 do not
    assert [m[1 - i] for m in moved] == [True] * 4


def test_muon_takes_airbench94s_conv_filters():
    """On cifar_airbench94, Muon takes the six 3x3 conv filters: not the frozen whitening
    kernel, not the classifier."""
    from runner.training.optimizers import muon_variables
    from runner.registry import build_model
    model = build_model(experiment_from_dict({'model': 'cifar_airbench94'}), (32, 32, 3), 10)
    assert [v.path for v in muon_variables(model)] == [
        f'block{i}_conv{j}/kernel' for i in (1, 2, 3) for j in (1, 2)]


def test_trains_under_mixed_float16_loss_scaling(images, tmp_path, capsys):
    """Wrapped in LossScaleOptimizer (mixed_float16), the runner's own Muon (with its SGD
    part, EMA and Lookahead) trains and its loss falls."""
    path = tmp_path / 'mp.yaml'
    train = {**CASES['muon_sgd'], 'precision': 'mixed_float16', 'deterministic': False}
    path.write_text(yaml.safe_dump(experiment(images, tmp_path / 'logs', 'mp', **train)))
    run(path, capsys)
    losses = train_losses(tmp_path / 'logs' / 'mp')
    assert all(np.isfinite(l) for _, l in losses) and losses[-1][1] < 0.7 * losses[0][1], losses
