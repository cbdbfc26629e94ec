"""A failed run recorded: the error as one line in the summary, the traceback in error.log."""
import os
import re
import traceback

import tensorflow as tf

from runner import rundir
from runner.training import distribute, tboard


def error_message(error):
    """One line that says what went wrong. A TensorFlow op error raised in a tf.function
    begins 'Graph execution error:' and carries its cause in a later line."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith('[[')]
    if isinstance(error, tf.errors.OpError):
        lines = [l for l in lines if not l.startswith(('Graph execution error', 'Detected at node',
                                                       'File "', 'Stack trace'))] or lines
        if not lines:
            return type(error).__name__
        # An eager op's error wraps its message in the function's node name and the op's name.
        return re.sub(r'^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]$', '', lines[-1])
    return lines[0] if lines else type(error).__name__


def worker_dir(exp):
    """The scratch run directory of a non-chief worker of a multi-worker run."""
    return rundir.RunDir.worker_scratch(exp, distribute.task_id())


def record_failure(exp, error, status='failed'):
    """Mark a run `failed` (or `status`) with the error, keeping the traceback in error.log. A worker of a
    multi-worker run other than the chief writes to its own scratch directory, as it does
    while training: the chief's run directory is the chief's to write."""
    run_dir = rundir.RunDir.of(exp)
    if distribute.is_multi_worker(exp.train_parameters.distribution) and not distribute.task_is_chief():
        run_dir = worker_dir(exp)
    summary = rundir.read_summary(run_dir) or {'run_name': exp.run_name, 'model': exp.model}
    summary['status'] = status
    summary['error'] = f'{type(error).__name__}: {error_message(error)}'
    # The failure may be a full disk or a directory gone read-only: what cannot be written is
    # said in the summary returned (`not_recorded`), never raised from here.
    try:
        os.makedirs(run_dir, exist_ok=True)
        rundir.write_atomic(run_dir.error_log, ''.join(traceback.format_exception(error)))
        rundir.write_summary(run_dir, summary)
        tboard.set_status(str(run_dir), status)
    except OSError as e:
        summary['not_recorded'] = (f'could not mark the run {status}: cannot write '
                                   f'{e.filename or run_dir}: {e.strerror}')
    return summary
