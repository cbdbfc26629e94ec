#!/usr/bin/env python
"""Train the experiments in experiments.yaml (or the files given): see README.md or --help."""
import sys

from runner.cli import main

if __name__ == '__main__':
    sys.exit(main())
