"""What a run leaves on disk, written so that a kill at any instant leaves it readable.

<logdir>/<run_name>/
    config.yaml          the fully resolved experiment (defaults filled in, data statistics)
    summary.json         status and headline numbers, rewritten at every evaluation
    progress.json        the step a training process has reached, rewritten every few seconds
    metrics.jsonl        one JSON object per logged step (train) or evaluation (eval)
    events.out.tfevents  TensorBoard scalars and confusion matrices
    events.out.tfevents.0.overview  the HParams session, config text, input images (runner.training.tboard)
    checkpoints/         tf.train.CheckpointManager: model, optimizer, step, data position
    best/                weights with the best evaluation error
    final.weights.h5     weights at the end of training
    error.log            the traceback of a failed run
    data_info.json       image shape and class names, for predict and export without the data
    checkpoints-unreadable/  damaged checkpoints a resume moved aside (runner.training.checkpoints)
    .lock                the lock of the process training the run (runner.queue.runlock)
    .tmp/                Python's temporary files while the run trains (autograph's modules)
    eval-*.json          results of `python -m runner evaluate` (runner.commands.evaluate names them)
    slurm.json, slurm.out  the Slurm array task a run was submitted as, and what it printed
                         (runner.queue.slurm)

<logdir>/<run_name>/ of a search (runner.search) is no run itself:
    study.journal        the Optuna study (when search.storage is null)
    .search.lock         taken for the instant a process claims a trial
    trial<k>/            the run of trial k, laid out as above

docs/runs.md describes them, and what happens when writing them fails.
"""
import contextlib
import datetime
import errno
import glob
import json
import os
import re
import shutil
import tempfile

from runner.common import first_line, size_problem

# TensorFlow is imported where it is used (the event files), so that reading a run
# (`python -m runner status`) stays a fraction of a second.

# The names in a run directory (the layout above). Other modules reach them through RunDir.
SUMMARY = 'summary.json'
PROGRESS = 'progress.json'
CONFIG = 'config.yaml'
METRICS = 'metrics.jsonl'
FINAL_WEIGHTS = 'final.weights.h5'
CHECKPOINTS = 'checkpoints'
BEST = 'best'
UNREADABLE = 'checkpoints-unreadable'
ERROR_LOG = 'error.log'
DATA_INFO = 'data_info.json'     # shape and class names, so predict and export work without the data
LOCK = '.lock'
SCRATCH = '.tmp'                 # Python's temporary files while the run trains (autograph's modules)
OVERVIEW = 'events.out.tfevents.0.overview'  # '0': sorts before the run's timed event files
SUBMIT_RECORD = 'slurm.json'     # the array job and task a run was submitted as (runner.queue.slurm)
SLURM_OUTPUT = 'slurm.out'       # what a run's Slurm tasks printed, every allocation appended
# A checkpoint's index file, as tf.train.CheckpointManager names it (its step is the number).
_CHECKPOINT_INDEX = re.compile(r'.*-(\d+)\.index')
# summary.json and config.yaml are read up to this many bytes (the runner's are a few KB).
MAX_RECORD_BYTES = 1 << 20
RECORD_VALUES, RECORD_DEPTH = 100_000, 20  # as an experiment file's (runner.config.yaml_io)
# In the directory of a search (<logdir>/<run_name>, its trials' runs below it: runner.search).
STUDY_JOURNAL = 'study.journal'  # the Optuna study when search.storage is null
SEARCH_LOCK = '.search.lock'     # held for the instant a process claims a trial
# In logdir, beside the runs: the scratch directories of a multi-worker run's other workers.
WORKERS = '.workers'
# Directories in a run directory that hold no run of their own (report walks the rest).
NOT_RUNS = frozenset({CHECKPOINTS, BEST, UNREADABLE})


