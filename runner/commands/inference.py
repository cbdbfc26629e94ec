"""A trained run loaded for inference: its experiment, data description, model and weights,
and the preprocessing and predictions that evaluate, predict and export share (the views of
test-time augmentation are runner.training.tta's).

Used by `python -m runner evaluate | predict | export`. Every problem a person can cause
(a directory that is not a run, a run with no weights yet, data that moved) is a
`RunError` whose message is one line.
"""
import dataclasses
import os

import numpy as np

from runner import rundir
from runner.training import tta as tta_lib
from runner.common import first_line
from runner.data.info import default_class_names, read_data_info, write_data_info
from runner.rundir import CONFIG, FINAL_WEIGHTS, RunDir

WEIGHTS = ('best', 'last')  # --weights: the best/ checkpoint, or the last weights saved


class RunError(Exception):
    """A run directory cannot be used as asked (one-line message)."""


@dataclasses.dataclass
class LoadedRun:
    run_dir: str
    config: dict          # config.yaml as written by the training run
    exp: object           # runner.config.Experiment
    summary: dict
    info: object          # runner.data.info.DataInfo
    mean: list
    std: list
    model: object = None
    weights: str = ''     # which weights were loaded, for people: 'best (step 4000)'
    weights_step: int = None

    @property
    def name(self):
        return self.summary.get('run_name') or self.exp.run_name

    @property
    def model_name(self):
        return self.exp.model

    @property
    def image_size(self):
        return tuple(self.info.image_shape[:2])

    @property
    def num_classes(self):
        return self.info.num_classes

    @property
    def class_names(self):
        names = self.info.class_names or []
        if len(names) != self.info.num_classes:
            return [str(i) for i in range(self.info.num_classes)]
        return list(names)


def read_config(run_dir):
    import yaml
    path = RunDir(run_dir).config
    if not os.path.isdir(run_dir):
        raise RunError(f'{run_dir}: no such directory')
    if not os.path.exists(path):
        raise RunError(f'{run_dir}: not a run directory (no {CONFIG}; give '
                       f'<logdir>/<run_name> of a run that has started)')
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise RunError(f'{path}: cannot read: {first_line(e)}') from None
    if not isinstance(cfg, dict):
        raise RunError(f'{path}: not an experiment')
    return cfg


def relocate_dataset(ds, data_dir):
    """`ds` (config.yaml's dataset section) for data that has moved to `data_dir`: the TFDS
    data_dir or the image folder becomes `data_dir`; for list files and TFRecords the deepest
    folder holding all of them (list files, list_root, the shards' folders) is replaced by
    `data_dir`, keeping the layout under it. A class_names_file moves with them when it was
    under that folder. A list path relative to list_root follows list_root."""
    ds = dict(ds)
    if ds.get('image_folder'):
        ds['image_folder'] = data_dir
        return ds
    moved = {}
    if ds.get('list_root'):
        moved['list_root'] = ds['list_root']
    for key in ('train_list', 'test_list', 'tfrecord_train', 'tfrecord_test'):
        path = ds.get(key)
        if path and not (key.endswith('_list') and ds.get('list_root') and not os.path.isabs(path)):
            moved[key] = path
    if not moved:
        ds['data_dir'] = data_dir
        return ds
    full = {k: os.path.abspath(os.path.expanduser(p)) for k, p in moved.items()}
    root = os.path.commonpath([p if k == 'list_root' else os.path.dirname(p) for k, p in full.items()])
    names = ds.get('class_names_file')
    if names and os.path.abspath(os.path.expanduser(names)).startswith(root + os.sep):
        full['class_names_file'] = os.path.abspath(os.path.expanduser(names))
    for key, path in full.items():
        rel = os.path.relpath(path, root)
        ds[key] = data_dir if rel == '.' else os.path.join(data_dir, rel)
    return ds


