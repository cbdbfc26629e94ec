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
