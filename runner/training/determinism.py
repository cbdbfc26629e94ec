"""The op-determinism switch, per run (train_parameters.deterministic)."""

import tensorflow as tf



def _disable_op_determinism():
    """The inverse of tf.config.experimental.enable_op_determinism, which TensorFlow's public
    API lacks; its internal module has had it since the switch was added (TF 2.9)."""
    from tensorflow.python.framework import config as tf_config
    if getattr(tf_config, 'is_op_determinism_enabled', lambda: False)():
        tf_config.disable_op_determinism()


def set_op_determinism(on):
    """Per run, both ways: it is a process-wide switch, and the previous experiment's
    `deterministic: true` must not carry over into this one."""
    if on:
        tf.config.experimental.enable_op_determinism()
    else:
        _disable_op_determinism()
