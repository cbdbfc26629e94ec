"""The after-training commands (evaluate, predict, export, report) on tiny runs trained here.

Two runs of tiny_cnn on the coloured-squares image folder, `repeats: 2` of one
experiment (runs `grp/seed0` and `grp/seed1`, which the report groups), are trained once
for the module.
"""
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import (CIFAR_JPEG, flip_translate_probabilities, flip_translate_views, one_line_error,
                      subprocess_env)

RUNS = """
module: tiny_models
model: tiny_cnn
dataset: {{image_folder: {images}}}
repeats: 2                     # runs grp/seed0 and grp/seed1
train_parameters:
  logdir: {logdir}
  run_name: grp
  batch_size: 16
  log_interval: 5
  val_interval: 10
  lr_values: [0.05, 0.005]
  lr_boundaries: [15, 20]
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory, image_folder):
    """Two finished runs: {'logdir', 'runs': [run dir, run dir], 'images'}."""
    from runner import cli
    root = tmp_path_factory.mktemp('after')
    logdir = root / 'logs'
    path = root / 'runs.yaml'
    path.write_text(RUNS.format(images=image_folder, logdir=logdir))
    assert cli.main([str(path), '--no-smoke']) == 0
    runs = [str(logdir / 'grp' / f'seed{s}') for s in (0, 1)]
    for r in runs:
        assert json.load(open(os.path.join(r, 'summary.json')))['status'] == 'finished'
    return {'logdir': str(logdir), 'runs': runs, 'images': image_folder}


def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def manual_probabilities(run, images, views):
    """Mean softmax of the model over `views(normalised images)` (for flip_translate,
    airbench's weighted logits), computed without TF's TTA code."""
    x = (images.astype(np.float32) / 255.0 - np.float32(run.mean)) / np.float32(run.std)
    logits = [run.model(v, training=False).numpy() for v in views(x)]
    if views is flip_translate_views:
        return flip_translate_probabilities(logits)
    return np.mean([softmax(l) for l in logits], axis=0)


def ten_crops(x, p=4):
    """Corners and centre of the image padded by p (zeros = the mean colour), and their mirrors."""
    h, w = x.shape[1:3]
    padded = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy, dx in
             ((0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p), (p, p))]
    return crops + [c[:, :, ::-1] for c in crops]


def read_png(path):
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    assert img[..., :3].std() > 0.01, f'{path} is a blank picture'
    return img


# ---------------------------------------------------------------------------
# evaluate

def test_tta_views_are_the_image_its_mirror_and_crops_of_the_padded_image():
    import tensorflow as tf
    from runner.training.tta import tta_views
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    (none,) = tta_views(tf.constant(x), 'none')
    np.testing.assert_array_equal(none, x)
    flip = tta_views(tf.constant(x), 'flip')
    assert len(flip) == 2
    np.testing.assert_array_equal(flip[1], x[:, :, ::-1])
    crops = [v.numpy() for v in tta_views(tf.constant(x), '10crop', crop_padding=4)]
    assert len(crops) == 10 and all(c.shape == x.shape for c in crops)
    top_left, top_right, bottom_left, bottom_right, centre = crops[:5]
    np.testing.assert_array_equal(centre, x)                      # the centre crop is the image
    np.testing.assert_array_equal(top_left[:, 4:, 4:], x[:, :28, :28])
    assert not top_left[:, :4].any() and not top_left[:, :, :4].any()  # padding: the mean colour
    np.testing.assert_array_equal(top_right[:, 4:, :28], x[:, :28, 4:])
    np.testing.assert_array_equal(bottom_left[:, :28, 4:], x[:, 4:, :28])
    np.testing.assert_array_equal(bottom_right[:, :28, :28], x[:, 4:, 4:])
    assert not bottom_right[:, 28:].any() and not bottom_right[:, :, 28:].any()
    for plain, mirrored in zip(crops[:5], crops[5:]):
        np.testing.assert_array_equal(mirrored, plain[:, :, ::-1])
    np.testing.assert_allclose(np.stack(crops), np.stack(ten_crops(x)))
    # a run trained with reflect padding is evaluated on reflect-padded crops
    reflected = [v.numpy() for v in tta_views(tf.constant(x), '10crop', 4, 'reflect')]
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)], mode='reflect')
    for crop, (dy, dx) in zip(reflected, ((0, 0), (0, 8), (8, 0), (8, 8), (4, 4))):
        np.testing.assert_array_equal(crop, padded[:, dy:dy + 32, dx:dx + 32])


@pytest.mark.parametrize('tta', ['none', 'flip', 'flip_translate', '10crop'])
def test_evaluate_each_tta_equals_the_manual_average(trained, tta, capsys):
    from runner.commands import evaluate, inference
    run_dir = trained['runs'][0]
    assert evaluate.main([run_dir, '--tta', tta]) == 0
    out = capsys.readouterr().out
    row = [l for l in out.splitlines() if l.startswith('| grp/seed0')][0]
    assert [c.strip() for c in row.split('|')[1:5]] == ['grp/seed0', 'tiny_cnn', 'test', tta]
    result = json.load(open(os.path.join(run_dir, f'eval-test-{tta}-best.json')))
    assert result['tta'] == tta and result['examples'] == 40 and result['split'] == 'test'
    assert result['class_names'] == ['class0', 'class1', 'class2', 'class3']
    m = np.array(result['confusion_matrix'])
    assert m.shape == (4, 4) and m.sum() == 40 and (m.sum(axis=1) == 10).all()
    assert result['top1_error'] == pytest.approx(1 - np.trace(m) / 40)
    for i, name in enumerate(result['class_names']):
        assert result['per_class_accuracy'][name] == pytest.approx(m[i, i] / 10)
    assert result['top5_k'] == 4 and result['top5_error'] == 0.0  # four classes: always in the top 4
    png = read_png(os.path.join(run_dir, f'eval-test-{tta}-best-confusion.png'))
    assert png.shape[0] >= 600 and png.shape[1] >= 600

    # The probabilities are the mean softmax over the views, computed independently here.
    run = inference.load_run(run_dir, 'best')
    data = evaluate.read_eval_split(run, 'test')
    (r,) = evaluate.evaluate_runs([run_dir], tta=tta, write=False)
    views = {'none': lambda x: [x], 'flip': lambda x: [x, x[:, :, ::-1]],
             'flip_translate': flip_translate_views, '10crop': ten_crops}[tta]
    np.testing.assert_allclose(r['probabilities'], manual_probabilities(run, data.images, views), atol=1e-5)
    np.testing.assert_array_equal(r['labels'], data.labels)
    assert r['top1_error'] == pytest.approx(result['top1_error'])
    if tta == 'none':
        # Without TTA, evaluate reproduces the training run's own numbers for the best weights.
        summary = json.load(open(os.path.join(run_dir, 'summary.json')))
        assert r['top1_error'] == pytest.approx(1 - summary['best_test_top1_accuracy'], abs=1e-6)
        step = r['weights_step']
        logged = [json.loads(l) for l in open(os.path.join(run_dir, 'metrics.jsonl'))]
        (at_best,) = [l for l in logged if l['kind'] == 'test' and l['step'] == step]
        assert r['loss'] == pytest.approx(at_best['loss'], abs=1e-4)


def test_evaluate_last_weights_and_a_limit(trained, capsys):
    from runner.commands import evaluate
    run_dir = trained['runs'][1]
    assert evaluate.main([run_dir, '--weights', 'last']) == 0
    capsys.readouterr()
    result = json.load(open(os.path.join(run_dir, 'eval-test-none-last.json')))
    summary = json.load(open(os.path.join(run_dir, 'summary.json')))
    assert result['weights_loaded'].startswith('last (final.weights.h5')
    assert result['top1_error'] == pytest.approx(1 - summary['test_top1_accuracy'], abs=1e-6)
    assert evaluate.main([run_dir, '--limit', '7', '--weights', 'last', '--tta', 'flip']) == 0
    assert '| 7 ' in capsys.readouterr().out


def test_ensemble_probabilities_are_the_mean_of_the_runs(trained, tmp_path, capsys):
    from runner.commands import evaluate
    runs = trained['runs']
    results = evaluate.evaluate_runs(runs, tta='flip', write=False)
    assert len(results) == 3
    a, b, ens = results
    np.testing.assert_allclose(ens['probabilities'], (a['probabilities'] + b['probabilities']) / 2, atol=1e-7)
    assert ens['top1_error'] == pytest.approx(np.mean(ens['probabilities'].argmax(1) != ens['labels']))
    # the command line: each run, then the ensemble as the "Average" row, JSON in the first run dir
    out_file = tmp_path / 'ens' / 'average.json'
    assert evaluate.main(runs + ['--out', str(out_file)]) == 0
    out = capsys.readouterr().out
    table = [l for l in out.splitlines() if l.startswith('| ')]
    assert [l.split('|')[1].strip() for l in table[2:]] == ['grp/seed0', 'grp/seed1', 'Average']
    saved = json.load(open(out_file))
    assert [m['run_name'] for m in saved['members']] == ['grp/seed0', 'grp/seed1']
    assert saved['model'] == 'ensemble of 2' and saved['examples'] == 40
    read_png(str(tmp_path / 'ens' / 'average-confusion.png'))
    assert evaluate.main(runs) == 0
    capsys.readouterr()
    assert os.path.exists(os.path.join(runs[0], 'eval-ensemble-test-none-best.json'))


def test_missing_weights_and_bad_directories_are_one_line_errors(trained, tmp_path, capsys):
    from runner.commands import evaluate
    run = tmp_path / 'copy'
    shutil.copytree(trained['runs'][0], run)
    shutil.rmtree(run / 'best')
    one_line_error(capsys, evaluate.main([str(run)]), 2, 'no best/ checkpoint', '--weights last')
    os.remove(run / 'final.weights.h5')   # an unfinished run: the latest checkpoint serves as "last"
    assert evaluate.main([str(run), '--weights', 'last']) == 0
    assert 'checkpoint at step 20' in capsys.readouterr().out
    shutil.rmtree(run / 'checkpoints')
    one_line_error(capsys, evaluate.main([str(run), '--weights', 'last']), 2, 'no final.weights.h5')
    one_line_error(capsys, evaluate.main([str(tmp_path)]), 2, 'not a run directory')
    one_line_error(capsys, evaluate.main([str(tmp_path / 'nowhere')]), 2, 'no such directory')
    shutil.copytree(trained['runs'][0], tmp_path / 'moved')
    one_line_error(capsys, evaluate.main([str(tmp_path / 'moved'), '--data-dir', str(tmp_path / 'gone')]),
                   2, "is not a directory", '--data-dir')


def test_evaluate_a_split_saving_the_probabilities_in_a_process_of_its_own(trained, capsys):
    """`python -m runner evaluate RUN --split train --save-probabilities` as a user types it:
    the table names the split and its 160 images and says where the files went; the .npz holds
    every training image's probabilities and label (40 of each class: the train split, not
    the test split's 10), and the error and loss of those probabilities are the JSON's and
    the table's. A split the run does not have is one line."""
    from conftest import ROOT, subprocess_env
    from runner.commands import evaluate
    run_dir = trained['runs'][0]
    p = subprocess.run([sys.executable, '-m', 'runner', 'evaluate', run_dir, '--split', 'train',
                        '--save-probabilities'], cwd=ROOT, env=subprocess_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    stem = os.path.join(run_dir, 'eval-train-none-best')
    with open(stem + '.json') as f:
        result = json.load(f)
    saved = np.load(stem + '-probabilities.npz')
    probabilities, labels = saved['probabilities'], saved['labels']
    assert probabilities.shape == (160, 4) and np.bincount(labels).tolist() == [40] * 4
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    assert list(saved['class_names']) == result['class_names']
    assert (result['split'], result['examples']) == ('train', 160)
    assert np.mean(probabilities.argmax(axis=-1) != labels) == pytest.approx(result['top1_error'])
    assert -np.mean(np.log(probabilities[np.arange(160), labels])) == pytest.approx(result['loss'], rel=1e-4)
    row = next(line for line in p.stdout.splitlines() if '| train ' in line)
    assert '| 160 ' in row and f"| {100 * result['top1_error']:.2f}% " in row, p.stdout
    assert (f"wrote {stem}.json, eval-train-none-best-confusion.png and "
            f"eval-train-none-best-probabilities.npz") in p.stdout, p.stdout
    one_line_error(capsys, evaluate.main([run_dir, '--split', 'validation']), 2,
                   'has no validation split', 'validation_fraction')


def test_evaluate_batch_size_below_one_is_a_one_line_error(trained, capsys):
    """--batch-size -4 ended in a traceback and 0 silently meant the default."""
    from runner.commands import evaluate
    run_dir = trained['runs'][0]
    for bad in ('-4', '0'):
        line = one_line_error(capsys, evaluate.main([run_dir, '--batch-size', bad]), 2)
        assert line == 'error: --batch-size: must be at least 1'
    assert evaluate.main([run_dir, '--batch-size', '3', '--limit', '7']) == 0
    assert '| 7 ' in capsys.readouterr().out


# ---------------------------------------------------------------------------
# predict

def write_images(d, image_folder):
    import tensorflow as tf
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 80, size=(45, 61, 3)).astype(np.uint8)
    rgb[..., 1] += 120                                          # a greenish class1-like picture
    files = {}

    def put(name, data):
        files[name] = str(d / name)
        (d / name).write_bytes(data)
    put('photo.jpg', tf.io.encode_jpeg(rgb, quality=90).numpy())
    put('grey.png', tf.io.encode_png(rgb[..., 1:2]).numpy())
    put('rgb.png', tf.io.encode_png(rgb).numpy())
    put('rgba.png', tf.io.encode_png(np.concatenate([rgb, np.full((45, 61, 1), 90, np.uint8)], -1)).numpy())
    put('broken.jpg', b'this is a text file, not a JPEG\n')
    whole = tf.io.encode_png(rgb).numpy()
    put('truncated.png', whole[:len(whole) // 2])
    files['dataset'] = sorted(glob.glob(os.path.join(image_folder, 'test', 'class2', '*.png')))[0]
    return files


@pytest.mark.needs('cifar10-jpeg')  # three CIFAR-10 photographs among the files
def test_predict_images_of_any_kind_with_one_line_per_broken_file(trained, tmp_path, capsys):
    import tensorflow as tf
    from runner.commands import evaluate, inference, predict
    run_dir = trained['runs'][0]
    f = write_images(tmp_path, trained['images'])
    cifar = sorted(glob.glob(os.path.join(CIFAR_JPEG, 'test', '*', '000[0-1].jpg')))[:3]
    good = [f['photo.jpg'], f['grey.png'], f['rgba.png'], f['dataset']] + cifar
    args = [run_dir, good[0], f['broken.jpg'], *good[1:3], f['truncated.png'], *good[3:]]
    assert predict.main(args) == 1
    out, err = capsys.readouterr()
    errors = err.strip().splitlines()
    assert errors[0].startswith(f"error: {f['broken.jpg']}: not an image")
    assert errors[1].startswith(f"error: {f['truncated.png']}: not an image")
    assert errors[-1] == f'2 of {len(args) - 1} file(s) could not be read'
    assert len([e for e in errors if e.startswith('error:')]) == 2 and 'Traceback' not in err
    for path in good:
        block = out.split(f'\n{path}\n')[1].splitlines()[:4]
        assert [l.split('.')[0].strip() for l in block] == ['1', '2', '3', '4']  # 4 classes < --top 5
        probs = [float(l.rsplit(None, 1)[1].rstrip('%')) for l in block]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(100, abs=0.05)

    run = inference.load_run(run_dir, 'best')
    results = {p: probs for p, probs, err in predict.predict_files(run, good + [f['rgb.png']])}
    # A file of the data set gives exactly the probabilities evaluate gives that image.
    data = evaluate.read_eval_split(run, 'test')
    img = tf.io.decode_png(open(f['dataset'], 'rb').read(), channels=3).numpy()
    (index,) = [i for i in range(len(data.images)) if np.array_equal(data.images[i], img)]
    (r,) = evaluate.evaluate_runs([run_dir], write=False)
    np.testing.assert_allclose(results[f['dataset']], r['probabilities'][index], atol=1e-6)
    # Alpha is dropped, grey is repeated into RGB, other sizes are resized as the data pipeline does.
    np.testing.assert_allclose(results[f['rgba.png']], results[f['rgb.png']], atol=1e-7)
    rgb = tf.io.decode_png(open(f['rgb.png'], 'rb').read()).numpy()
    grey = np.repeat(rgb[..., 1:2], 3, axis=-1)
    resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(grey, (32, 32), antialias=True)), 0, 255), tf.uint8)
    expect = manual_probabilities(run, resized.numpy()[None], lambda x: [x])[0]
    np.testing.assert_allclose(results[f['grey.png']], expect, atol=1e-5)
    # --json: every class's probability, machine-readable
    assert predict.main([run_dir, f['photo.jpg'], '--json', '--top', '2']) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert len(line['top']) == 2 and set(line['probabilities']) == {'class0', 'class1', 'class2', 'class3'}
    assert line['top'][0]['probability'] == pytest.approx(max(line['probabilities'].values()))


