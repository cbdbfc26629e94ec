"""What a run shows in TensorBoard beyond its scalars: the HParams dashboard that compares
runs, the resolved config.yaml as text, the augmented training images of the first step,
and the confusion matrix of each evaluation. docs/tensorboard.md says what is where.

HParams follows TensorBoard's plugin API (tensorboard.plugins.hparams: `hparams_config`
declares the experiment's hyperparameters and metrics once per log directory, `hparams`
and `session_end_pb` write one session's values and end status; the protocol is
tensorboard/plugins/hparams/api.proto). TensorBoard keeps the *first* summary metadata it
reads for a tag of a run, and hparams live in metadata, so a resumed run cannot append a new
end status to its event files. Each run therefore keeps its session (values, status,
config text, first-step images) in one small event file of its own, RunDir.overview, rewritten
whole (write and rename) when a session starts and ends; the log directory keeps the
experiment declaration in EXPERIMENT, the union over its runs.
"""
import fcntl
import glob
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from runner.config.regularisers import describe as describe_regularisers
from runner.data import source as data_source
from runner import rundir
from runner.registry import canonical_model_name, canonical_parameters
from runner.rundir import RunDir

# Event files TensorBoard reads (any name holding 'tfevents'); '0' sorts them before the
# run's own event files, whose names hold the time they were created (so does rundir.OVERVIEW).
EXPERIMENT = 'events.out.tfevents.0.hparams_experiment'
EXPERIMENT_LOCK = '.hparams_experiment.lock'

# The metrics of the HParams table: the last value of each scalar tag in the run.
METRICS = (
    ('test/top1_error', 'final test top-1 error'),
    ('test/top5_error', 'final test top-5 error'),
    ('best/top1_error', 'best top-1 error (validation split if held out, else test)'),
    ('train/images_per_second', 'training images/s (last logged interval)'),
)
BEST_TAG = METRICS[2][0]

# summary.json's status -> the HParams session status. An interrupted run is neither a
# success nor a failure yet (running the command again resumes it): unknown.
STATUS_NAMES = {'running': 'STATUS_RUNNING', 'finished': 'STATUS_SUCCESS', 'failed': 'STATUS_FAILURE',
                'diverged': 'STATUS_FAILURE', 'interrupted': 'STATUS_UNKNOWN',
                # A search's trial its pruner stopped: neither a success nor a failure, and the
                # HParams statuses have no word for it (summary, status and report say pruned).
                'pruned': 'STATUS_UNKNOWN'}

INPUT_IMAGES = 16        # the first step's grid: 4 x 4 images
INTEGER = 'an integer'
CONFUSION_PIXELS = 256   # a confusion matrix picture is at least this many pixels wide
TABLE_CLASSES = 30       # the counts table up to this many classes


def dataset_source(cfg):
    """Where the data comes from, as the dataset section names it."""
    kind = data_source.source_kind(cfg)
    if kind == 'folder':
        return cfg.image_folder
    if kind == 'list':
        return cfg.train_list or cfg.test_list
    if kind == 'tfrecord':
        return cfg.tfrecord_train or cfg.tfrecord_test
    return cfg.name


def applied_weight_decay(resolved):
    """The weight decay the model was built with: train_parameters' if given, else the model
    function's default (config.yaml's model_parameters); None if the function has none."""
    wd = resolved['train_parameters']['weight_decay']
    return wd if wd is not None else resolved['model_parameters'].get('weight_decay')


