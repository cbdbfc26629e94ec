"""The per-run lock with real processes: one holder at a time, released by the OS on death."""
import os
import signal
import subprocess
import sys

from conftest import subprocess_env
from runner.queue.runlock import RunLock, holder

HOLD = """
import sys, time
from runner.queue.runlock import RunLock
lock = RunLock(sys.argv[1])
print('held' if lock.acquire() else 'taken', flush=True)
time.sleep(120)
"""


def _holder_process(run_dir):
    p = subprocess.Popen([sys.executable, '-c', HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                         env=subprocess_env())
    assert p.stdout.readline().strip() == 'held'
    return p


def test_a_second_process_cannot_take_a_held_run_and_takes_it_once_the_holder_dies(tmp_path):
    run_dir = tmp_path / 'run'
    p = _holder_process(run_dir)
    try:
        record = holder(str(run_dir))
        assert record is not None and record['pid'] == p.pid
        assert not RunLock(str(run_dir)).acquire()
    finally:
        p.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel releases the lock
        p.wait()
    assert holder(str(run_dir)) is None
    with RunLock(str(run_dir)) as lock:
        assert lock.held
        assert holder(str(run_dir))['pid'] == os.getpid()
    assert holder(str(run_dir)) is None


PROBE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print('probing', flush=True)
time.sleep(0.2)
"""


def test_a_probe_does_not_make_a_claimant_give_up(tmp_path):
    """status and --list probe the lock with a shared lock for an instant; a process claiming
    the run during that instant retries instead of skipping a run that nobody trains."""
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / '.lock').write_text('')
    probe = subprocess.Popen([sys.executable, '-c', PROBE, str(run_dir / '.lock')],
                             stdout=subprocess.PIPE, text=True)
    assert probe.stdout.readline().strip() == 'probing'
    with RunLock(str(run_dir)) as lock:
        assert lock.held
    probe.wait()


def test_no_lock_file_means_nobody_holds_the_run(tmp_path):
    assert holder(str(tmp_path / 'absent')) is None
