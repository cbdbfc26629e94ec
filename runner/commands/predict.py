"""`python -m runner predict RUN_DIR IMAGE [IMAGE ...]`: the most likely classes of image files.

Each file is read as the training data is (decoded to RGB: grey repeated, alpha dropped;
resized to the model's input size with antialiasing), normalised with the run's mean and
std, and classified without augmentation. A file that is not an image, or is cut short,
gets one error line and the others are still classified; the exit status is then 1.
"""
import argparse
import json
import sys

import numpy as np

from runner.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, add_run_options, first_line
from runner.commands.inference import WEIGHTS, RunError


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m runner predict',
        description='The top classes, with probabilities, of image files (JPEG, PNG, BMP, GIF; any '
                    'size; grey, RGB or RGBA) by a trained run, preprocessed as in evaluation.')
    p.add_argument('run_dir', metavar='RUN_DIR', help='run directory (<logdir>/<run_name>)')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    p.add_argument('--top', type=int, default=5, metavar='K', help='how many classes to show (default 5)')
    add_run_options(p, WEIGHTS)
    p.add_argument('--json', action='store_true',
                   help='print one JSON object per image (file, top classes, all probabilities) '
                        'instead of the table')
    return p


def read_images(paths, image_size, style='cifar'):
    """[(path, uint8 image or None, error or None)] in the order given."""
    import tensorflow as tf
    from runner.commands.inference import prepare_image
    out = []
    for path in paths:
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError as e:
            out.append((path, None, f'cannot read: {e.strerror}'))
            continue
        try:
            out.append((path, prepare_image(data, image_size, style), None))
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError) as e:
            msg = first_line(e)
            out.append((path, None, f'not an image, or a damaged one ({msg})'))
    return out


def predict_files(run, paths, batch_size=64):
    """[(path, probabilities float32 [C] or None, error or None)] for image files."""
    from runner.commands.inference import predict_probabilities
    items = read_images(paths, run.image_size, run.info.preprocessing)
    ok = [i for i, (_, img, _) in enumerate(items) if img is not None]
    probs = {}
    if ok:
        images = np.stack([items[i][1] for i in ok])
        for i, p in zip(ok, predict_probabilities(run, images, 'none', batch_size)):
            probs[i] = p
    return [(path, probs.get(i), err) for i, (path, _, err) in enumerate(items)]


def top_classes(probabilities, class_names, k):
    order = np.argsort(-np.asarray(probabilities), kind='stable')[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top < 1:
        print('error: --top: must be at least 1', file=sys.stderr)
        return EXIT_CONFIG
    from runner.commands import inference
    from runner.training.distribute import quiet_tensorflow
    quiet_tensorflow()
    try:
        run = inference.load_run(args.run_dir, args.weights, args.data_dir)
    except RunError as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG
    names = run.class_names
    k = min(args.top, len(names))
    failed = 0
    if not args.json:
        h, w = run.image_size
        print(f'{run.name} ({run.model_name}, {run.weights} weights; images resized to {h}x{w})')
    width = max(len(n) for n in names)
    for path, probs, err in predict_files(run, args.images):
        if err:
            failed += 1
            print(f'error: {path}: {err}', file=sys.stderr, flush=True)
            continue
        top = top_classes(probs, names, k)
        if args.json:
            print(json.dumps({'file': path, 'top': [{'class': n, 'probability': p} for n, p in top],
                              'probabilities': {n: float(p) for n, p in zip(names, probs)}}),
                  flush=True)
        else:
            print(f'\n{path}')
            for rank, (name, p) in enumerate(top, 1):
                print(f'  {rank}. {name.ljust(width)}  {100 * p:6.2f}%')
            sys.stdout.flush()
    if failed:
        print(f'{failed} of {len(args.images)} file(s) could not be read', file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
