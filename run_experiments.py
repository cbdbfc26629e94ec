#!/usr/bin/env python
"""Train the experiments in experiments.yaml (or the files given): see README.md or --help."""
import signal
import sys

# Before the imports (TensorFlow's take seconds): a Ctrl-C then ends the command too, also
# in a process that inherited SIGINT ignored (runner.cli.main says why).
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    from runner.cli import main
except KeyboardInterrupt:
    print('\ninterrupted', file=sys.stderr)
    sys.exit(1)

if __name__ == '__main__':
    from runner.common import end_process
    end_process(main())