def hparam_values(exp, resolved, params, policy):
    """{name: value} of the HParams dashboard, each of its own type (ints as ints); a setting
    that is off or absent is left out rather than given a value of another type."""
    tp, ds = resolved['train_parameters'], resolved['dataset']
    # The seed runner's spellings in the same rows and columns as this project's.
    model, model_parameters = canonical_model_name(exp), canonical_parameters(exp)
    values = {
        'model': model, 'params': int(params), 'dataset': dataset_source(exp.dataset),
        'validation_fraction': float(ds['validation_fraction'] or 0.0), 'steps': int(exp.total_steps),
        'batch_size': tp['batch_size'], 'lr_values': str(tp['lr_values']),
        'lr_schedule': tp['lr_schedule'], 'lr_boundaries': str(tp['lr_boundaries']),
        'warmup_steps': tp['warmup_steps'], 'optimizer': tp['optimizer'], 'momentum': tp['momentum'],
        'nesterov': tp['nesterov'],
        'weight_decay': applied_weight_decay(resolved),
        'label_smoothing': tp['label_smoothing'], 'bn_bias_lr_multiplier': tp['bn_bias_lr_multiplier'],
        'flip': ds['flip'], 'alternate_flips': ds['alternate_flips'], 'crop_padding': ds['crop_padding'],
        'crop_padding_mode': ds['crop_padding_mode'], 'ema_decay': tp['ema_decay'],
        'eval_tta': tp['eval_tta'],
        'lookahead': ('off' if tp['lookahead_interval'] is None else
                      f"every {tp['lookahead_interval']} steps, decay {tp['lookahead_decay']:g}"),
        'precision': policy, 'seed': tp['seed'],
        'regularisers': ', '.join(describe_regularisers(resolved)) or 'none',
    }
    for key, value in model_parameters.items():
        values[f'model.{key}'] = value if isinstance(value, (bool, int, float, str)) else str(value)
    for key, value in exp.trial_values.items():  # a search's trial: the sampled values, as named
        values[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return {k: v for k, v in values.items() if v is not None}


def _kind(value):
    return bool if isinstance(value, bool) else int if isinstance(value, int) else \
        float if isinstance(value, float) else str


def _declared(path):
    """{name: set of values} of an EXPERIMENT file's declaration ({} if there is none)."""
    from tensorboard.plugins.hparams import metadata
    out = {}
    if not os.path.exists(path):
        return out
    try:
        for _, event in rundir.event_records(path):
            for v in event.summary.value:
                if v.tag == metadata.EXPERIMENT_TAG:
                    exp = metadata.parse_experiment_plugin_data(v.metadata.plugin_data.content)
                    for info in exp.hparam_infos:
                        seen = out.setdefault(info.name, set())
                        for item in info.domain_discrete.values:
                            kind = item.WhichOneof('kind')
                            seen.add(int(item.number_value) if kind == 'number_value' and
                                     item.number_value.is_integer() and info.description == INTEGER
                                     else getattr(item, kind))
    except (tf.errors.OpError, ValueError):
        return {}  # torn by a kill: declared afresh from this run's values
    return out


def _sessions(logdir, integers):
    """The HParams values ({name: value}) of every run's overview file under `logdir` (every
    run TensorBoard shows, old ones moved aside by --restart too); the numbers of the names
    in `integers` as ints, as the runs gave them."""
    from tensorboard.plugins.hparams import metadata
    for folder, dirs, files in os.walk(logdir):
        dirs[:] = [d for d in dirs if not d.startswith('.') and d not in rundir.NOT_RUNS]
        if rundir.OVERVIEW not in files:
            continue
        for _, value in _kept_values(RunDir(folder).overview,
                                     lambda tag: tag == metadata.SESSION_START_INFO_TAG):
            start = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
            out = {}
            for name, item in start.hparams.items():
                v = getattr(item, item.WhichOneof('kind'))
                out[name] = int(v) if name in integers and isinstance(v, float) and v.is_integer() else v
            yield out


def _write_events(path, write):
    """Write an event file in one piece: `write()` under a fresh writer in a scratch directory,
    then renamed over `path`, so a reader or a kill never sees half of it."""
    folder = os.path.dirname(path)
    tmp = tempfile.mkdtemp(prefix='.tboard-', dir=folder)
    try:
        writer = tf.summary.create_file_writer(tmp)
        with writer.as_default():
            write()
        writer.close()
        written = glob.glob(os.path.join(tmp, '*tfevents*'))
        os.replace(written[0], path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def declare_experiment(logdir, values):
    """Declare the HParams experiment of `logdir` (hp.hparams_config): every hyperparameter of
    the runs seen so far and this one, each with the type and values it has, and METRICS.
    TensorBoard reads one declaration per log directory, so it is the union over its runs."""
    os.makedirs(logdir, exist_ok=True)
    # Runs starting at once (a Slurm array) each add their values: one at a time, or one
    # would drop another's, and TensorBoard's table filters out a value it was not told of.
    with open(os.path.join(logdir, EXPERIMENT_LOCK), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        _declare(logdir, values)


def _declare(logdir, values):
    from tensorboard.plugins.hparams import api as hp
    path = os.path.join(logdir, EXPERIMENT)
    # The values of the sessions there are now, not of every session there ever was: a run
    # resumed with other steps has its new value only, so the table's filters offer no value
    # that no run has.
    integers = {name for name, value in values.items() if _kind(value) is int}
    integers |= {name for name, seen in _declared(path).items() if all(_kind(v) is int for v in seen)}
    seen = {}
    for session in list(_sessions(logdir, integers)) + [values]:
        for name, value in session.items():
            seen.setdefault(name, set()).add(value)
    hparams = []
    for name in sorted(seen):
        kinds = {_kind(v) for v in seen[name]}
        vals = seen[name]
        if len(kinds) > 1:  # one run's int is another's str: compare them as text
            vals, kinds = {str(v) for v in vals}, {str}
        kind = kinds.pop()
        # TensorBoard has no integer type (its numbers are float64): the description says
        # so, which also keeps the type for the next run's union.
        hparams.append(hp.HParam(name, hp.Discrete(sorted(vals), dtype=kind),
                                 description=INTEGER if kind is int else None))
    metrics = [hp.Metric(tag, display_name=text) for tag, text in METRICS]
    _write_events(path, lambda: hp.hparams_config(hparams=hparams, metrics=metrics))


def input_grid(images, mean, std):
    """A grid of the first INPUT_IMAGES model inputs (normalised NHWC floats) as one uint8
    image, un-normalised for display."""
    x = np.asarray(images[:INPUT_IMAGES], np.float32)
    x = np.clip(x * np.asarray(std, np.float32) + np.asarray(mean, np.float32), 0.0, 1.0)
    cols = int(np.ceil(np.sqrt(len(x))))
    rows = int(np.ceil(len(x) / cols))
    n, h, w, c = x.shape
    grid = np.ones((rows * (h + 2), cols * (w + 2), c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = x[i]
    return (grid * 255 + 0.5).astype(np.uint8)


def first_step_images(train_ds, data):
    """The grid of the first training batch as the model receives it (augmented)."""
    return first_step_inputs(train_ds, data)[0]


def first_step_inputs(train_ds, data):
    """(grid, label table) of the first training batch as the model receives it: the first
    batch of the run's own training dataset (Trainer.train_ds, before it is distributed),
    read once more, the input being a function of (seed, batch number). The table names the
    mixed labels of mixup or CutMix in the grid's places; None for plain class labels."""
    images, labels = next(iter(train_ds.take(1)))
    grid = input_grid(images.numpy(), data.mean, data.std)
    if not labels.dtype.is_floating:
        return grid, None
    return grid, mixed_label_table(labels.numpy()[:INPUT_IMAGES], data.info.class_names)


def mixed_label_table(targets, class_names, cols=4):
    """Mixed targets [n, classes] as a Markdown table laid out as the grid: each cell the
    classes with their shares, largest first ('0.62 cat + 0.38 dog')."""
    names = list(class_names) if class_names else [str(i) for i in range(targets.shape[1])]
    cells = []
    for t in targets:
        order = [k for k in np.argsort(-t, kind='stable') if t[k] > 5e-3]
        cells.append(' + '.join(f'{t[k]:.2f} {str(names[k]).replace("|", "/")}' for k in order))
    rows = [cells[i:i + cols] for i in range(0, len(cells), cols)]
    head = [f'| {" | ".join(f"column {c + 1}" for c in range(cols))} |', '|---' * cols + '|']
    return '\n'.join(head + [f'| {" | ".join(r + [""] * (cols - len(r)))} |' for r in rows])


def confusion_image(matrix):
    """A confusion matrix (rows true class, columns predicted; counts) as an RGB image: each
    row normalised to the share of that class's images, white 0 to dark blue 1 (the colours
    of `python -m runner evaluate`'s picture), each cell a square of pixels so that a
    10-class matrix is not 10 pixels wide. Drawn with numpy: matplotlib's labelled picture
    takes 0.3-3 s, which every evaluation of a short run would pay."""
    m = np.asarray(matrix, np.float64)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    cell = max(1, CONFUSION_PIXELS // max(len(m), 1))
    share = np.kron(share, np.ones((cell, cell)))[..., None]
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    return (white + share * (blue - white) + 0.5).astype(np.uint8)


def confusion_table(matrix, class_names):
    """The counts as a Markdown table with the class names (rows true, columns predicted)."""
    names = [str(n).replace('|', '/') for n in class_names]
    rows = [f'| true \\ predicted | {" | ".join(names)} |', '|---' * (len(names) + 1) + '|']
    rows += [f'| **{name}** | {" | ".join(str(int(round(v))) for v in row)} |'
             for name, row in zip(names, np.asarray(matrix))]
    return '\n'.join(rows)


def log_confusion(tag, matrix, class_names, step):
    """The confusion matrix of an evaluation under the default writer: a picture (Images,
    `tag`) and, up to TABLE_CLASSES classes, the counts with class names (Text, `tag`_counts)."""
    names = list(class_names) if class_names else [str(i) for i in range(len(matrix))]
    tf.summary.image(tag, confusion_image(matrix)[None], step=step,
                     description=f'Rows: true class, columns: predicted class; each row the share '
                                 f'of that class\'s images (white 0, dark blue 1). Classes in '
                                 f'order: {", ".join(names)}.')
    if len(names) <= TABLE_CLASSES:
        tf.summary.text(f'{tag}_counts', confusion_table(matrix, names), step=step,
                        description='Image counts: rows true class, columns predicted class.')


def _config_markdown(config_text):
    # Indented: a Markdown code block, shown as written.
    return '\n'.join('    ' + line for line in config_text.splitlines())


INPUT_IMAGES_TAG = 'train/input_images'
INPUT_LABELS_TAG = 'train/input_labels'


def write_overview(run_dir, exp, values, config_text, grid, status='running', labels=None):
    """The run's session (HParams values, status), its config.yaml as text and the first-step
    grid, with the table of its mixed labels if any, in the run's overview file (grid None: a
    resumed run, whose earlier overview's grid and labels are kept); the experiment
    declaration of its log directory beside."""
    from tensorboard.plugins.hparams import api as hp
    path = RunDir(run_dir).overview
    kept = [] if grid is not None else _kept_values(path, lambda tag: tag in (INPUT_IMAGES_TAG,
                                                                               INPUT_LABELS_TAG))

    def write():
        hp.hparams(values, trial_id=exp.run_name)  # one row of the table per run
        tf.summary.text(rundir.CONFIG, _config_markdown(config_text), step=0,
                        description='The resolved experiment as the run got it (the run\'s config.yaml).')
        if grid is not None:
            tf.summary.image(INPUT_IMAGES_TAG, grid[None], step=0,
                             description='The first training batch as the model receives it: '
                                         'augmented, un-normalised for display.' + (
                                             f' Its mixed labels: {INPUT_LABELS_TAG} (Text).'
                                             if labels else ''))
        if labels:
            tf.summary.text(INPUT_LABELS_TAG, labels, step=0,
                            description=f'The mixed labels (mixup, CutMix) of {INPUT_IMAGES_TAG}, '
                                        'in the places of its images: each class with its share.')
        _write_values(kept)
        _write_end(status)

    _write_events(path, write)
    declare_experiment(exp.train_parameters.logdir, values)


def _kept_values(path, keep):
    """[(step, summary value)] of an event file whose tag `keep(tag)` accepts ([] if there is
    no file or it cannot be read)."""
    if not os.path.exists(path):
        return []
    try:
        return [(event.step, v) for _, event in rundir.event_records(path)
                for v in event.summary.value if keep(v.tag)]
    except tf.errors.OpError:
        return []


def _write_values(kept):
    from tensorboard.compat.proto import summary_pb2
    for step, value in kept:  # TensorBoard's protos, as rundir.event_records reads them
        tf.summary.experimental.write_raw_pb(summary_pb2.Summary(value=[value]).SerializeToString(),
                                             step=step)


def _write_end(status):
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import summary as hp_summary
    end = hp_summary.session_end_pb(api_pb2.Status.Value(STATUS_NAMES[status]), time.time())
    tf.summary.experimental.write_raw_pb(end.SerializeToString(), step=0)


def set_status(run_dir, status):
    """Replace the session end status in the run's overview file (a run from before it had one is
    left alone)."""
    from tensorboard.plugins.hparams import metadata
    path = RunDir(run_dir).overview
    kept = _kept_values(path, lambda tag: tag != metadata.SESSION_END_INFO_TAG)
    if kept:
        _write_events(path, lambda: (_write_values(kept), _write_end(status)))
