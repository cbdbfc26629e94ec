"""The regularisers of docs/techniques.md (Cutout, random erasing, AutoAugment, RandAugment,
mixup, CutMix, stochastic depth, gradient clipping and accumulation): each does what its
paper says to a batch, trains end to end, resumes bit for bit after a SIGKILL, shows its
inputs and mixed labels in a real TensorBoard, and is listed by `report`."""
import contextlib
import io
import json
import os
import re
import signal
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import make_image_folder, one_line_error
from runner import cli
from runner.config.regularisers import Regularisers
from runner.data import autoaugment, mixing

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
SEED = tf.constant([7, 3], tf.int64)


def batch_of_indices(n=32, size=32):
    """Image i is the constant i / n (normalised), of class i: whatever is mixed can be read
    back from the pixel values."""
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None, None] / n, size * size * 3)
    return tf.constant(x.reshape(n, size, size, 3)), tf.constant(np.arange(n), tf.int32)


def box(mask):
    """(rows, columns) of the bounding box of a [H, W] bool mask."""
    rows, cols = np.nonzero(mask)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


# ---------------------------------------------------------------------------
# What each does to a batch

def test_cutout_sets_a_square_clipped_at_the_border_to_the_mean():
    x, _ = batch_of_indices()
    x = x + 1.0  # no pixel is 0 before
    out = mixing.cutout(x, SEED, 16).numpy()
    for img in out:
        zero = np.all(img == 0, axis=-1)
        h, w = box(zero)
        assert zero.sum() == h * w and 8 <= h <= 16 and 8 <= w <= 16, (h, w, zero.sum())
    full = [np.all(img == 0, axis=-1).sum() == 256 for img in out]
    assert 0 < sum(full) < len(out)  # most squares whole, some clipped at the border


def test_random_erasing_draws_the_papers_rectangles_with_probability_p():
    x, _ = batch_of_indices(256)
    out = mixing.random_erasing(x + 10.0, SEED, 0.5, (0.02, 0.4), 0.3, MEAN, STD).numpy()
    erased = 0
    for img in out:
        changed = np.any(img < 5.0, axis=-1)  # random values normalised: at most (1 - 0.5) / 0.25
        if changed.any():
            erased += 1
            h, w = box(changed)
            assert changed.sum() == h * w
            assert 0.02 * 1024 - 2 * 32 <= h * w <= 0.4 * 1024 + 2 * 32, (h, w)
            assert 0.3 * 0.8 <= h / w <= 1 / 0.3 / 0.8, (h, w)
    assert 0.35 < erased / len(out) < 0.65, erased


@pytest.mark.parametrize('kind', ['mixup', 'cutmix'])
def test_mixup_and_cutmix_mix_images_and_labels_by_the_same_share(kind):
    """One lambda per batch (the papers' code): each image is its own and one partner's,
    and its label gives each the share of the image it has."""
    x, y = batch_of_indices()
    reg = Regularisers(mixup_alpha=1.0 if kind == 'mixup' else 0.0,
                       cutmix_alpha=1.0 if kind == 'cutmix' else 0.0)
    out, target = mixing.mix(x, y, SEED, 32, reg)
    out, target = out.numpy(), target.numpy()
    assert target.shape == (32, 32) and np.allclose(target.sum(1), 1.0)
    assert len({round(float(t.max()), 5) for t in target if t.max() < 1}) == 1  # one lambda
    for i, (img, t) in enumerate(zip(out, target)):
        others = [k for k in np.nonzero(t > 1e-6)[0] if k != i]
        partner = int(others[0]) if others else i
        if kind == 'mixup':
            assert np.allclose(img, t[i] * i / 32 + t[partner] * partner / 32, atol=1e-5)
        else:
            values, counts = np.unique(np.round(img[..., 0] * 32).astype(int), return_counts=True)
            shares = dict(zip(values, counts / 1024))
            assert set(shares) <= {i, partner}
            assert shares.get(partner, 0) == pytest.approx(t[partner] if partner != i else 0)


