"""The op-determinism switch, per run (train_parameters.deterministic)."""
import tensorflow as tf

from runner import compat


def set_op_determinism(on):
    """Per run, both ways: it is a process-wide switch, and the previous experiment's
    `deterministic: true` must not carry over into this one."""
    if on:
        tf.config.experimental.enable_op_determinism()
    else:
        compat.disable_op_determinism()