class RunDir(os.PathLike):
    """Every path of one run directory, <logdir>/<run_name>: nothing else spells them.

    A RunDir is a path-like object, so os.path functions and open() take it as they take
    the string; str(run) is the directory."""

    def __init__(self, path):
        self.path = os.fspath(path)

    @classmethod
    def of(cls, exp):
        """The run directory of an experiment (its logdir and run_name)."""
        return cls(os.path.join(exp.train_parameters.logdir, exp.run_name))

    @classmethod
    def worker_scratch(cls, exp, task_id):
        """The scratch run directory of worker `task_id` (not the chief) of a multi-worker run."""
        return cls(os.path.join(exp.train_parameters.logdir, WORKERS, exp.run_name, str(task_id)))

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path

    def __repr__(self):
        return f'RunDir({self.path!r})'

    def __eq__(self, other):
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self):
        return hash(self.path)

    def _join(self, name):
        return os.path.join(self.path, name)

    summary = property(lambda self: self._join(SUMMARY))
    progress = property(lambda self: self._join(PROGRESS))
    config = property(lambda self: self._join(CONFIG))
    metrics = property(lambda self: self._join(METRICS))
    final_weights = property(lambda self: self._join(FINAL_WEIGHTS))
    checkpoints = property(lambda self: self._join(CHECKPOINTS))
    best = property(lambda self: self._join(BEST))
    unreadable = property(lambda self: self._join(UNREADABLE))
    error_log = property(lambda self: self._join(ERROR_LOG))
    data_info = property(lambda self: self._join(DATA_INFO))
    lock = property(lambda self: self._join(LOCK))
    scratch = property(lambda self: self._join(SCRATCH))
    overview = property(lambda self: self._join(OVERVIEW))
    submit_record = property(lambda self: self._join(SUBMIT_RECORD))
    slurm_output = property(lambda self: self._join(SLURM_OUTPUT))
    study_journal = property(lambda self: self._join(STUDY_JOURNAL))
    search_lock = property(lambda self: self._join(SEARCH_LOCK))

    def eval_file(self, stem):
        """An after-training evaluation's result file, `<stem>.json` (runner.commands.evaluate names it)."""
        return self._join(stem + '.json')


def write_atomic(path, text, sync=True):
    """Write via a temporary file and rename, so readers never see half a file (`sync`: on
    disk before the rename, as a record that must survive a crash needs). On a full disk or
    a refused write the old file stands, no temporary file is left, and the OSError (which
    names the path) is raised."""
    tmp = f'{path}.tmp'
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if e.filename in (None, tmp):  # a write cut short names no file
            e.filename = path
        raise


# The keys of summary.json that the runner's readers (status, report, the results table, a
# resume) use, with the types it writes them as: a summary.json with another type in one of
# them is damaged, as one that is no JSON mapping is (a file edited by hand, another tool's).
_NUMBER = (int, float)
SUMMARY_TYPES = {
    'status': str, 'run_name': str, 'model': str, 'error': str, 'eval_split': str,
    'selection_split': str, 'precision': str, 'steps': int, 'total_steps': int, 'params': int,
    'paper': dict, 'sessions': list, 'test_top1_accuracy': _NUMBER,
    'best_test_top1_accuracy': _NUMBER, 'val_top1_accuracy': _NUMBER,
    'train_images_per_second': _NUMBER, 'wall_seconds': _NUMBER,
}


def summary_problem(data):
    """Why `data` (a summary.json as parsed) is not one the runner writes, or None."""
    if not isinstance(data, dict):
        return 'not a mapping of keys'
    for key, types in SUMMARY_TYPES.items():
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):  # NaN is the runner's own
            return f"its '{key}' is {type(value).__name__} {str(value)[:40]!r}"
    return None


def damaged(run_dir):
    """'<path>: <why>' for a config.yaml or summary.json of the run that exists but does not
    read as the runner writes it (not a mapping; for summary.json, a key of another type):
    a file edited by hand, a copy cut short, another tool's. Such a run cannot be resumed or
    compared with its experiment; the runner writes both files atomically, so it never
    leaves them so itself."""
    import yaml
    for name, parse in ((CONFIG, yaml.safe_load), (SUMMARY, json.loads)):
        path = os.path.join(run_dir, name)
        try:
            with open(path, encoding='utf-8') as f:
                data = parse(f.read(MAX_RECORD_BYTES))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:
            reason = e.strerror if isinstance(e, OSError) else first_line(e)
            return f'{path}: cannot be read ({reason})'
        problem = summary_problem(data) if name == SUMMARY else (
            None if isinstance(data, dict) else 'not a mapping of keys')
        # A config.yaml is compared key by key with its experiment: not one of a billion.
        problem = problem or size_problem([data], RECORD_VALUES, RECORD_DEPTH)
        if problem:
            return f'{path}: cannot be read ({problem})'
    return None


