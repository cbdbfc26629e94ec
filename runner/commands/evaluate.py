"""`python -m runner evaluate RUN_DIR [RUN_DIR ...]`: the error of trained runs on a split,
with optional test-time augmentation, and of their ensemble.

For every run: top-1 and top-5 error, cross-entropy loss, per-class accuracy and a
confusion-matrix picture, written beside the run as
`RUN_DIR/eval-<split>-<tta>-<weights>.json` and `...-confusion.png`. With several runs,
their ensemble (the mean of their class probabilities) follows, as an "Average" row, and
is written to the first run directory (`eval-ensemble-...`) or to --out.

Test-time augmentation averages the softmax probabilities of several views of each image
(`flip_translate`: airbench's weighted logits, tta.combine_views):
`flip` the image and its mirror; `10crop` the four corner crops and the centre crop, and
their mirrors, at the model's input size. The crops follow the run's preprocessing style:
cifar style (images resized to the model size) crops the image padded by the training
`crop_padding` as training pads (`crop_padding_mode`: zeros after normalisation, i.e. the
mean colour, or the reflected image), so the
centre crop is the image itself; imagenet style crops the image resized so that its short
side is size / 0.875 (256 for 224), as its evaluation's centre crop does. The loss with
TTA is -log of the averaged probability.
"""
import argparse
import json
import os
import re
import sys

import numpy as np

from runner.training import tta as tta_lib
from runner.common import EXIT_CONFIG, EXIT_OK, add_run_options, first_line, markdown_table
from runner.commands.inference import WEIGHTS, RunError
from runner.config.schema import IMAGE_KEYS
from runner.rundir import RunDir


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m runner evaluate',
        description='Top-1/top-5 error, loss, per-class accuracy and a confusion matrix of trained '
                    'runs, with optional test-time augmentation; with several runs, also their '
                    'ensemble (mean of the class probabilities). Results are written beside each '
                    'run as eval-<split>-<tta>-<weights>.json and -confusion.png.',
        epilog='10crop: the four corner crops and the centre crop, plus their mirrors, at the '
               "model's input size. cifar-style runs: crops of the image padded by the run's "
               'dataset.crop_padding (4 for CIFAR) as training pads it (dataset.crop_padding_mode), '
               'the centre crop being the unpadded image; '
               'imagenet-style runs: crops of the image resized to a short side of size / 0.875 '
               '(256 for 224).')
    p.add_argument('run_dirs', nargs='+', metavar='RUN_DIR', help='run directories (<logdir>/<run_name>)')
    p.add_argument('--split', default='test',
                   help="'test' (the run's dataset.test_split, default), 'validation' (the part of "
                        "train held out by validation_fraction), 'train', or a split name of the "
                        "dataset (e.g. 'test[:1000]' for TFDS)")
    p.add_argument('--tta', choices=tta_lib.MODES, default='none', help='test-time augmentation (default none)')
    add_run_options(p, WEIGHTS, "where the data is now: replaces dataset.data_dir (TFDS) or "
                                "dataset.image_folder of the runs' config.yaml; for list files and "
                                "TFRecords, the deepest folder that held them all (list files, "
                                "list_root, shards), the layout under it kept")
    p.add_argument('--limit', type=int, metavar='N', help='only the first N images of the split (a quick look)')
    p.add_argument('--batch-size', type=int, metavar='N',
                   help="images per batch (default: the run's eval_batch_size)")
    p.add_argument('--out', metavar='FILE',
                   help='where the ensemble JSON goes (default: the first run directory); its '
                        'confusion matrix is written beside it')
    p.add_argument('--save-probabilities', action='store_true',
                   help='also write every image\'s class probabilities and label (.npz beside the JSON)')
    return p


# ---------------------------------------------------------------------------
# The split

def _split_name(exp, split):
    ds = exp.dataset
    if split == 'test':
        return ds.test_split
    if split in ('val', 'validation'):
        if not ds.validation_fraction:
            raise RunError(f"--split {split}: run '{exp.run_name}' has no validation split "
                           f"(dataset.validation_fraction is 0)")
        return 'validation'
    if split == 'train':
        return ds.train_split
    return split


