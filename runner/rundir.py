"""What a run leaves on disk, written so that a kill at any instant leaves it readable.

<logdir>/<run_name>/
    config.yaml          the fully resolved experiment (defaults filled in, data statistics)
    summary.json         status and headline numbers, rewritten at every evaluation
    metrics.jsonl        one JSON object per logged step (train) or evaluation (eval)
    events.out.tfevents  TensorBoard scalars
    checkpoints/         tf.train.CheckpointManager: model, optimizer, step, data position
    best/                weights with the best evaluation error
    final.weights.h5     weights at the end of training
    error.log            the traceback of a failed run
"""
import datetime
import glob
import json
import os
import shutil
import tempfile

# TensorFlow is imported where it is used (the event files), so that reading a run
# (`python -m runner status`) stays a fraction of a second.

SUMMARY = 'summary.json'
CONFIG = 'config.yaml'
METRICS = 'metrics.jsonl'
FINAL_WEIGHTS = 'final.weights.h5'


def write_atomic(path, text):
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_summary(run_dir):
    try:
        with open(os.path.join(run_dir, SUMMARY)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_finished(summary, total_steps):
    """Whether a run's summary (or None) says it trained all of `total_steps`."""
    return bool(summary) and summary.get('status') == 'finished' and summary.get('steps', 0) >= total_steps


def write_summary(run_dir, summary):
    write_atomic(os.path.join(run_dir, SUMMARY), json.dumps(summary, indent=2, sort_keys=False) + '\n')


def append_metrics(run_dir, record):
    with open(os.path.join(run_dir, METRICS), 'a') as f:
        f.write(json.dumps(record) + '\n')


def read_metrics(run_dir):
    out = []
    try:
        with open(os.path.join(run_dir, METRICS)) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut short by a kill
                    pass
    except OSError:
        pass
    return out


def truncate_history(run_dir, step):
    """Drop everything logged after `step`, the step a resumed run restarts from.

    The steps between the last checkpoint and a kill are trained again after resume;
    without this, TensorBoard and metrics.jsonl would show them twice.
    """
    records = [r for r in read_metrics(run_dir) if r.get('step', 0) <= step]
    write_atomic(os.path.join(run_dir, METRICS), ''.join(json.dumps(r) + '\n' for r in records))
    for path in sorted(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))):
        if path.endswith('.tmp'):
            os.remove(path)
            continue
        _truncate_event_file(path, step)


def _truncate_event_file(path, step):
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2
    kept, dropped = [], 0
    try:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = event_pb2.Event.FromString(raw)
            if event.step > step and event.HasField('summary'):
                dropped += 1
            else:
                kept.append(raw)
    except tf.errors.DataLossError:
        dropped += 1  # the record being written at the kill; the rest are kept
    if not dropped:
        return
    tmp = path + '.tmp'
    with tf.io.TFRecordWriter(tmp) as w:
        for raw in kept:
            w.write(raw)
    os.replace(tmp, path)


def move_aside(run_dir):
    """`--restart`: keep the old run under a timestamped name; never delete it."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    target, n = f'{run_dir}.restarted-{stamp}', 1
    while os.path.exists(target):  # two restarts within a second
        target, n = f'{run_dir}.restarted-{stamp}-{n}', n + 1
    os.rename(run_dir, target)  # refuses to overwrite, unlike shutil.move
    return target


def remove_partial_checkpoints(run_dir):
    """Files of a checkpoint whose write was killed: never listed, never read; drop them."""
    ckpt_dir = os.path.join(run_dir, 'checkpoints')
    for path in glob.glob(os.path.join(ckpt_dir, '*_temp*')):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def check_writable(logdir, need_bytes):
    """One clear line if the log directory cannot take a run; None if it can."""
    try:
        os.makedirs(logdir, exist_ok=True)
        # A probe of its own: the workers of a multi-worker run check the same directory at
        # once, and one would remove a shared probe file under another.
        fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=logdir)
        with os.fdopen(fd, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        return f"train_parameters.logdir: cannot write to '{logdir}': {e.strerror}"
    free = shutil.disk_usage(logdir).free
    if free < need_bytes:
        return (f"train_parameters.logdir: '{logdir}' has {free / 2**20:.0f} MiB free, a run "
                f"needs about {need_bytes / 2**20:.0f} MiB for its checkpoints")
    return None
