"""Small models for the runner's tests: a user's own module, as `module: tiny_models`."""
import keras


def tiny_cnn(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, width=8, dropout=0.0):
    """A two-conv network that trains in seconds on the CPU."""
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, padding='same', use_bias=False, kernel_regularizer=reg)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(2 * width, 3, strides=2, padding='same', kernel_regularizer=reg)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name='tiny_cnn')


def tiny_resnet_spelling(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, width=8,
                         shortcut_type='B'):
    """tiny_cnn under the argument name of this project's ResNets (shortcut_type), which the
    seed runner spelt shortcut_mode; the argument changes nothing here."""
    return tiny_cnn(input_shape, num_classes, weight_decay, width)


def no_decay_cnn(input_shape=(32, 32, 3), num_classes=10):
    """A model without a weight_decay argument."""
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def decayed_linear(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-2):
    """Weight decay and no batch norm (whose statistics are per replica): a model that
    trains identically over one device or two."""
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    reg = keras.regularizers.L2(weight_decay / 2)
    return keras.Model(inputs, keras.layers.Dense(num_classes, kernel_regularizer=reg)(x))


def broken_cnn(input_shape=(32, 32, 3), num_classes=10):
    """Raises inside the model function, like a bug in a user's model."""
    raise ZeroDivisionError('a bug in the model')


class _Pause(keras.layers.Layer):
    """Identity that takes `seconds` of wall time at each training call (and none in
    evaluation): a run whose length in time is known whatever the machine's speed."""

    def __init__(self, seconds, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def call(self, x, training=None):
        if not training:
            return x
        import time
        import numpy as np
        import tensorflow as tf
        done = tf.numpy_function(lambda: np.float32(time.sleep(self.seconds) or 0), [], tf.float32)
        with tf.control_dependencies([done]):
            return tf.identity(x)


def paced_cnn(input_shape=(32, 32, 3), num_classes=10, weight_decay=1e-4, dropout=0.0,
              step_seconds=0.05):
    """tiny_cnn that takes at least `step_seconds` per training step; its numbers are
    tiny_cnn's (the pause touches no value)."""
    inputs = keras.Input(input_shape)
    x = _Pause(step_seconds)(inputs)
    return keras.Model(inputs, tiny_cnn(input_shape, num_classes, weight_decay, dropout=dropout)(x))