def load_experiment(run_dir, data_dir=None):
    """The run's resolved experiment, with its data where `data_dir` says it is now
    (relocate_dataset)."""
    from runner.config.errors import ConfigError
    from runner.config.expand import experiment_from_dict
    cfg = read_config(run_dir)
    if data_dir:
        cfg['dataset'] = relocate_dataset(cfg.get('dataset') or {}, data_dir)
    try:
        exp = experiment_from_dict(cfg, RunDir(run_dir).config)
    except ConfigError as e:
        raise RunError(str(e)) from None
    return cfg, exp


def _prepared(cfg):
    """Is the data describe() read really here? A TFDS builder describes a dataset that is
    not prepared on this machine too, but then only from its code (default class names)."""
    from runner.data import source as data_source
    if data_source.source_kind(cfg) != 'tfds':
        return True  # describe() has read the files
    try:
        return bool(data_source.tfds_builder(cfg).is_prepared())
    except Exception:  # a TFDS error: not something to trust over the cache
        return False


def data_info(run_dir, exp):
    """Image shape and class names: from the data when it is here (and cached in the run
    directory), from the cache when it is not, so predict and export need no data.

    The cache's class names win over the live description's when the data is not prepared
    here or the description has only default names ("0".."C-1"): an unprepared TFDS
    builder still describes its dataset, with those stand-ins."""
    from runner.data import info as data_info, source as data_source
    cached = read_data_info(run_dir)
    try:
        info = data_info.describe(exp.dataset)
    except data_source.DataUnavailable as e:
        if cached is None:
            raise RunError(f'{run_dir}: {e} (use --data-dir to say where the data is now)') from None
        return cached
    prepared = _prepared(exp.dataset)
    if (cached is not None and cached.num_classes == info.num_classes
            and not default_class_names(cached.class_names, cached.num_classes)
            and (not prepared or default_class_names(info.class_names, info.num_classes))):
        info = dataclasses.replace(info, class_names=list(cached.class_names))
    if prepared:
        write_data_info(run_dir, info)
    return info


def restore_weights(model, run_dir, which):
    """Load `best` (best/ checkpoint) or `last` (final.weights.h5, else the latest checkpoint)
    into `model`. Returns (description, step or None)."""
    import tensorflow as tf
    run = RunDir(run_dir)
    if which not in WEIGHTS:
        raise RunError(f"--weights: '{which}' is not one of {', '.join(WEIGHTS)}")
    if which == 'best':
        ckpt = tf.train.latest_checkpoint(run.best)
        if not ckpt:
            raise RunError(f'{run_dir}: no best/ checkpoint (the run was never evaluated); '
                           f'use --weights last')
        step = _ckpt_step(ckpt)
        _restore_checkpoint(model, ckpt, run_dir)
        chosen = (rundir.read_summary(run_dir) or {}).get('selection_split')
        chosen = {'validation': ', chosen on val', 'test': ', chosen on test'}.get(chosen, '')
        return f'best (step {step}{chosen})', step
    final = run.final_weights
    summary = rundir.read_summary(run_dir) or {}
    ckpt = tf.train.latest_checkpoint(run.checkpoints)
    # A finished run resumed for more steps has a stale final.weights.h5: while it is not
    # finished, its latest checkpoint is the last word.
    if os.path.exists(final) and (summary.get('status') == 'finished' or not ckpt):
        try:
            model.load_weights(final)
        except Exception as e:  # wrong architecture, a truncated file
            raise RunError(f'{final}: does not fit the model of config.yaml: '
                           f'{first_line(e)}') from None
        step = summary.get('steps') if summary.get('status') == 'finished' else None
        return f"last ({FINAL_WEIGHTS}{f', step {step}' if step is not None else ''})", step
    if not ckpt:
        raise RunError(f'{run_dir}: no {FINAL_WEIGHTS} and no checkpoint: the run has '
                       f'not saved any weights yet')
    step = _ckpt_step(ckpt)
    _restore_checkpoint(model, ckpt, run_dir)
    return f'last (checkpoint at step {step}; run unfinished)', step


def _ckpt_step(path):
    try:
        return int(path.rsplit('-', 1)[1])
    except (IndexError, ValueError):
        return None


