"""Precision: the Keras mixed-precision policy a run trains in (train_parameters.precision).

- auto: mixed_float16 on GPUs (Micikevicius et al. 2018, "Mixed Precision Training": float16
  arithmetic with float32 master weights and loss scaling, keras.mixed_precision), float32
  elsewhere.
- fastest: as auto, except on a single machine whose CPU has bfloat16 instructions, where
  `probe_precisions` times a few SGD steps of the model in float32 and mixed_bfloat16 and the
  run trains in the faster (`choose_precision`); a resumed run keeps the choice.
- float32, mixed_bfloat16, mixed_float16: as asked.

docs/techniques.md (Precision) has the measurements behind these rules.
"""
import statistics
import time

import keras
import tensorflow as tf

from runner.training import distribute
from runner.registry import build_model

# mixed_bfloat16 only when clearly faster: float32 is the more exact of the two, and a
# probe of a few steps on a shared machine is noisy by several per cent.
BF16_MARGIN = 1.1


def resolve_precision(precision):
    """The Keras dtype policy: 'auto' is mixed_float16 on GPUs and float32 elsewhere;
    'fastest' is that too until the training loop has measured (choose_precision).

    mixed_bfloat16 is not chosen automatically on CPUs: for the CIFAR ResNets it was measured
    at half float32's speed on one Xeon with AVX512-BF16 and 1.2-1.4 times on an EPYC with
    it (docs/benchmarks.md, Precision on different CPUs). It kept accuracy where checked (cifar10_fast_90: 88.21%
    in both precisions), so recipes may ask for it, or for 'fastest', which measures.
    """
    if precision in ('auto', 'fastest'):
        return 'mixed_float16' if tf.config.list_logical_devices('GPU') else 'float32'
    return precision


def faster_precision(images_per_second, margin=BF16_MARGIN):
    """The policy to train in from measured {'float32': rate, 'mixed_bfloat16': rate}."""
    if images_per_second['mixed_bfloat16'] / images_per_second['float32'] >= margin:
        return 'mixed_bfloat16'
    return 'float32'


def set_policy(policy):
    keras.mixed_precision.set_global_policy(policy)


def probe_precisions(exp, info, batch_size, steps=3):
    """Images per second of a plain SGD step of the experiment's model on random images,
    in float32 and in mixed_bfloat16: {policy: rate}. One step traces and warms up, the
    median of `steps` timed ones counts."""
    x = tf.random.uniform((batch_size, *info.image_shape), -1.0, 1.0, seed=0)
    y = tf.random.uniform((batch_size,), 0, info.num_classes, tf.int32, seed=0)
    try:
        # One policy at a time, each model freed when its measurement returns.
        return {policy: _step_rate(exp, info, policy, x, y, steps)
                for policy in ('float32', 'mixed_bfloat16')}
    finally:
        set_policy('float32')


def _step_rate(exp, info, policy, x, y, steps):
    """Images per second of the SGD step in `policy`: the median of `steps` timed steps
    after one that traces and warms up."""
    set_policy(policy)
    model = build_model(exp, info.image_shape, info.num_classes)
    optimizer = keras.optimizers.SGD(0.0, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    float(step())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step())
        times.append(time.perf_counter() - start)
    return int(x.shape[0]) / statistics.median(times)


def choose_precision(exp, info, strategy, previous_precision=None):
    """The policy to train in, and for `precision: fastest` why: (policy, reason or None).
    Only a single machine probes; every worker of a multi-worker run must use the same
    policy and each would measure its own."""
    tp = exp.train_parameters
    policy = resolve_precision(tp.precision)
    if tp.precision == 'auto' and previous_precision and previous_precision != policy:
        # Resumed on other hardware (a GPU then, none now, or the reverse): the checkpoint
        # holds the optimizer of the precision it started in (a LossScaleOptimizer's
        # variables for mixed_float16), and a run keeps its arithmetic anyway.
        return previous_precision, 'chosen when the run started'
    if tp.precision != 'fastest':
        return policy, None
    if previous_precision:
        return previous_precision, 'chosen when the run started'
    if tf.config.list_logical_devices('GPU'):
        return policy, 'a GPU'
    if distribute.is_multi_worker(tp.distribution):
        return policy, 'several workers, which could measure differently'
    if not distribute.cpu_has_bfloat16():
        return policy, 'this CPU has no bfloat16 instructions'
    batch = min(tp.batch_size // strategy.num_replicas_in_sync, 256)
    rates = probe_precisions(exp, info, batch)
    policy = faster_precision(rates)
    return policy, (f"float32 {rates['float32']:.0f}, mixed_bfloat16 {rates['mixed_bfloat16']:.0f} "
                    f"images/s on this CPU (batch {batch}); bfloat16 needs {BF16_MARGIN}x")