# ---------------------------------------------------------------------------
# export

LOAD_EXPORT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    serve = model.signatures['serving_default']
    out = serve(images=tf.constant(np.load(sys.argv[2])))
    np.save(sys.argv[3], out['probabilities'].numpy())
    spec = serve.structured_input_signature[1]['images']
    names = [n.decode() for n in model.signatures['class_names']()['class_names'].numpy()]
    print(json.dumps({'shape': spec.shape.as_list(), 'dtype': spec.dtype.name, 'names': names,
                      'top': [n.decode() for n in out['top_class_name'].numpy()],
                      'modules': sorted(m for m in sys.modules if m.startswith(('runner', 'tiny_models')))}))
""")


def test_export_in_a_fresh_process_gives_predicts_probabilities(trained, tmp_path, capsys):
    from runner.commands import export, inference, predict
    run_dir = trained['runs'][0]
    out_dir = tmp_path / 'exported'
    assert export.main([run_dir, str(out_dir)]) == 0
    assert 'serving_default' in capsys.readouterr().out
    assert (out_dir / 'saved_model.pb').exists()
    assert (out_dir / 'assets' / 'labels.txt').read_text().split() == ['class0', 'class1', 'class2', 'class3']
    meta = json.load(open(out_dir / 'export.json'))
    assert meta['input']['shape'] == [None, 32, 32, 3] and meta['weights'].startswith('best')
    # predict's view of some files ...
    f = write_images(tmp_path, trained['images'])
    paths = [f['photo.jpg'], f['grey.png'], f['rgba.png'], f['dataset']]
    run = inference.load_run(run_dir, 'best')
    expected = np.stack([p for _, p, _ in predict.predict_files(run, paths)])
    images = np.stack([inference.prepare_image(open(p, 'rb').read(), (32, 32)) for p in paths])
    np.save(tmp_path / 'images.npy', images)
    # ... equals the SavedModel's, loaded by plain TensorFlow in another process
    script = tmp_path / 'load.py'
    script.write_text(LOAD_EXPORT)
    proc = subprocess.run([sys.executable, str(script), str(out_dir), str(tmp_path / 'images.npy'),
                           str(tmp_path / 'probs.npy')], capture_output=True, text=True,
                          env=subprocess_env(), cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info['shape'] == [None, 32, 32, 3] and info['dtype'] == 'uint8'
    assert info['names'] == ['class0', 'class1', 'class2', 'class3']
    assert info['modules'] == [], 'the SavedModel needs neither the runner nor the model code'
    got = np.load(tmp_path / 'probs.npy')
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert info['top'] == [run.class_names[i] for i in expected.argmax(1)]
    # an OUT_DIR with something in it is refused unless --force
    one_line_error(capsys, export.main([run_dir, str(out_dir)]), 2, 'not empty', '--force')
    assert export.main([run_dir, str(out_dir), '--force', '--weights', 'last']) == 0
    assert json.load(open(out_dir / 'export.json'))['weights'].startswith('last')


def test_export_force_replaces_only_an_earlier_export(trained, tmp_path, capsys):
    """--force once ran rmtree on OUT_DIR whatever it was: the run directory itself, or the
    log directory holding it."""
    from runner.commands import export
    logdir = tmp_path / 'logs'
    shutil.copytree(trained['logdir'], logdir)
    run_dir = logdir / 'grp' / 'seed0'
    for out in (run_dir, logdir / 'grp', logdir, tmp_path):
        one_line_error(capsys, export.main([str(run_dir), str(out), '--force']), 2,
                       'run directory', str(out))
        assert (run_dir / 'config.yaml').exists() and (run_dir / 'best').is_dir()
    # a directory of other runs, or of anything that is not an export, is not replaced either
    one_line_error(capsys, export.main([str(run_dir), str(logdir / 'grp' / 'seed1'), '--force']), 2,
                   'not an earlier export')
    assert (logdir / 'grp' / 'seed1' / 'summary.json').exists()
    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'todo.txt').write_text('keep me\n')
    one_line_error(capsys, export.main([str(run_dir), str(notes), '--force']), 2, 'not an earlier export')
    (notes / 'export.json').write_text('{}')          # an export that has runs in it is no export
    shutil.copytree(run_dir, notes / 'run')
    one_line_error(capsys, export.main([str(run_dir), str(notes), '--force']), 2, 'not an earlier export')
    assert (notes / 'todo.txt').read_text() == 'keep me\n'
    a_file = tmp_path / 'model.txt'
    a_file.write_text('x')
    one_line_error(capsys, export.main([str(run_dir), str(a_file), '--force']), 2, 'not an earlier export')
    assert a_file.read_text() == 'x'


TFDS_RUN = """
module: tiny_models
model: tiny_cnn
dataset: {{name: cifar10, data_dir: {data_dir}, train_split: 'train[:64]', test_split: 'test[:32]'}}
train_parameters:
  logdir: {logdir}
  run_name: tf
  batch_size: 16
  eval_batch_size: 32
  log_interval: 2
  val_interval: 4
  lr_values: [0.05]
  lr_boundaries: [4]
