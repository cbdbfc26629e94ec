"""One process per run: an exclusive OS file lock in the run directory.

A process holds the run directory's `.lock` (rundir.LOCK) with flock(2) for as long as it trains (or smoke-tests)
that run; the kernel releases it when the process exits or is killed, so a crash never
leaves a stale claim. A second process, on this machine or on another one sharing the file
system, finds the lock taken and skips the run: processes started on one file and one
logdir split the queue between them (a Slurm job array, one process per GPU, a Kubernetes
indexed job) without a scheduler of our own.

The file also records who holds it (host, pid, start time, Slurm job and task), for
`--list` and `python -m runner status`. That record is only informative; the lock itself
is the truth.

Shared file systems: flock works across machines on NFSv4 (Linux maps it to NFS byte-range
locks) and on Lustre mounted with `-o flock`; on a file system without cluster-wide locks
(Lustre with `localflock`, some FUSE mounts) two machines could both believe they hold a run.
This module imports no TensorFlow, so status commands stay fast.
"""
import fcntl
import json
import os
import socket
import time

from runner.rundir import RunDir

# A reader (status, --list) probes the lock by taking a shared lock for an instant; a
# claimant that meets such a probe retries for this long before it concludes "taken".
CLAIM_RETRY_SECONDS = 0.5

# Slurm's variables that say which job and array task a process belongs to.
SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID')


def holder_record():
    """Who this process is, as written into a lock it takes."""
    record = {'host': socket.gethostname(), 'pid': os.getpid(),
              'since': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    for var in SLURM_VARS:
        if os.environ.get(var):
            record[var.lower()] = os.environ[var]
    return record


class RunLock:
    """`with RunLock(run_dir) as lock:` ... `if not lock.held: skip`. The run directory is
    created if needed. Not re-entrant: one RunLock per run and process."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = RunDir(run_dir).lock
        self.fd = None

    @property
    def held(self):
        return self.fd is not None

    def acquire(self):
        """Take the lock without waiting for a holder; True if this process now holds it."""
        if self.fd is not None:
            return True
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + CLAIM_RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record()) + '\n').encode(), 0)
        except OSError:
            pass  # the record is informative; a full disk must not cost the claim
        return True

    def release(self):
        if self.fd is not None:
            # Closing the descriptor releases the flock.
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def holder(run_dir):
    """The record of the process holding the run's lock, or None when nobody holds it.
    Read-only apart from an instant's shared lock; safe while the run trains."""
    path = RunDir(run_dir).lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                record = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
            except (OSError, ValueError):
                return {}
            return record if isinstance(record, dict) else {}  # damaged: held all the same
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(record):
    """'host pid 123 (Slurm job 45_6)' for a holder record."""
    if record is None:
        return ''
    text = f"{record.get('host', '?')} pid {record.get('pid', '?')}"
    job = record.get('slurm_array_job_id')
    if job:
        text += f" (Slurm job {job}_{record.get('slurm_array_task_id', '?')})"
    elif record.get('slurm_job_id'):
        text += f" (Slurm job {record['slurm_job_id']})"
    return text