def test_a_batch_is_a_function_of_its_seed():
    x, y = batch_of_indices()
    reg = Regularisers(randaugment_ops=2, cutout_size=8, random_erasing_prob=0.5, mixup_alpha=1.0,
                       cutmix_alpha=1.0, mix_prob=0.8)
    a = mixing.apply(x, y, SEED, reg, MEAN, STD, 32)
    b = mixing.apply(x, y, SEED, reg, MEAN, STD, 32)
    c = mixing.apply(x, y, SEED + [0, 1], reg, MEAN, STD, 32)
    assert all(np.array_equal(u.numpy(), v.numpy()) for u, v in zip(a, b))
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_randaugment_draws_operations_per_image():
    """Keras' RandAugment gives a whole batch the same operations; the paper draws them per
    image. 64 copies of one image come out as many different images, at the given strength."""
    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype(np.float32)
    out = autoaugment.rand_augment(tf.constant(np.repeat(img, 64, 0)), SEED, 1, 9).numpy()
    distinct = {o.tobytes() for o in out}
    assert len(distinct) >= 10, len(distinct)
    assert out.min() >= 0 and out.max() <= 255


def test_autoaugment_policies_are_the_papers_tables():
    for name, policy in autoaugment.POLICIES.items():
        assert len(policy) == 25, name
        for sub in policy:
            assert len(sub) == 2 and all(op in autoaugment.OPS and 0 <= p <= 1 and 0 <= level <= 9
                                         for op, p, level in sub), sub
    img = tf.constant(np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3)).astype(np.float32))
    for name in autoaugment.POLICIES:
        out = autoaugment.auto_augment(img, SEED, name).numpy()
        assert out.shape == img.shape and not np.array_equal(out, img.numpy())


def test_stochastic_depth_drops_units_linearly_in_depth():
    import models
    m = models.cifar_resnet110(drop_path_rate=0.5)
    rates = [layer.rate for layer in m.layers if layer.name.endswith('_drop_path')]
    assert len(rates) == 54 and rates[-1] == pytest.approx(0.5)
    assert np.allclose(rates, 0.5 * np.arange(1, 55) / 54)
    for m in (models.cifar_wide_resnet(10, 1, drop_path_rate=0.1),
              models.cifar_resnext(11, 2, 4, drop_path_rate=0.1),
              models.resnet50_v2((64, 64, 3), 10, drop_path_rate=0.1)):
        assert sum(layer.name.endswith('_drop_path') for layer in m.layers) > 0, m.name
    trainable = sum(int(np.prod(v.shape)) for v in models.cifar_preact_resnet18().trainable_weights)
    assert trainable == 11_171_274  # mixup-cifar10's PreActResNet18: kuangliu's 11,171,146 + stem BN


# ---------------------------------------------------------------------------
# Trained end to end

STEPS = 20
EVERY = {  # every key of docs/techniques.md's regularisers, on at once
    'dataset': {'randaugment_ops': 2, 'randaugment_magnitude': 9, 'cutout_size': 8,
                'random_erasing_prob': 0.5, 'mixup_alpha': 1.0, 'cutmix_alpha': 1.0},
    'train_parameters': {'clip_grad_norm': 1.0, 'gradient_accumulation_steps': 2},
}


def experiment(images, logdir, name, dataset=None, model='tiny_cnn', model_parameters=None, **train):
    tp = dict(logdir=str(logdir), run_name=name, batch_size=16, lr_values=[0.05],
              lr_boundaries=[STEPS], log_interval=5, val_interval=10, checkpoint_interval=5)
    tp.update(train)
    return {'module': None if model.startswith('cifar_') else 'tiny_models', 'model': model,
            'model_parameters': model_parameters or {},
            'dataset': {'image_folder': images, **(dataset or {})}, 'train_parameters': tp}


def write(path, *docs):
    path.write_text(yaml.safe_dump_all([{k: v for k, v in d.items() if v is not None} for d in docs]))
    return str(path)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('reg-imgs'))


@pytest.fixture(scope='module')
def trained(images, tmp_path_factory):
    """Two runs in one log directory: every input regulariser with clipping and accumulation
    on tiny_cnn; AutoAugment's CIFAR-10 policy and Cutout with stochastic depth on a ResNet-8.
    Trained in this process (cli.main), their output kept."""
    import keras
    tmp = tmp_path_factory.mktemp('reg-runs')
    logdir = tmp / 'logs'
    outs = {}
    for exp in (experiment(images, logdir, 'every', **EVERY['train_parameters'],
                           dataset=EVERY['dataset']),
                experiment(images, logdir, 'aa_sd', {'autoaugment': 'cifar10', 'cutout_size': 16},
                           model='cifar_resnet', model_parameters={'depth': 8, 'drop_path_rate': 0.5})):
        name = exp['train_parameters']['run_name']
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.main([write(tmp / f'{name}.yaml', exp), '--no-smoke'])
        keras.backend.clear_session()
        outs[name] = buf.getvalue()
        assert rc == 0, buf.getvalue()
    return {'logdir': logdir, 'out': outs}