def _restore_checkpoint(model, ckpt, run_dir):
    import tensorflow as tf
    try:
        # Only the model: the training checkpoints also hold optimizer and counters.
        tf.train.Checkpoint(model=model).restore(ckpt).assert_existing_objects_matched().expect_partial()
    except Exception as e:
        raise RunError(f'{ckpt}: does not fit the model of config.yaml: {first_line(e)}') from None


def load_run(run_dir, weights='best', data_dir=None, build=True):
    """Everything needed to use a run's model; `build=False` skips the model."""
    from runner.config.errors import ConfigError
    from runner.registry import build_model
    run_dir = os.path.normpath(run_dir)
    cfg, exp = load_experiment(run_dir, data_dir)
    info = data_info(run_dir, exp)
    ds = cfg.get('dataset', {})
    mean, std = ds.get('mean'), ds.get('std')
    if mean is None or std is None:
        raise RunError(f'{run_dir}: config.yaml has no dataset mean/std (was it written by the '
                       f'training run?)')
    if not ds.get('normalize', True):
        mean, std = [0.0], [1.0]
    run = LoadedRun(run_dir, cfg, exp, rundir.read_summary(run_dir) or {}, info, list(mean),
                    list(std))
    if build:
        try:
            run.model = build_model(exp, info.image_shape, info.num_classes)
        except ConfigError as e:
            raise RunError(f'{run_dir}: {e}') from None
        run.weights, run.weights_step = restore_weights(run.model, run_dir, weights)
    return run


# ---------------------------------------------------------------------------
# Predictions (the views of test-time augmentation: runner.training.tta) and preprocessing

def predict_probabilities(run, images, tta='none', batch_size=None):
    """Class probabilities (float32 [N, C]) of uint8 images [N, H, W, 3] of the model's size.

    For `10crop` of an imagenet-style run, `images` are instead the images through
    runner.data.transforms.resize_short_side (a list when their shapes differ, as read_split(...,
    resized=True) gives them): the views are their corners and centres at the model size."""
    tp = run.exp.train_parameters
    if batch_size is not None and batch_size < 1:
        raise RunError('--batch-size: must be at least 1')
    batch_size = batch_size or tp.eval_batch_size
    if tta == '10crop':
        batch_size = max(1, batch_size // 5)  # ten views per image in memory at once
    if tta == '10crop' and tta_lib.ten_crop_style(run):
        return _ten_crop_probabilities(run, images, batch_size)
    fn = tta_lib.probability_fn(run.model, run.image_size, run.mean, run.std, tta,
                        run.exp.dataset.crop_padding, run.exp.dataset.crop_padding_mode)
    out = [fn(images[i:i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    if not out:
        return np.zeros((0, run.num_classes), np.float32)
    return np.concatenate(out)


def _ten_crop_probabilities(run, images, batch_size):
    import tensorflow as tf
    from runner.data import transforms as data_transforms
    size = run.image_size
    fn = tta_lib.ten_crop_probability_fn(run.model, size, run.mean, run.std)
    ds = (tf.data.Dataset.from_generator(lambda: iter(images),
                                         output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
          .map(lambda img: data_transforms.ten_crop(img, size), num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size).prefetch(2))
    out = [fn(views).numpy() for views in ds]
    if not out:
        return np.zeros((0, run.num_classes), np.float32)
    return np.concatenate(out)


def prepare_image(data, image_size, style='cifar'):
    """Encoded image bytes (JPEG, PNG, BMP, GIF; any size; grey, RGB, RGBA or CMYK) -> uint8
    [H, W, 3], exactly as the evaluation pipeline reads it: decoded to three channels, then
    (cifar style) resized with antialiasing and rounded, or (imagenet style) the short side
    resized to size/0.875 and the centre cropped.

    Raises tf.errors.InvalidArgumentError for data that is not a (complete) image."""
    from runner.data import transforms as data_transforms
    # The pipeline's own functions, so a file gives the model the same pixels through
    # predict as through evaluation.
    img = data_transforms.decode(data)
    return data_transforms.prepare_eval_image(img, tuple(image_size), style).numpy()