def read_eval_split(run, split, limit=None, tta='none'):
    """The uint8 images and labels of `split` as the run's data pipeline reads them (for
    10crop of an imagenet-style run: resized, not yet cropped)."""
    from runner.data import source as data_source, splits as data_splits
    exp, info = run.exp, run.info
    name = _split_name(exp, split)
    resized = tta == '10crop' and tta_lib.ten_crop_style(run)
    try:
        if name == 'validation' or (split == 'train' and exp.dataset.validation_fraction):
            train = data_splits.read_split(exp.dataset, info, exp.dataset.train_split, resized=resized)
            train, val = data_splits.hold_out(train, exp.dataset.validation_fraction)
            out = val if name == 'validation' else train
            if limit:
                out = type(out)(out.name, out.images[:limit], out.labels[:limit])
            return out
        return data_splits.read_split(exp.dataset, info, name, limit, resized=resized)
    except data_source.DataUnavailable as e:
        raise RunError(f'{run.run_dir}: {e} (use --data-dir to say where the data is now)') from None
    except Exception as e:  # an unknown split name of an image folder, a TFDS error
        raise RunError(f"{run.run_dir}: cannot read split '{name}': {first_line(e)}") from None


def _data_key(run, split, limit, tta):
    """Runs whose data is read the same way share one copy in memory."""
    ds = run.exp.dataset
    return (tuple(json.dumps(getattr(ds, k)) for k in IMAGE_KEYS) + (split, tuple(run.info.image_shape),
            run.info.preprocessing, tta == '10crop' and tta_lib.ten_crop_style(run), limit))


# ---------------------------------------------------------------------------
# Metrics

def metrics(probabilities, labels, class_names):
    """Top-1/top-5 error, loss, per-class accuracy and the confusion matrix (rows: true class)."""
    probs = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    n, c = probs.shape
    k = min(5, c)
    order = np.argsort(-probs, axis=1, kind='stable')
    top1 = order[:, 0]
    in_topk = (order[:, :k] == labels[:, None]).any(axis=1)
    p_true = probs[np.arange(n), labels]
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (labels, top1), 1)
    support = confusion.sum(axis=1)
    per_class = {name: (float(confusion[i, i] / support[i]) if support[i] else None)
                 for i, name in enumerate(class_names)}
    return {
        'examples': int(n),
        'top1_error': float(np.mean(top1 != labels)) if n else None,
        'top5_error': float(1 - np.mean(in_topk)) if n else None,
        'top5_k': k,
        'loss': float(np.mean(-np.log(np.maximum(p_true, 1e-12)))) if n else None,
        'per_class_accuracy': per_class,
        'class_support': {name: int(s) for name, s in zip(class_names, support)},
        'confusion_matrix': confusion.tolist(),
    }


def _safe(text):
    return re.sub(r'[^\w.+=-]+', '_', text).strip('_') or 'split'


def result_stem(split, tta, weights, ensemble=False):
    return f"eval-{'ensemble-' if ensemble else ''}{_safe(split)}-{tta}-{weights}"


# ---------------------------------------------------------------------------
# The confusion-matrix picture