def records(run_dir):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_every_regulariser_trains_end_to_end(trained):
    """Both runs finish, learn (the mixed-label training error falls, the test error of the
    colour classes is below chance), record their keys in config.yaml and say in the log what
    their training error means."""
    for name in ('every', 'aa_sd'):
        run_dir = trained['logdir'] / name
        s = json.load(open(run_dir / 'summary.json'))
        assert s['status'] == 'finished' and s['steps'] == STEPS, s
        train = [r for r in records(run_dir) if r['kind'] == 'train']
        assert [r['step'] for r in train] == [5, 10, 15, 20]
        assert all(np.isfinite(r['loss']) for r in train)
        assert s['test_top1_accuracy'] > 0.4, s  # 4 classes: chance is 0.25
    out = trained['out']['every']
    assert 'regularisers: RandAugment N=2 M=9, Cutout 8px, random erasing p=0.5, mixup alpha=1 or ' \
           'CutMix alpha=1 (CutMix p=0.5), gradient clipping at norm 1, gradients of 2 batches per ' \
           'update; the training error is against the mixed labels' in out, out
    errors = [float(e) for e in re.findall(r'step \d+/20: loss \S+ mixed-label error ([\d.]+)%', out)]
    assert len(errors) == 4 and errors[-1] < errors[0], out
    config = yaml.safe_load(open(trained['logdir'] / 'every' / 'config.yaml'))
    assert config['dataset']['mixup_alpha'] == 1.0 and config['train_parameters']['gradient_accumulation_steps'] == 2
    assert 'regularisers: AutoAugment (cifar10 policy), Cutout 16px, stochastic depth 0.5' in trained['out']['aa_sd']
    config = yaml.safe_load(open(trained['logdir'] / 'aa_sd' / 'config.yaml'))
    assert config['model_parameters']['drop_path_rate'] == 0.5


def test_report_lists_each_runs_regularisers(trained, capsys):
    from runner.commands import report
    assert report.main([str(trained['logdir'])]) == 0
    md = (trained['logdir'] / 'report.md').read_text()
    section = md.split('## Regularisers', 1)[1].split('\n## ', 1)[0]
    assert '- **aa_sd**: AutoAugment (cifar10 policy), Cutout 16px, stochastic depth 0.5' in section, section
    assert '- **every**: RandAugment N=2 M=9, Cutout 8px, random erasing p=0.5' in section, section


@pytest.mark.slow
def test_tensorboard_shows_the_augmented_inputs_and_their_mixed_labels(trained):
    """Through a real TensorBoard: the first batch's grid of the mixed run, and its labels
    table, 4 x 4 cells in the grid's places, each one class or two with shares adding to 1."""
    from test_tensorboard import TensorBoard
    board = TensorBoard(str(trained['logdir']))
    try:
        board.wait_for(['every', 'aa_sd'])
        grid = board.get('/data/plugin/images/images?run=every&tag=train/input_images&sample=0')
        png = tf.io.decode_png(board.get('/data/plugin/images/' + grid[0]['query'].join(
            ['individualImage?', '']))).numpy()
        assert png.shape == (4 * 34, 4 * 34, 3) and png.std() > 10
        text = board.get('/data/plugin/text/text?run=every&tag=train/input_labels')
        rows = re.findall(r'<tr>(.*?)</tr>', text[0]['text'], re.S)[1:]
        cells = [c for row in rows for c in re.findall(r'<td>(.*?)</td>', row, re.S)]
        assert len(rows) == 4 and len(cells) == 16, text[0]['text']
        for cell in cells:
            parts = re.findall(r'([\d.]+) (class\d)', cell)
            assert 1 <= len(parts) <= 2 and sum(float(p) for p, _ in parts) == pytest.approx(1, abs=0.02), cell
        assert any(len(re.findall('class', c)) == 2 for c in cells)  # mixed ones are named as such
        # A run without mixing has its grid and no labels table.
        tags = board.get('/data/plugin/text/tags')
        assert 'train/input_labels' in tags['every'] and 'train/input_labels' not in tags.get('aa_sd', [])
    finally:
        board.close()


# ---------------------------------------------------------------------------
# Exact resume after a SIGKILL

