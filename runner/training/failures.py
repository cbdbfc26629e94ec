"""A failed run recorded: the error as one line in the summary, the traceback in error.log."""
import os
import traceback


from runner import rundir
from runner.common import error_summary
from runner.training import distribute, tboard


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
    summary['error'] = error_summary(error)
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