def plot_confusion(confusion, class_names, title, path):
    """Rows are the true classes, columns the predictions; colour is the fraction of the true
    class (so rare classes are as visible as common ones), numbers are image counts."""
    from matplotlib.figure import Figure
    confusion = np.asarray(confusion)
    c = len(class_names)
    support = confusion.sum(axis=1, keepdims=True)
    frac = np.divide(confusion, np.maximum(support, 1))
    side = min(max(6.0, 0.45 * c + 3.0), 18.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout='constrained')
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap='Blues', vmin=0.0, vmax=1.0, interpolation='nearest')
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label('fraction of the true class')
    # Class names on both axes, thinned out for many classes.
    step = max(1, int(np.ceil(c / 50)))
    ticks = np.arange(0, c, step)
    font = 10 if c <= 12 else 8 if c <= 30 else 6
    ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=45 if c > 4 else 0,
                  ha='right' if c > 4 else 'center', rotation_mode='anchor', fontsize=font)
    ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=font)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(title, fontsize=11)
    if c <= 30:  # counts in the cells where they fit
        for i in range(c):
            for j in range(c):
                if confusion[i, j] or i == j:
                    ax.text(j, i, str(confusion[i, j]), ha='center', va='center',
                            fontsize=max(5, font - 1),
                            color='white' if frac[i, j] > 0.55 else 'black')
    ax.set_xticks(np.arange(-0.5, c, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, c, 1), minor=True)
    if c <= 30:
        ax.grid(which='minor', color='lightgrey', linewidth=0.5)
    ax.tick_params(which='minor', length=0)
    fig.savefig(path)
    return path


def _pct(x):
    return '---' if x is None else f'{100 * x:.2f}%'


def _title(what, split, tta, weights, m):
    return (f'{what}\n{split} split, {m["examples"]} images, TTA {tta}, {weights} weights: '
            f'top-1 error {_pct(m["top1_error"])}')


# ---------------------------------------------------------------------------

def evaluate_runs(run_dirs, split='test', tta='none', weights='best', data_dir=None, limit=None,
                  batch_size=None, out=None, save_probabilities=False, write=True, log=print):
    """Evaluate each run, then (with several) their ensemble. Returns a list of result dicts
    (one per run, then the ensemble) holding the metrics, `probabilities` and `labels`."""
    import keras
    from runner.commands import inference
    results, cache = [], {}
    for run_dir in run_dirs:
        run = inference.load_run(run_dir, weights, data_dir)
        key = _data_key(run, split, limit, tta)
        if key not in cache:
            cache[key] = read_eval_split(run, split, limit, tta)
        data = cache[key]
        if len(data.labels) == 0:
            raise RunError(f"{run_dir}: split '{split}' is empty")
        probs = inference.predict_probabilities(run, data.images, tta, batch_size)
        ten_crop = tta_lib.ten_crop_style(run)
        m = metrics(probs, data.labels, run.class_names)
        r = {'run_dir': run.run_dir, 'run_name': run.name, 'model': run.model_name,
             'split': split, 'split_name': data.name if split != 'test' else run.exp.dataset.test_split,
             'tta': tta, 'weights': weights, 'weights_loaded': run.weights,
             'weights_step': run.weights_step, 'class_names': run.class_names,
             'crop_padding': run.exp.dataset.crop_padding if tta == '10crop' and not ten_crop else None,
             'preprocessing': run.info.preprocessing,
             'limit': limit, **m, 'probabilities': probs, 'labels': data.labels}
        if write:
            _write(r, RunDir(run.run_dir).eval_file(result_stem(split, tta, weights)), _title(f'{run.name} ({run.model_name})', split, tta, run.weights, m),
                   save_probabilities)
        results.append(r)
        del run
        keras.backend.clear_session()
    if len(results) > 1:
        results.append(ensemble(results, out, write, save_probabilities))
    return results


