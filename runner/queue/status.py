"""`python -m runner status LOGDIR`: one line per run under a log directory -- running,
finished, interrupted, failed, diverged or not started; step of total; the last test or
validation error; the host; the Slurm job and task.

Read-only and safe while runs train: it reads summary.json and progress.json (the step a
running run has reached; both written atomically, rundir) and the run's lock record (runlock), and probes the lock for an instant to tell a running run from
one whose process died (a killed run's summary still says `running`). No TensorFlow import,
so it answers in well under a second on a login node.
"""
import argparse
import json
import os
import sys

from runner import rundir
from runner.common import EXIT_CONFIG, EXIT_OK, text_table
from runner.queue import runlock
from runner.rundir import RunDir

# What marks a directory as a run's (any one is enough): the runner's files, the lock every
# process takes, the record `submit slurm` leaves for a run not started yet.
RUN_FILES = (rundir.SUMMARY, rundir.CONFIG, rundir.LOCK, rundir.SUBMIT_RECORD)


def find_runs(logdir):
    """Run directories under `logdir` (run names may hold '/'), sorted by run name."""
    runs = []
    for path, dirs, files in os.walk(logdir):
        # A search's directory (its claim lock) holds trials, not a run of its own, even
        # where `submit slurm` left its task's record and output in it.
        if path != logdir and rundir.SEARCH_LOCK not in files and any(f in files for f in RUN_FILES):
            runs.append(path)
            dirs[:] = []  # checkpoints/, best/: parts of this run
            continue
        # Not runs: old runs kept by --restart, the submitted scripts, hidden directories
        # (the scratch of multi-worker runs' other workers, `.workers/`).
        dirs[:] = sorted(d for d in dirs if not rundir.moved_aside(d) and d != rundir.SLURM_JOBS_DIR
                         and not d.startswith('.'))
    return sorted(runs)


def _read_json(path):
    try:
        with open(path) as f:
            return json.loads(f.read() or 'null')
    except (OSError, ValueError):
        return None


def _slurm_text(record):
    """'12_3' from a lock record (Slurm's variables) or a submit record."""
    if not record:
        return ''
    if record.get('slurm_array_job_id'):
        return f"{record['slurm_array_job_id']}_{record.get('slurm_array_task_id', '?')}"
    if record.get('slurm_job_id'):
        return str(record['slurm_job_id'])
    if record.get('array_job_id'):
        return f"{record['array_job_id']}_{record.get('array_task_id', '?')}"
    return ''


def _error_text(summary):
    """The run's latest error on the split it evaluates: 'test 8.12%' or 'val 9.30%'."""
    keys = (('test', 'test_top1_accuracy'), ('val', 'val_top1_accuracy'))
    if summary.get('status') != 'finished' and summary.get('eval_split') == 'validation':
        keys = keys[::-1]
    for name, key in keys:
        if isinstance(summary.get(key), (int, float)):
            return f'{name} {100 * (1 - summary[key]):.2f}%'
    return '-'


def run_status(run_dir):
    """(status, steps, error, host, slurm, message) of one run directory."""
    summary = rundir.read_summary(run_dir) or {}
    holder = runlock.holder(run_dir)
    # The lock file keeps the record of its last holder after the lock is released.
    last = holder or _read_json(RunDir(run_dir).lock) or {}
    submitted = _read_json(RunDir(run_dir).submit_record) or {}
    if holder is not None:
        status = 'running'
    elif not summary:
        status = 'not started'
    elif summary.get('status') == 'running':
        status = 'interrupted'  # its process died without a word (SIGKILL, a lost node)
    else:
        status = summary.get('status', '?')
    # While it trains, the step it has reached (summary.json waits for the next checkpoint).
    reached = (rundir.read_progress(run_dir) if holder is not None else None) or summary
    steps = (f"{reached.get('steps', 0)}/{reached['total_steps']}" if 'total_steps' in reached
             else '-')
    slurm_job = _slurm_text(holder) or _slurm_text(submitted if status == 'not started' else last) \
        or _slurm_text(submitted)
    message = summary.get('error', '') if status in ('failed', 'diverged', 'interrupted') else ''
    if status == 'interrupted' and summary.get('status') == 'running':
        message = f"its process ended at step {summary.get('steps', 0)} without saying why " \
                  f"(killed?); the same command resumes it from its last checkpoint"
    return status, steps, _error_text(summary), last.get('host', '-') if last else '-', \
        slurm_job or '-', message


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m runner status',
                                description='One line per run under LOGDIR: status, step of '
                                            'total, last error, host, Slurm job. Read-only.')
    p.add_argument('logdir', metavar='LOGDIR')
    args = p.parse_args(argv)
    if not os.path.isdir(args.logdir):
        print(f"error: status: no log directory '{args.logdir}'", file=sys.stderr)
        return EXIT_CONFIG
    runs = find_runs(args.logdir)
    if not runs:
        print(f"{args.logdir}: no runs")
        return EXIT_OK
    rows = [('run', 'status', 'steps', 'last error', 'host', 'Slurm job')]
    messages = []
    for run_dir in runs:
        name = os.path.relpath(run_dir, args.logdir)
        status, steps, error, host, job, message = run_status(run_dir)
        rows.append((name, status, steps, error, host, job))
        if message:
            messages.append(f'  {name}: {message}')
    print('\n'.join([text_table(rows)] + messages))
    return EXIT_OK
