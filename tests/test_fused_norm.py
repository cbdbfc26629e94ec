"""fused_norm of the fast networks: the same function, gradients, statistics and weights as
Keras's BatchNormalization, through TensorFlow's fused kernel (a speed option: see
docs/benchmarks.md)."""
import keras
import numpy as np
import tensorflow as tf

from models.fast import FusedBatchNormalization, cifar_airbench94


def test_fused_norm_is_the_same_network():
    keras.utils.set_random_seed(0)
    plain = cifar_airbench94()
    fused = cifar_airbench94(fused_norm=True)
    assert [v.path for v in fused.weights] == [v.path for v in plain.weights]
    assert sum(isinstance(l, FusedBatchNormalization) for l in fused.layers) == 6
    fused.set_weights(plain.get_weights())
    x = tf.random.normal([16, 32, 32, 3], seed=1)
    out = {}
    for name, model in (('plain', plain), ('fused', fused)):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_sum(tf.sin(logits))
        grads = tape.gradient(loss, model.trainable_variables)
        out[name] = (logits.numpy(), [g.numpy() for g in grads],
                     [v.numpy() for v in model.non_trainable_weights if 'moving' in v.path])
    np.testing.assert_allclose(out['fused'][0], out['plain'][0], rtol=1e-3, atol=1e-4)
    for a, b in zip(out['fused'][1], out['plain'][1]):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    for a, b in zip(out['fused'][2], out['plain'][2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Inference takes Keras's own path, with the statistics gathered above.
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-6)
