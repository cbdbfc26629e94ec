"""`python -m runner export RUN_DIR OUT_DIR`: a TensorFlow SavedModel for serving.

The SavedModel holds the preprocessing: its `serving_default` signature takes uint8 RGB
images of the training size, `images: uint8 [None, H, W, 3]`, normalises them with the
run's mean and std, and returns
  probabilities   float32 [None, C]  softmax of the logits
  top_class       int64   [None]     index of the most likely class
  top_class_name  string  [None]     its name
The class names are in OUT_DIR/assets/labels.txt (one a line, in class-index order) and
are returned by the `class_names` signature; OUT_DIR/export.json says which run, weights,
input size, preprocessing and normalisation the export comes from. Resizing is left to the
caller (`python -m runner predict` shows how: decode to RGB, then for `preprocessing: cifar`
resize with antialiasing and round, for `imagenet` resize the short side to size/0.875 and
take the centre crop).

    import tensorflow as tf
    m = tf.saved_model.load('OUT_DIR')
    out = m.signatures['serving_default'](images=tf.constant(uint8_batch))
    out['probabilities']
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

from runner import rundir
from runner.common import EXIT_CONFIG, EXIT_OK, add_run_options
from runner.commands.inference import WEIGHTS, RunError

LABELS = 'labels.txt'


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m runner export',
        description='Write a TensorFlow SavedModel of a trained run with the preprocessing inside: '
                    'uint8 images [None, H, W, 3] of the training size in, class probabilities out '
                    '(signature serving_default); class names in OUT_DIR/assets/labels.txt.')
    p.add_argument('run_dir', metavar='RUN_DIR', help='run directory (<logdir>/<run_name>)')
    p.add_argument('out_dir', metavar='OUT_DIR', help='directory for the SavedModel (must be empty or absent)')
    add_run_options(p, WEIGHTS)
    p.add_argument('--force', action='store_true',
                   help='replace OUT_DIR if it holds an earlier export (one with export.json); '
                        'never a run or anything else')
    return p


def serving_module(run, labels_path):
    """A tf.Module whose `serve` takes uint8 images and returns probabilities and classes."""
    import tensorflow as tf
    from runner.data import transforms as data_transforms
    h, w = run.image_size
    names = run.class_names
    mean, std = list(run.mean), list(run.std)
    model = run.model

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__(name='classifier')
            self.model = model  # tracks the weights
            self.labels_file = tf.saved_model.Asset(labels_path)

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.uint8, name='images')])
        def serve(self, images):
            x = data_transforms.normalize(images, mean, std)
            probs = tf.nn.softmax(tf.cast(self.model(x, training=False), tf.float32), axis=-1)
            top = tf.argmax(probs, axis=-1)
            return {'probabilities': probs, 'top_class': top,
                    'top_class_name': tf.gather(tf.constant(names), top)}

        @tf.function(input_signature=[])
        def class_names(self):
            return {'class_names': tf.constant(names)}

    return Classifier()


def _holds_runs(path):
    """Does the tree under `path` hold a run directory (a config.yaml or summary.json)?"""
    for root, dirs, files in os.walk(path):
        if rundir.SUMMARY in files or rundir.CONFIG in files:
            return True
    return False


def check_out_dir(run_dir, out_dir, force):
    """Refuse an OUT_DIR whose replacement would delete more than an earlier export: --force
    once removed whole log directories when OUT_DIR was the run directory or held it."""
    if not os.path.lexists(out_dir):
        return
    out_real, run_real = os.path.realpath(out_dir), os.path.realpath(run_dir)
    if out_real == run_real or run_real.startswith(out_real.rstrip(os.sep) + os.sep):
        raise RunError(f'{out_dir}: is or contains the run directory {run_dir}; choose another OUT_DIR')
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        return
    if not force:
        raise RunError(f'{out_dir}: exists and is not empty; choose another OUT_DIR or use --force')
    # --force replaces only an earlier export, never a file, a run or a directory of runs.
    if (os.path.islink(out_dir) or not os.path.isdir(out_dir)
            or not os.path.isfile(os.path.join(out_dir, 'export.json')) or _holds_runs(out_dir)):
        raise RunError(f'{out_dir}: exists and is not an earlier export (no export.json, or it holds '
                       f'runs); --force only replaces an export, so choose another OUT_DIR')


def export_run(run_dir, out_dir, weights='best', data_dir=None, force=False):
    """Write the SavedModel; returns the metadata written to export.json."""
    import tensorflow as tf
    from runner.commands import inference
    check_out_dir(run_dir, out_dir, force)
    run = inference.load_run(run_dir, weights, data_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # Written next to OUT_DIR and renamed into place, so a failed export leaves no half model.
    tmp = tempfile.mkdtemp(prefix='.export-', dir=parent)
    try:
        labels = os.path.join(tmp, LABELS)
        with open(labels, 'w') as f:
            f.write(''.join(n + '\n' for n in run.class_names))
        module = serving_module(run, labels)
        saved = os.path.join(tmp, 'model')
        tf.saved_model.save(module, saved, signatures={'serving_default': module.serve,
                                                       'class_names': module.class_names})
        h, w = run.image_size
        meta = {'run_dir': os.path.abspath(run.run_dir), 'run_name': run.name, 'model': run.model_name,
                'weights': run.weights, 'weights_step': run.weights_step,
                'input': {'name': 'images', 'dtype': 'uint8', 'shape': [None, h, w, 3]},
                'outputs': {'probabilities': 'float32 [None, C]', 'top_class': 'int64 [None]',
                            'top_class_name': 'string [None]'},
                # How the caller turns an image of any size into the input (see predict).
                'preprocessing': run.info.preprocessing,
                'mean': run.mean, 'std': run.std, 'num_classes': run.num_classes,
                'class_names': run.class_names, 'labels_file': f'assets/{LABELS}',
                'summary': {k: run.summary.get(k) for k in ('status', 'steps', 'test_top1_accuracy',
                                                            'best_test_top1_accuracy', 'selection_split')
                            if k in run.summary}}
        rundir.write_atomic(os.path.join(saved, 'export.json'), json.dumps(meta, indent=1) + '\n')
        if os.path.lexists(out_dir):
            check_out_dir(run_dir, out_dir, force)  # again: it may have changed while saving
            if os.path.isdir(out_dir) and not os.path.islink(out_dir):
                shutil.rmtree(out_dir)
            else:
                os.remove(out_dir)
        os.replace(saved, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def main(argv=None):
    args = build_parser().parse_args(argv)
    from runner.training.distribute import quiet_tensorflow
    quiet_tensorflow()
    try:
        meta = export_run(args.run_dir, args.out_dir, args.weights, args.data_dir, args.force)
    except RunError as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG
    h, w = meta['input']['shape'][1:3]
    print(f"exported {meta['run_name']} ({meta['model']}, {meta['weights']} weights) to {args.out_dir}\n"
          f"  serving_default: images uint8 [None, {h}, {w}, 3] -> probabilities float32 "
          f"[None, {meta['num_classes']}], top_class, top_class_name\n"
          f"  class names: {os.path.join(args.out_dir, 'assets', LABELS)}")
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
