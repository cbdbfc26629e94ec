"""Stop requests: SIGINT and SIGTERM become a flag the run acts on at a safe point (a step
boundary, an evaluation batch, between the steps of its setup); a second signal exits at once."""
import contextlib
import os
import signal
import sys
import threading






class StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop at the next step boundary (an
    evaluation under way is cut short); a second SIGINT exits at once.

    Python runs a signal's handler only between bytecodes of the main thread, and two signals
    that arrive while the main thread is inside one long TensorFlow call (a step, the first
    step's tracing) reach the handler as one. So every signal is also counted as it arrives,
    through signal.set_wakeup_fd, by a thread of its own: the second SIGINT exits at once,
    in the middle of a step, after `last_words` (which marks the summary interrupted)."""

    def __init__(self):
        self.signal = None
        self.last_words = None
        self.training = False  # in the steps (a stop checkpoints), not before them
        self._old = {}
        self._old_wakeup = None
        self._wakeup_write = None

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        if self._old:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            self._wakeup_write = write
            threading.Thread(target=self._count, args=(read,), daemon=True,
                             name='second-interrupt').start()
        return self

    def _count(self, read):
        interrupts = 0
        try:
            while True:
                data = os.read(read, 64)
                if not data:  # __exit__ closed the other end
                    return
                interrupts += data.count(signal.SIGINT)
                if interrupts >= 2:
                    self._exit_now()
        finally:
            os.close(read)

    def _exit_now(self):
        print('\nsecond interrupt: exiting now', file=sys.stderr, flush=True)
        if self.last_words:
            with contextlib.suppress(Exception):
                self.last_words()
        os._exit(130)

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            self._exit_now()
        self.signal = signum
        what = ('saving a checkpoint at the end of this step' if self.training
                else 'stopping before training starts (once the piece of setup under way, such '
                     'as loading the data, returns)')
        print(f'\n{signal.Signals(signum).name}: {what} (Ctrl-C again to exit at once)',
              file=sys.stderr, flush=True)

    def stop_before_training(self):
        """A safe point before the steps: there is no step to finish, so a stop asked for
        ends the run here, its last checkpoint standing (cli.train_one records it
        interrupted). Raised here, between two pieces of setup, rather than by the signal
        in the middle of TensorFlow building an input pipeline: that left the process
        crashed (SIGSEGV) or hung in one try out of ten."""
        if self.signal is not None:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._wakeup_write is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._wakeup_write)
            self._wakeup_write = None
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self):
        return self.signal is not None


class EvaluationStopped(Exception):
    """A stop was asked for during an evaluation: the evaluation is left unfinished."""
