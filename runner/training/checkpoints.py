"""Checkpoints a resume can fall back on.

tf.train.latest_checkpoint trusts the `checkpoint` state file: when the newest checkpoint it
names has lost its `.index`, it answers None and a run would start again from step 0 over
its own files; a truncated or damaged data file only shows as an error in the middle of the
restore. Here every checkpoint of the directory is a candidate, newest first; each is read
whole before it is restored (TensorFlow's bundle reader checks every tensor's length and
CRC32C as it reads it), an unreadable one is moved aside, never deleted, and the state file
is rewritten to the ones that remain, so that tf.train.CheckpointManager and
tf.train.latest_checkpoint see only readable checkpoints.

The weights a checkpoint holds are only saved when finite (see `all_finite`): a checkpoint
named "last good" after a divergence is one to go back to.
"""
import glob
import os
import re

import tensorflow as tf

from runner.common import first_line
from runner.rundir import RunDir

_NUMBERED = re.compile(r'^(?P<prefix>.*-(?P<step>\d+))\.(index|data-\d+-of-\d+)$')


class NoReadableCheckpoint(Exception):
    """A run has checkpoints but none of them can be read."""


def candidates(ckpt_dir):
    """Prefixes of every checkpoint in `ckpt_dir` (listed in its state file or present as
    files), newest (highest number) first."""
    prefixes = set()
    state = tf.train.get_checkpoint_state(ckpt_dir) if _readable_state(ckpt_dir) else None
    if state is not None:
        prefixes.update(os.path.join(ckpt_dir, os.path.basename(p))
                        for p in [*state.all_model_checkpoint_paths, state.model_checkpoint_path] if p)
    for path in glob.glob(os.path.join(ckpt_dir, '*')):
        m = _NUMBERED.match(path)
        if m and '_temp' not in path:
            prefixes.add(m.group('prefix'))
    prefixes = {p for p in prefixes if glob.glob(p + '.*')}  # listed but gone without a trace
    return sorted(prefixes, key=lambda p: int(p.rsplit('-', 1)[1]) if p.rsplit('-', 1)[-1].isdigit() else -1,
                  reverse=True)


def _readable_state(ckpt_dir):
    """The state file is a text proto; a damaged one is ignored (the files are listed instead)."""
    path = os.path.join(ckpt_dir, 'checkpoint')
    if not os.path.exists(path):
        return False
    try:
        tf.train.get_checkpoint_state(ckpt_dir)
        return True
    except Exception:  # text_format.ParseError and friends: TensorFlow raises several kinds
        return False


def unreadable_reason(prefix):
    """Why the checkpoint at `prefix` cannot be read in full, or None when every tensor reads."""
    if not os.path.exists(prefix + '.index'):
        return f'{os.path.basename(prefix)}.index is missing'
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # OpError (DataLoss, OutOfRange, NotFound), IndexError, ValueError
        return first_line(e)
    return None


def move_aside(prefix, run_dir):
    """Move every file of the checkpoint at `prefix` to the run directory's
    checkpoints-unreadable/ (RunDir.unreadable); returns that directory."""
    target = RunDir(run_dir).unreadable
    os.makedirs(target, exist_ok=True)
    for path in glob.glob(glob.escape(prefix) + '.*'):
        dest = os.path.join(target, os.path.basename(path))
        n = 1
        while os.path.exists(dest):  # the same number unreadable twice: keep both
            dest, n = os.path.join(target, f'{os.path.basename(path)}.{n}'), n + 1
        os.rename(path, dest)
    return target


def newest_readable(ckpt_dir, run_dir, say, move=True, run_name=None):
    """The prefix of the newest checkpoint that reads in full, or None when the directory has
    none at all. Each unreadable newer one is reported by `say(line)` and, when `move`, moved
    aside and dropped from the state file. NoReadableCheckpoint when there are checkpoints
    but none reads."""
    found = candidates(ckpt_dir)
    bad = []
    for prefix in found:
        reason = unreadable_reason(prefix)
        if reason is None:
            if bad and move:
                _rewrite_state(ckpt_dir, [p for p in found if p not in bad])
            return prefix
        bad.append(prefix)
        where = f'; moved to {move_aside(prefix, run_dir)}' if move else ''
        say(f'checkpoint {prefix} is unreadable ({reason}){where}')
    if bad:
        hint = f'; --restart {run_name} starts the run over' if run_name else ''
        raise NoReadableCheckpoint(f'no readable checkpoint in {ckpt_dir} (unreadable ones in '
                                   f'{RunDir(run_dir).unreadable}){hint}')
    return None


def _rewrite_state(ckpt_dir, prefixes):
    """The `checkpoint` state file listing `prefixes` (newest first), as CheckpointManager
    writes it, so it neither names nor later tries to delete a moved checkpoint."""
    # Names relative to the directory, as the manager writes them: a run directory moved
    # elsewhere (--restart, a copied logdir) still finds its checkpoints.
    oldest_first = [os.path.basename(p) for p in reversed(prefixes)]
    tf.compat.v1.train.update_checkpoint_state(ckpt_dir, oldest_first[-1], oldest_first)


def present(ckpt_dir):
    """Whether the run has any checkpoint files at all, readable or not."""
    return bool(candidates(ckpt_dir))


def all_finite(variables):
    """True when every floating-point value of `variables` (model weights, optimizer slots,
    averages) is finite: the loss and gradient of a step can be finite while the update it
    makes overflows the weights."""
    tensors = [tf.convert_to_tensor(v) for v in variables if tf.as_dtype(v.dtype).is_floating]
    return bool(_all_finite(tensors)) if tensors else True


@tf.function(reduce_retracing=True)
def _all_finite(tensors):
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))


def checkpoint_bytes(params):
    # weights + momentum, float32, twice over while the next one is written, plus room
    return params * 4 * 2 * 2 + 64 * 2**20
