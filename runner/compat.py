"""Every call the runner makes into TensorFlow's and Keras' private or internal APIs, in one
module, so that an upgrade that moves one of them breaks this file and its tests
(tests/test_compat.py) and nothing else. Each function says which public API it stands in
for and since which version the internal one has been there.

Nothing here imports TensorFlow or Keras at module import time.
"""


def onednn_enabled():
    """Whether TensorFlow in this process runs its oneDNN CPU kernels (None: cannot tell).
    TensorFlow has no public query; `_pywrap_util_port.IsMklEnabled` is what its own tests use."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def disable_op_determinism():
    """The inverse of tf.config.experimental.enable_op_determinism, which TensorFlow's public
    API lacks; its internal module has had it since the switch was added (TF 2.9)."""
    from tensorflow.python.framework import config as tf_config
    if getattr(tf_config, 'is_op_determinism_enabled', lambda: False)():
        tf_config.disable_op_determinism()


def op_determinism_enabled():
    """Whether enable_op_determinism is in force (internal since TF 2.9; False if absent)."""
    from tensorflow.python.framework import config as tf_config
    return bool(getattr(tf_config, 'is_op_determinism_enabled', lambda: False)())


def all_layers(model):
    """Every layer inside `model`, nested ones included, depth first, the model itself
    excluded. Keras 3's `model.layers` lists only the top level; `_flatten_layers` is what
    Keras itself walks (Keras 3.0 on)."""
    return list(model._flatten_layers(include_self=False))


def variable_index(optimizer, variable):
    """The index of `variable` in the optimizer's slot lists (momentums, velocities), as
    Keras 3's own optimizers find it in their update_step (Keras 3.0 on)."""
    return optimizer._get_variable_index(variable)


def saving_names(model):
    """The name under which Keras 3's `.weights.h5` files each of `model.layers`: made from
    the layer's class in snake case, numbered from the second of a class (`conv2d`,
    `conv2d_1`), never the layer's own name (keras/src/saving/saving_lib.py,
    _save_container_state and _get_unique_name, Keras 3.0 on)."""
    from keras.src.utils.naming import to_snake_case
    used, out = {}, []
    for layer in model.layers:
        name = to_snake_case(type(layer).__name__)
        if name in used:
            used[name] += 1
            name = f'{name}_{used[name]}'
        else:
            used[name] = 0
        out.append(name)
    return out


def saved_weight_shapes(path):
    """{layer name: [shape of each of its variables, in order]} of a Keras 3 `.weights.h5`
    file, read without building a model: Keras has no public reader of the file's layout
    (`layers/<name>/vars/<i>`, Keras 3.0 on)."""
    import h5py
    out = {}
    with h5py.File(path, 'r') as f:
        saved = f.get('layers')
        if saved is None:
            return out
        for name, group in saved.items():
            stored = group.get('vars') if hasattr(group, 'get') else None
            shapes, i = [], 0
            while stored is not None and str(i) in stored:
                shapes.append(tuple(stored[str(i)].shape))
                i += 1
            out[name] = shapes
    return out