def ensemble(results, out=None, write=True, save_probabilities=False):
    """The mean of the members' class probabilities, evaluated like a run."""
    first = results[0]
    for r in results[1:]:
        if r['class_names'] != first['class_names']:
            raise RunError(f"{r['run_dir']}: its classes differ from {first['run_dir']}'s; an "
                           f"ensemble needs the same classes")
        if not np.array_equal(r['labels'], first['labels']):
            raise RunError(f"{r['run_dir']}: its {r['split']} split differs from "
                           f"{first['run_dir']}'s (other images or order); cannot ensemble")
    probs = np.mean([r['probabilities'] for r in results], axis=0).astype(np.float32)
    m = metrics(probs, first['labels'], first['class_names'])
    members = [r['run_name'] for r in results]
    e = {'run_dir': None, 'run_name': 'Average', 'model': f'ensemble of {len(results)}',
         'members': [{'run_dir': r['run_dir'], 'run_name': r['run_name'], 'model': r['model'],
                      'weights_loaded': r['weights_loaded'], 'top1_error': r['top1_error']}
                     for r in results],
         'split': first['split'], 'split_name': first['split_name'], 'tta': first['tta'],
         'weights': first['weights'], 'class_names': first['class_names'], 'limit': first['limit'],
         **m, 'probabilities': probs, 'labels': first['labels']}
    if write:
        if out:
            path = out if out.endswith('.json') else out + '.json'
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        else:
            path = RunDir(first['run_dir']).eval_file(
                result_stem(first['split'], first['tta'], first['weights'], True))
        names = ', '.join(members) if len(', '.join(members)) < 70 else f'{len(members)} runs'
        _write(e, path, _title(f'Average of {names}', first['split'], first['tta'], first['weights'], m),
               save_probabilities)
    return e


def _write(result, path, title, save_probabilities):
    """The result as JSON at `path` (<stem>.json), its confusion matrix as <stem>-confusion.png
    and, when asked, the probabilities as <stem>-probabilities.npz."""
    from runner import rundir
    stem = path.removesuffix('.json')
    result['json'] = path
    result['confusion_png'] = stem + '-confusion.png'
    plot_confusion(result['confusion_matrix'], result['class_names'], title, result['confusion_png'])
    if save_probabilities:
        result['probabilities_npz'] = stem + '-probabilities.npz'
        np.savez_compressed(result['probabilities_npz'], probabilities=result['probabilities'],
                            labels=result['labels'], class_names=np.array(result['class_names']))
    public = {k: v for k, v in result.items() if k not in ('probabilities', 'labels')}
    rundir.write_atomic(result['json'], json.dumps(public, indent=1) + '\n')


def print_results(results, log=print):
    """A Markdown table like the seed's, the ensemble as its "Average" row."""
    r0 = results[0]
    k = r0['top5_k']
    header = ['run', 'model', 'split', 'TTA', 'weights', 'images', 'top-1 err', f'top-{k} err', 'loss']
    rows = [[r['run_name'], r['model'], r['split'], r['tta'],
             r.get('weights_loaded') or r['weights'], str(r['examples']), _pct(r['top1_error']),
             _pct(r['top5_error']), f"{r['loss']:.4f}"] for r in results]
    for line in markdown_table(header, rows, padded=True).splitlines():
        log(line)
    for r in results:
        per = [(name, acc) for name, acc in r['per_class_accuracy'].items() if acc is not None]
        if len(results) > 1 and r['run_dir'] is not None:
            continue  # per-class detail for a single run, or for the ensemble
        shown = per if len(per) <= 20 else sorted(per, key=lambda t: t[1])[:10]
        what = 'per-class accuracy' if len(per) <= 20 else 'the 10 least accurate classes'
        log(f"\n{r['run_name']}: {what}: " + ', '.join(f'{n} {100 * a:.1f}%' for n, a in shown))
    log('')
    for r in results:
        if 'json' in r:
            also = [r['confusion_png']] + ([r['probabilities_npz']] if 'probabilities_npz' in r else [])
            log(f"wrote {r['json']}, " + ' and '.join(os.path.basename(f) for f in also))


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Checked here, not left to the batching: 0 would silently mean the default and a
    # negative size ends in a traceback.
    for option, value in (('--limit', args.limit), ('--batch-size', args.batch_size)):
        if value is not None and value < 1:
            print(f'error: {option}: must be at least 1', file=sys.stderr)
            return EXIT_CONFIG
    from runner.training.distribute import quiet_tensorflow
    quiet_tensorflow()
    try:
        results = evaluate_runs(args.run_dirs, args.split, args.tta, args.weights, args.data_dir,
                                args.limit, args.batch_size, args.out, args.save_probabilities)
    except RunError as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG
    print_results(results)
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
