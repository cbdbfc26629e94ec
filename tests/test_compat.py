"""runner.compat: each private TensorFlow or Keras call the runner depends on still does what
the runner needs with the versions installed. A Keras or TensorFlow upgrade that moves one
fails here, by name, rather than somewhere in a run."""
import platform

import keras
import numpy as np
import pytest
import tensorflow as tf

from runner import compat


def nested_model():
    inner = keras.Sequential([keras.layers.Dense(3, name='inner_dense'),
                              keras.layers.BatchNormalization(name='inner_bn')], name='block')
    x = keras.Input((4,))
    y = keras.layers.Dense(2, name='head')(inner(x))
    return keras.Model(x, y, name='outer')


def test_all_layers_reaches_layers_nested_in_a_block_and_excludes_the_model():
    names = [layer.name for layer in compat.all_layers(nested_model())]
    assert {'block', 'inner_dense', 'inner_bn', 'head'} <= set(names)
    assert 'outer' not in names
    # model.layers, the public API, stops at the top level: the reason for the private call
    assert 'inner_dense' not in [layer.name for layer in nested_model().layers]


def test_variable_index_finds_each_variable_slot_of_a_built_optimizer():
    variables = [keras.Variable(np.zeros(s, 'float32'), name=f'v{i}') for i, s in enumerate([(2,), (3, 3), (1,)])]
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(variables)
    assert [compat.variable_index(optimizer, v) for v in variables] == [0, 1, 2]
    # the index addresses the slot of the same shape
    assert [tuple(optimizer.momentums[compat.variable_index(optimizer, v)].shape) for v in variables] \
        == [(2,), (3, 3), (1,)]


def test_op_determinism_can_be_switched_off_again():
    tf.config.experimental.enable_op_determinism()
    try:
        assert compat.op_determinism_enabled()
    finally:
        compat.disable_op_determinism()
    assert not compat.op_determinism_enabled()


def test_saved_weight_shapes_reads_a_keras_weights_file_without_a_model(tmp_path):
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(3)(x)))
    path = str(tmp_path / 'w.weights.h5')
    model.save_weights(path)
    shapes = compat.saved_weight_shapes(path)
    # Keras 3 files a layer's variables under layers/<its saving name>/vars/<i>, the saving
    # name made from the class (dense, dense_1), whatever the layer's own name.
    assert shapes['dense'] == [(4, 3), (3,)] and shapes['dense_1'] == [(3, 2), (2,)]
    assert compat.saved_weight_shapes(str(tmp_path / 'w.weights.h5')) == shapes


def test_saving_names_find_each_layer_of_a_model_with_names_of_its_own(tmp_path):
    """A zoo model names its layers (stem_conv, ...); the file does not: each layer's variables
    are found under the name compat.saving_names gives it."""
    x = keras.Input((4,), name='pixels')
    y = keras.layers.Dense(2, name='head')(keras.layers.Dense(3, name='body')(x))
    model = keras.Model(x, y)
    path = str(tmp_path / 'named.weights.h5')
    model.save_weights(path)
    shapes = compat.saved_weight_shapes(path)
    assert compat.saving_names(model) == ['input_layer', 'dense', 'dense_1']
    assert [shapes[key] for key in compat.saving_names(model)] == \
        [[tuple(w.shape) for w in layer.weights] for layer in model.layers]


@pytest.mark.skipif(platform.machine().lower() not in ('x86_64', 'amd64'), reason='oneDNN is an x86 switch here')
def test_onednn_enabled_answers_on_x86():
    assert compat.onednn_enabled() in (True, False)


def test_a_warm_start_check_finds_the_layers_of_a_model_with_named_layers(tmp_path):
    """registry.weight_mismatches reads the file by saving name: a model whose layers have names
    of their own (every zoo model) fits its own weights, and another head is named."""
    from runner import registry

    def model(classes):
        x = keras.Input((4,), name='pixels')
        return keras.Model(x, keras.layers.Dense(classes, name='logits')(keras.layers.Dense(3, name='body')(x)))
    path = str(tmp_path / 'own.weights.h5')
    model(2).save_weights(path)
    assert registry.weight_mismatches(model(2), path) == []
    assert registry.weight_mismatches(model(5), path) == [('logits', 0, (3, 5), (3, 2))]