def read_summary(run_dir):
    """The run's summary, or None when it has none or a damaged one (see `damaged`)."""
    try:
        with open(RunDir(run_dir).summary, encoding='utf-8') as f:
            data = json.loads(f.read(MAX_RECORD_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return None if summary_problem(data) else data


def is_finished(summary, total_steps):
    """Whether a run's summary (or None) says it trained all of `total_steps`."""
    return bool(summary) and summary.get('status') == 'finished' and summary.get('steps', 0) >= total_steps


def newest_checkpoint_step(run_dir):
    """The step of the newest checkpoint file in the run's checkpoints/ (its name, `ckpt-<step>.index`;
    no TensorFlow), or None. What a run has trained when its summary.json is lost or damaged."""
    try:
        names = os.listdir(RunDir(run_dir).checkpoints)
    except OSError:
        return None
    steps = [int(m[1]) for m in map(_CHECKPOINT_INDEX.fullmatch, names) if m]
    return max(steps, default=None)


def write_summary(run_dir, summary):
    write_atomic(RunDir(run_dir).summary, json.dumps(summary, indent=2, sort_keys=False) + '\n')


def write_progress(run_dir, step, total_steps):
    """The step the training process has reached, for `status` while it trains (summary.json
    waits for the next checkpoint). Not synced to disk: a record of a few seconds' standing
    needs no fsync. A record that cannot be written is skipped: a full disk is the
    checkpoint's to report, not this record's."""
    with contextlib.suppress(OSError):
        write_atomic(RunDir(run_dir).progress, json.dumps({'steps': step, 'total_steps': total_steps}),
                     sync=False)


def read_progress(run_dir):
    """progress.json ({'steps', 'total_steps'}), or None (absent, or damaged: not two whole
    numbers)."""
    try:
        with open(RunDir(run_dir).progress, encoding='utf-8') as f:
            data = json.loads(f.read(MAX_RECORD_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    whole = isinstance(data, dict) and all(
        isinstance(data.get(k), int) and not isinstance(data.get(k), bool) for k in ('steps', 'total_steps'))
    return data if whole else None


def append_metrics(run_dir, record):
    """Append one record whole or not at all: a write cut short (a full disk) is undone, so
    the file never holds half a line that a later record would be glued to."""
    path = RunDir(run_dir).metrics
    line = (json.dumps(record) + '\n').encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            e.filename = path
            raise
    finally:
        os.close(fd)


def read_metrics(run_dir):
    """The records of metrics.jsonl: each line that is a JSON mapping, in order."""
    return read_metrics_counted(run_dir)[0]


def read_metrics_counted(run_dir):
    """(the records of metrics.jsonl, how many of its lines are not a record): a line cut short
    by a kill, or damage (bytes that are no UTF-8, JSON that is no mapping) are left out."""
    records, bad = [], 0
    try:
        with open(RunDir(run_dir).metrics, 'rb') as f:
            for line in f:
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    record = None
                if isinstance(record, dict):
                    records.append(record)
                elif line.strip():
                    bad += 1
    except OSError:
        pass
    return records, bad


def truncate_history(run_dir, step):
    """Drop everything logged after `step`, the step a resumed run restarts from, and every line
    of metrics.jsonl that is not a record; returns how many such lines were dropped.

    The steps between the last checkpoint and a kill are trained again after resume;
    without this, TensorBoard and metrics.jsonl would show them twice.
    """
    records, bad = read_metrics_counted(run_dir)
    records = [r for r in records if not isinstance(r.get('step'), _NUMBER) or r['step'] <= step]
    write_atomic(RunDir(run_dir).metrics, ''.join(json.dumps(r) + '\n' for r in records))
    for path in sorted(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))):
        if path.endswith('.tmp'):
            os.remove(path)
            continue
        _truncate_event_file(path, step)
    return bad


def event_records(path):
    """Each record of a TensorBoard event file as (its bytes, TensorBoard's Event proto), in
    order: the one reader of event files (the resume's truncation here, runner.training.tboard's
    HParams). A record torn by a kill ends the iteration with tf.errors.DataLossError."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        yield raw, event_pb2.Event.FromString(raw)


def _truncate_event_file(path, step):
    import tensorflow as tf
    kept, dropped = [], 0
    try:
        for raw, event in event_records(path):
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


@contextlib.contextmanager
def temporary_files_in(run_dir):
    """Python's temporary files in the run's scratch directory (RunDir.scratch) for the time of
    the block. TensorFlow's autograph writes a module per traced function to the temporary
    directory and removes them only when the process exits cleanly, so a killed run left them
    in $TMPDIR for good; here they stay under the run, and its next start clears them."""
    scratch = RunDir(run_dir).scratch
    shutil.rmtree(scratch, ignore_errors=True)  # a killed process's
    os.makedirs(scratch, exist_ok=True)
    before, tempfile.tempdir = tempfile.tempdir, scratch
    try:
        yield scratch
    finally:
        tempfile.tempdir = before
        shutil.rmtree(scratch, ignore_errors=True)  # loaded modules need not their files


# `--restart` keeps an old run as <run>.restarted-<time>: no longer a run of the queue.
MOVED_ASIDE = '.restarted-'
# Under the log directory: the Slurm job scripts submitted and Slurm's own output.
SLURM_JOBS_DIR = 'slurm-jobs'


def moved_aside(path):
    """Is this directory an old run that `--restart` moved aside?"""
    return MOVED_ASIDE in os.path.basename(os.path.normpath(path))


def move_aside(run_dir):
    """`--restart`: keep the old run under a timestamped name; never delete it."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    target, n = f'{run_dir}{MOVED_ASIDE}{stamp}', 1
    while os.path.exists(target):  # two restarts within a second
        target, n = f'{run_dir}{MOVED_ASIDE}{stamp}-{n}', n + 1
    os.rename(run_dir, target)  # refuses to overwrite, unlike shutil.move
    return target


def remove_partial_checkpoints(run_dir):
    """Files of a checkpoint whose write was killed: never listed, never read; drop them."""
    ckpt_dir = RunDir(run_dir).checkpoints
    for path in glob.glob(os.path.join(ckpt_dir, '*_temp*')):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def link_out_of(logdir, run_dir):
    """The first symbolic link that leads out of `logdir` on the way from it to `run_dir`, or
    at or anywhere inside `run_dir` (a link that stays inside logdir is fine), or None. The
    runner writes a run only inside its logdir: through such a link it would write elsewhere."""
    base = os.path.realpath(logdir)

    def leads_out(path):
        target = os.path.realpath(path)
        return os.path.islink(path) and target != base and not target.startswith(base + os.sep)
    path = logdir
    for part in os.path.relpath(run_dir, logdir).split(os.sep):
        path = os.path.join(path, part)
        if leads_out(path):
            return path
    for root, dirs, files in os.walk(run_dir):  # which does not follow links
        for name in sorted(dirs + files):
            if leads_out(os.path.join(root, name)):
                return os.path.join(root, name)
    return None


# What a run writes, for the free-space check before it starts (docs/runs.md, "Limits"). Each
# checkpoint holds float32 copies of the weights, of at most two optimizer slots (Adam's
# moments; SGD keeps one) and of an average (EMA or Lookahead); keep_checkpoints of them are
# kept, and the next is written before the oldest goes. best/ and final.weights.h5 hold the
# weights once each. A training log is a line of metrics.jsonl and a few TensorBoard scalars;
# an evaluation adds a confusion matrix (a picture and a table of num_classes**2 counts); the
# overview holds the config and one picture of the first batch.
COPIES_PER_CHECKPOINT = 4
LOG_BYTES = 2 * 2**10
CONFUSION_BYTES_PER_CELL = 8
OVERVIEW_BYTES = 2 * 2**20
DISK_MARGIN = 1.5  # the estimate is multiplied by this


def run_bytes(exp, params, num_classes):
    """About how many bytes a whole run of `exp` writes (`params` trainable parameters), with
    DISK_MARGIN: what its log directory must have free when it starts."""
    tp = exp.train_parameters
    weights = 4 * params
    saved = ((tp.keep_checkpoints + 1) * COPIES_PER_CHECKPOINT + 2) * weights
    steps = exp.total_steps
    evaluations = steps // tp.val_interval + 1
    logs = (steps // tp.log_interval * LOG_BYTES + OVERVIEW_BYTES
            + evaluations * (LOG_BYTES + CONFUSION_BYTES_PER_CELL * num_classes ** 2))
    return int(DISK_MARGIN * (saved + logs))


def check_writable(logdir, need_bytes, run_dir=None):
    """One clear line if the log directory, or the run directory in it when that exists
    already (a resume), cannot take a run of `need_bytes`; None if they can. Creates nothing: a
    log directory not made yet is judged by the nearest directory above it that exists."""
    if run_dir is not None:
        link = link_out_of(logdir, run_dir)
        if link:
            return (f"{link} is a symbolic link to {os.path.realpath(link)}, out of the log "
                    f"directory; a run is written only inside logdir")
    existing = os.path.abspath(logdir)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    try:
        _probe(existing)
    except OSError as e:
        return f"train_parameters.logdir: cannot write to '{logdir}': {e.strerror}"
    for path in (run_dir, run_dir and RunDir(run_dir).checkpoints):
        if path and os.path.isdir(path):
            try:
                _probe(path)
            except OSError as e:
                return f"cannot write to the run directory '{path}': {e.strerror}"
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        return (f"train_parameters.logdir: '{logdir}' has {free / 2**20:.1f} MiB free, a run "
                f"needs about {need_bytes / 2**20:.1f} MiB (its checkpoints and logs, with a "
                f"margin)")
    return None


def _probe(directory):
    # A probe of its own: the workers of a multi-worker run check the same directory at
    # once, and one would remove a shared probe file under another.
    fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write('ok')
    finally:
        os.remove(probe)
