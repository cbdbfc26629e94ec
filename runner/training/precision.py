"""Precision: the Keras mixed-precision policy a run trains in (train_parameters.precision).

- auto: mixed_float16 on GPUs (Micikevicius et al. 2018, "Mixed Precision Training": float16
  arithmetic with float32 master weights and loss scaling, keras.mixed_precision), float32
  elsewhere.
- fastest: as auto, except on a single machine whose CPU has bfloat16 instructions, where
  `probe_precisions` times a few SGD steps of the model in float32 and mixed_bfloat16 and the
  run trains in the faster (`choose_precision`); a resumed run keeps the choice. The rates
  measured are remembered under the logdir for this machine, model and batch
  (`remembered_rates`), so a second run of the same model starts without probing.
- float32, mixed_bfloat16, mixed_float16: as asked.

docs/techniques.md (Precision) has the measurements behind these rules.
"""
import datetime
import hashlib
import inspect
import json
import os
import statistics
import time

import keras
import tensorflow as tf

import runner
from runner import compat, rundir
from runner.registry import build_model, resolve_model_fn, resolved_model_parameters
from runner.training import distribute

# Under the logdir: one file per probe measured, named by its key (probe_key).
PROBES_DIR = '.precision-probes'
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


def probe_key(exp, info, batch):
    """What a probe's rates depend on: the machine (CPU, oneDNN, versions), the model (its
    function, resolved parameters and source file), the input and the batch."""
    fn = resolve_model_fn(exp)
    try:
        with open(inspect.getsourcefile(fn), 'rb') as f:
            source = hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        source = None
    record = {'cpu': distribute.cpu_description(), 'onednn': compat.onednn_enabled(),
              'versions': [runner.__version__, tf.__version__, keras.__version__],
              'model': [exp.module, exp.model, resolved_model_parameters(fn, exp.model_parameters), source],
              'input': [list(info.image_shape), info.num_classes], 'batch': batch}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]


def probe_path(exp, key):
    return os.path.join(exp.train_parameters.logdir, PROBES_DIR, key + '.json')


def remembered_rates(path):
    """The rates a probe with this key measured before ({policy: images/s}, 'measured'), or
    None: none, or a file that cannot be read as one (it is measured again)."""
    try:
        with open(path) as f:
            record = json.load(f)
        rates = {p: float(record['images_per_second'][p]) for p in ('float32', 'mixed_bfloat16')}
        return rates, str(record['measured'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_rates(path, rates):
    """Keep a probe's rates for the next run of the same model here; a logdir that cannot be
    written only means the next run probes again."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rundir.write_atomic(path, json.dumps({
            'images_per_second': rates, 'cpu': distribute.cpu_description(),
            'measured': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}) + '\n')
    except OSError:
        pass


def measured_rates(exp, info, batch, say=None):
    """{policy: images/s} for this machine, model and batch, and where they come from:
    remembered from an earlier probe, else measured now (and remembered)."""
    path = probe_path(exp, probe_key(exp, info, batch))
    found = remembered_rates(path)
    if found:
        return found[0], f'measured {found[1]}'
    if say:
        say(f'{exp.run_name}: precision fastest: timing float32 and mixed_bfloat16 steps of the model '
            f'on this CPU (once per machine, model and batch; remembered in {os.path.dirname(path)})')
    rates = probe_precisions(exp, info, batch)
    remember_rates(path, rates)
    return rates, 'measured now'


def choose_precision(exp, info, strategy, previous_precision=None, say=None):
    """The policy to train in, and for `precision: fastest` why: (policy, reason or None).
    Only a single machine probes; every worker of a multi-worker run must use the same
    policy and each would measure its own. `say(line)` tells of a probe before it starts."""
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
    rates, when = measured_rates(exp, info, batch, say)
    policy = faster_precision(rates)
    return policy, (f"float32 {rates['float32']:.0f}, mixed_bfloat16 {rates['mixed_bfloat16']:.0f} "
                    f"images/s on this CPU (batch {batch}, {when}); bfloat16 needs {BF16_MARGIN}x")