"""
CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


@pytest.mark.needs('cifar10-tfds')
def test_class_names_of_unprepared_tfds_data_come_from_the_cache(cifar10_tfds_dir, tmp_path, capsys):
    """With the data not prepared here (--data-dir elsewhere), TFDS still describes cifar10,
    but with the names "0".."9": they were exported as labels and replaced the good cache."""
    from runner import cli
    from runner.commands import export, inference
    path = tmp_path / 'tf.yaml'
    path.write_text(TFDS_RUN.format(data_dir=cifar10_tfds_dir, logdir=tmp_path / 'logs'))
    assert cli.main([str(path), '--no-smoke']) == 0
    capsys.readouterr()
    run_dir = tmp_path / 'logs' / 'tf'
    assert inference.load_run(str(run_dir), build=False).class_names == CIFAR10_NAMES  # caches them
    copy = tmp_path / 'tfcopy'
    shutil.copytree(run_dir, copy)
    nowhere = str(tmp_path / 'nonexistent')
    assert export.main([str(copy), str(tmp_path / 'exported'), '--data-dir', nowhere]) == 0
    capsys.readouterr()
    assert (tmp_path / 'exported' / 'assets' / 'labels.txt').read_text().split() == CIFAR10_NAMES
    cache = json.load(open(copy / 'data_info.json'))
    assert cache['class_names'] == CIFAR10_NAMES, 'the default names replaced the cached ones'
    # data_info.json as training writes it beside config.yaml (inference.write_data_info) is read
    os.remove(copy / 'data_info.json')
    run = inference.load_run(str(run_dir), build=False)
    inference.write_data_info(str(copy), run.info)
    assert inference.load_run(str(copy), data_dir=nowhere, build=False).class_names == CIFAR10_NAMES
    # a cache of default names is replaced by the real ones once the data is here
    stand_in = dataclasses.replace(run.info, class_names=[str(i) for i in range(10)])
    os.remove(copy / 'data_info.json')
    inference.write_data_info(str(copy), stand_in)
    assert inference.load_run(str(copy), build=False).class_names == CIFAR10_NAMES
    assert json.load(open(copy / 'data_info.json'))['class_names'] == CIFAR10_NAMES
    inference.write_data_info(str(copy), stand_in)           # and never back
    assert json.load(open(copy / 'data_info.json'))['class_names'] == CIFAR10_NAMES


# ---------------------------------------------------------------------------
# report

def add_fake_run(logdir):
    """A long run chosen on validation, with a paper number, as a CIFAR run would leave it."""
    d = os.path.join(logdir, 'resnet20')
    os.makedirs(d)
    lines = []
    for s in range(400, 64001, 400):
        lr = 0.01 if s <= 400 else 0.1 if s <= 32000 else 0.01 if s <= 48000 else 0.001
        e = 0.85 * np.exp(-s / 4000) + 0.04 + (0.04 if s <= 32000 else 0.01)
        lines.append({'step': s, 'kind': 'train', 'loss': 2 * e, 'error': e - 0.03, 'reg_loss': 0.1,
                      'lr': lr, 'images_per_second': 2000.0})
        if s % 4000 == 0:
            lines.append({'step': s, 'kind': 'val', 'loss': 2 * e, 'top1_error': e + 0.02, 'top5_error': e / 5})
    with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(l) + '\n' for l in lines))
    paper = {'top1_error': 8.75, 'source': 'He et al. 2015, Table 6'}
    json.dump({'run_name': 'resnet20', 'model': 'cifar_resnet20', 'params': 272474, 'steps': 64000,
               'total_steps': 64000, 'status': 'finished', 'eval_split': 'validation',
               'selection_split': 'validation', 'paper': paper, 'test_top1_accuracy': 0.9142,
               'best_test_top1_accuracy': 0.9155, 'train_images_per_second': 2010.4,
               'wall_seconds': 15432.1}, open(os.path.join(d, 'summary.json'), 'w'))
    import yaml
    yaml.safe_dump({'model': 'cifar_resnet20', 'paper': paper, 'train_parameters': {
        'lr_values': [0.01, 0.1, 0.01, 0.001], 'lr_boundaries': [400, 32000, 48000, 64000]}},
        open(os.path.join(d, 'config.yaml'), 'w'))
    # a run moved aside by --restart is left out
    shutil.copytree(d, d + '.restarted-20250101-000000')


def test_report_table_groups_repeats_and_draws_readable_pictures(trained, tmp_path, capsys):
    from runner.commands import report
    logdir = tmp_path / 'logs'
    shutil.copytree(trained['logdir'], logdir)
    add_fake_run(str(logdir))
    assert report.main([str(logdir)]) == 0
    printed = capsys.readouterr().out
    assert 'grp (mean ± std of 2)' in printed
    md = (logdir / 'report.md').read_text()
    rows = {l.split('|')[1].strip(): [c.strip() for c in l.split('|')[2:-1]]
            for l in md.splitlines() if l.startswith('| ') and not l.startswith(('| run ', '| --- '))}
    assert list(rows) == ['grp/seed0', 'grp/seed1', '**grp** (mean ± std of 2)', 'resnet20']
    s = [json.load(open(os.path.join(r, 'summary.json'))) for r in trained['runs']]
    errs = [100 * (1 - x['test_top1_accuracy']) for x in s]
    assert rows['grp/seed0'][3] == f'{errs[0]:.2f}%' and rows['grp/seed0'][8] == 'finished'
    assert rows['grp/seed0'][2] == '20 / 20' and rows['grp/seed0'][4].endswith('(test)')
    assert rows['**grp** (mean ± std of 2)'][3] == f'{np.mean(errs):.2f} ± {np.std(errs, ddof=1):.2f}%'
    assert rows['**grp** (mean ± std of 2)'][8] == '2 finished'
    assert rows['resnet20'][:] == ['cifar_resnet20', '272.5K', '64,000 / 64,000', '8.58%', '8.45% (val)',
                                   '8.75%', '2,010', '4h 17m', 'finished']
    assert 'moved aside by `--restart`' in md
    pictures = sorted(os.listdir(logdir / 'report'))
    assert pictures == ['all-runs.png', 'curve-grp__seed0.png', 'curve-grp__seed1.png', 'curve-resnet20.png']
    for name in pictures:
        assert f'](report/{name})' in md
    assert read_png(str(logdir / 'report' / 'curve-resnet20.png')).shape[:2] == (605, 990)
    assert read_png(str(logdir / 'report' / 'curve-grp__seed0.png')).shape[:2] == (605, 990)
    assert read_png(str(logdir / 'report' / 'all-runs.png')).shape[:2] == (660, 1210)
    # --out: the pictures go beside the report file
    assert report.main([str(logdir), '--out', str(tmp_path / 'out' / 'weekly.md')]) == 0
    assert sorted(os.listdir(tmp_path / 'out' / 'weekly')) == pictures
    assert '](weekly/all-runs.png)' in (tmp_path / 'out' / 'weekly.md').read_text()
    capsys.readouterr()
    one_line_error(capsys, report.main([str(tmp_path / 'empty-nothing')]), 2, 'no such directory')


def test_the_commands_are_listed_and_have_help(capsys):
    from runner.__main__ import main
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    for name in ('evaluate', 'predict', 'export', 'report'):
        assert f'  {name} ' in out
        with pytest.raises(SystemExit) as e:
            main([name, '--help'])
        assert e.value.code == 0
        assert f'python -m runner {name}' in capsys.readouterr().out


def report_rows(md):
    return {l.split('|')[1].strip(): [c.strip() for c in l.split('|')[2:-1]]
            for l in md.splitlines() if l.startswith('| ') and not l.startswith(('| run ', '| --- '))}


def set_summary(run_dir, **changes):
    path = os.path.join(run_dir, 'summary.json')
    s = json.load(open(path))
    s.update(changes)
    json.dump(s, open(path, 'w'))
    return s


def test_report_names_runs_by_their_path_so_two_log_trees_stay_apart(trained, tmp_path, capsys):
    """Two copies of a log tree under one LOGDIR gave every name twice, one group of four
    and pictures overwriting each other."""
    from runner.commands import report
    top = tmp_path / 'top'
    shutil.copytree(trained['logdir'], top / 'logs')
    shutil.copytree(trained['logdir'], top / 'archive')
    assert report.main([str(top)]) == 0
    capsys.readouterr()
    rows = report_rows((top / 'report.md').read_text())
    assert list(rows) == ['archive/grp/seed0', 'archive/grp/seed1', '**archive/grp** (mean ± std of 2)',
                          'logs/grp/seed0', 'logs/grp/seed1', '**logs/grp** (mean ± std of 2)']
    assert sorted(os.listdir(top / 'report')) == [
        'all-runs.png', 'curve-archive__grp__seed0.png', 'curve-archive__grp__seed1.png',
        'curve-logs__grp__seed0.png', 'curve-logs__grp__seed1.png']
    # in the default layout the names are the run names, as before
    assert report.main([str(top / 'logs')]) == 0
    capsys.readouterr()
    assert list(report_rows((top / 'logs' / 'report.md').read_text()))[:2] == ['grp/seed0', 'grp/seed1']
    # a repeat group's own directory as LOGDIR: still a group, named after the directory
    assert report.main([str(top / 'logs' / 'grp')]) == 0
    capsys.readouterr()
    assert list(report_rows((top / 'logs' / 'grp' / 'report.md').read_text())) == [
        'grp/seed0', 'grp/seed1', '**grp** (mean ± std of 2)']


def test_report_mean_of_repeats_is_over_the_finished_ones(trained, tmp_path, capsys):
    """The mean ± std row averaged running, diverged and failed seeds with the finished."""
    from runner.commands import report
    logdir = tmp_path / 'logs'
    shutil.copytree(trained['logdir'], logdir)
    grp = logdir / 'grp'
    shutil.copytree(grp / 'seed1', grp / 'seed2')
    finished = json.load(open(grp / 'seed0' / 'summary.json'))
    set_summary(grp / 'seed1', status='running', test_top1_accuracy=0.05, best_test_top1_accuracy=0.05)
    set_summary(grp / 'seed2', status='diverged', test_top1_accuracy=0.0, error='loss is NaN')
    # a group with no finished run has no mean
    shutil.copytree(grp, logdir / 'other')
    set_summary(logdir / 'other' / 'seed0', status='failed', error='out of memory')
    assert report.main([str(logdir)]) == 0
    capsys.readouterr()
    rows = report_rows((logdir / 'report.md').read_text())
    row = rows['**grp** (mean ± std, n=1 finished of 3)']
    assert row[3] == f"{100 * (1 - finished['test_top1_accuracy']):.2f}% (n=1)"
    assert row[4] == f"{100 * (1 - finished['best_test_top1_accuracy']):.2f}% (n=1) (test)"
    assert row[8] == '1 finished, 1 running, 1 diverged'
    row = rows['**other** (mean ± std, n=0 finished of 3)']
    assert row[3] == row[4] == row[6] == row[7] == '—'


def test_report_finds_a_run_named_best(trained, tmp_path, capsys):
    """`best` (like `checkpoints`) is skipped only inside a run directory, where it holds
    weights; a run of that name directly under LOGDIR is a run."""
    from runner.commands import report
    logdir = tmp_path / 'logs'
    shutil.copytree(trained['logdir'], logdir)
    shutil.copytree(logdir / 'grp' / 'seed0', logdir / 'best')
    set_summary(logdir / 'best', run_name='best')
    shutil.copytree(logdir / 'grp' / 'seed0', logdir / 'best' / 'best' / 'nested')  # weights' dir: skipped
    assert report.main([str(logdir)]) == 0
    capsys.readouterr()
    rows = report_rows((logdir / 'report.md').read_text())
    assert list(rows) == ['best', 'grp/seed0', 'grp/seed1', '**grp** (mean ± std of 2)']