@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact_with_mixing_and_randaugment(images, tmp_path):
    """mixup, CutMix (both, on 80% of batches), RandAugment, Cutout and random erasing in the
    input, stochastic depth in a ResNet-8, two batches per update: killed with SIGKILL part-way
    and run again, the run ends with the uninterrupted run's weights and logged losses, bit
    for bit: every random draw comes from (seed, batch), or from the checkpointed dropout
    generators, and the data restarts at batch step x 2."""
    from test_resilience import Child, assert_same_weights, metrics, run_child, train_records
    total = 40
    exp = experiment(images, tmp_path / 'logs', 'ref', dict(EVERY['dataset'], mix_prob=0.8),
                     model='cifar_resnet', model_parameters={'depth': 8, 'drop_path_rate': 0.2},
                     deterministic=True, gradient_accumulation_steps=2, checkpoint_interval=1,
                     val_interval=20)
    exp['train_parameters']['lr_boundaries'] = [total]
    reference = Child([write(tmp_path / 'ref.yaml', exp), '--no-smoke'], tmp_path / 'ref-err.txt')
    exp['train_parameters']['run_name'] = 'killed'
    path = write(tmp_path / 'killed.yaml', exp)
    child = Child([path, '--no-smoke'], tmp_path / 'killed-err.txt')
    assert child.wait_for(r'^killed step (1[05]|2\d)/40: loss', timeout=400), child.stdout + child.stderr
    time.sleep(0.2)
    child.kill(signal.SIGKILL)
    killed_at = json.load(open(tmp_path / 'logs' / 'killed' / 'summary.json'))['steps']
    assert 0 < killed_at < total, killed_at
    rc, resumed = run_child([path, '--no-smoke'], tmp_path / 'resumed-err.txt', timeout=400)
    assert rc == 0 and 'resuming from' in resumed.stdout, resumed.stdout + resumed.stderr
    assert reference.finish(timeout=400) == 0, reference.stdout + reference.stderr
    ref_dir, run_dir = tmp_path / 'logs' / 'ref', tmp_path / 'logs' / 'killed'
    assert_same_weights(run_dir / 'final.weights.h5', ref_dir / 'final.weights.h5')
    assert train_records(metrics(run_dir)) == train_records(metrics(ref_dir))


@pytest.mark.parametrize('where, key, value, needle', [
    ('dataset', 'autoaugment', 'svhn', 'dataset.autoaugment'),
    ('dataset', 'random_erasing_area', [0.5, 0.1], 'dataset.random_erasing_area'),
    ('dataset', 'mixup_alpha', -1, 'dataset.mixup_alpha'),
    ('dataset', 'mix_prob', 1.5, 'dataset.mix_prob'),
    ('train_parameters', 'gradient_accumulation_steps', 0, 'train_parameters.gradient_accumulation_steps'),
    ('train_parameters', 'clip_grad_norm', 0, 'train_parameters.clip_grad_norm'),
    ('model_parameters', 'drop_path_rate', 1.5, 'drop_path_rate'),
])
def test_a_wrong_value_is_one_line(images, tmp_path, capsys, where, key, value, needle):
    exp = experiment(images, tmp_path / 'logs', 'bad', model='cifar_resnet',
                     model_parameters={'depth': 8})
    (exp['model_parameters'] if where == 'model_parameters' else exp[where])[key] = value
    one_line_error(capsys, cli.main([write(tmp_path / 'bad.yaml', exp), '--no-smoke']), 2, needle)
    assert not (tmp_path / 'logs' / 'bad').exists()


def test_clipping_and_accumulation_update_once_per_step_with_the_steps_rate():
    """Two batches' gradients averaged, clipped to norm 1, applied once at the schedule's
    rate for that update (0.1, then 0.01 from update 1): Keras alone would read the rate at
    its batch count."""
    import keras
    from runner.config.schema import TrainConfig
    from runner.training.optimizers import build_optimizer
    from runner.training.schedule import make_lr_schedule
    tp = TrainConfig(clip_grad_norm=1.0, gradient_accumulation_steps=2, momentum=0.0,
                     lr_values=[0.1, 0.01], lr_boundaries=[1, 10])
    v = keras.Variable(np.zeros(4, np.float32))
    opt = build_optimizer(tp, None, make_lr_schedule('piecewise', tp.lr_values, tp.lr_boundaries))
    opt.build([v])
    after = []
    for g in ([6., 8., 0., 0.], [0., 0., 0., 0.]) * 2:
        opt.apply_gradients([(tf.constant(g), v)])
        after.append(v.numpy().copy())
    np.testing.assert_allclose(after[0], 0)  # the first batch only accumulates
    np.testing.assert_allclose(after[1], [-0.06, -0.08, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(after[3], [-0.066, -0.088, 0, 0], rtol=1e-5)
    assert int(opt.iterations) == 2
