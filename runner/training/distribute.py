"""Devices and distribution strategies, all through tf.distribute (the precision policy is
runner.training.precision).

- none: the default strategy (one device).
- mirrored: tf.distribute.MirroredStrategy over every local GPU, or over every logical
  CPU device when there is no GPU (tests split the CPU into two logical devices).
- multi_worker: tf.distribute.MultiWorkerMirroredStrategy, cluster from TF_CONFIG.
  Every worker runs the same command; the chief (worker 0) writes the run directory,
  the others write their checkpoint copies to a scratch directory (all workers must take
  part in a save) and delete it at the end.
- tpu: tf.distribute.TPUStrategy on the TPU named by TPU_NAME (or the local one).

`batch_size` is the global batch: each of N replicas computes on batch_size / N images
and gradients are summed, so the learning rate that fits a batch size does not change
with the number of devices. To use a larger global batch, scale the learning rate with it
(Goyal et al. 2017: linear scaling with warm-up).

TensorFlow is imported inside the functions, not here: quiet_tensorflow is what imports it
(quietly), and the light commands that read TF_CONFIG need no TensorFlow at all.
"""
import json
import os
import platform
import sys
import tempfile


def tf_config():
    try:
        return json.loads(os.environ.get('TF_CONFIG', '') or '{}')
    except ValueError:
        return {}


def cluster_workers():
    cluster = tf_config().get('cluster', {})
    return len(cluster.get('worker', [])) + len(cluster.get('chief', []))


def is_multi_worker(kind):
    """Whether `distribution: kind` means MultiWorkerMirroredStrategy on this machine."""
    return kind == 'multi_worker' or (kind == 'auto' and cluster_workers() > 1)


def _chief(task_type, task_id, cluster):
    return task_type is None or task_type == 'chief' or (
        task_type == 'worker' and task_id == 0 and 'chief' not in cluster)


def task_is_chief():
    """Is this process the chief of the TF_CONFIG cluster (true without one)? The same rule
    as is_chief, for code that runs without a strategy (recording a failed run)."""
    task = tf_config().get('task', {})
    return _chief(task.get('type'), int(task.get('index', 0)), tf_config().get('cluster', {}))


def task_id():
    """This process's TF_CONFIG task, e.g. worker1 ('chief' without a cluster)."""
    task = tf_config().get('task', {})
    return f"{task['type']}{task.get('index', 0)}" if task.get('type') else 'chief'


def quiet_tensorflow(experiments=()):
    """Import TensorFlow without the screenful of C++ start-up notices it prints to stderr
    (CUDA probing on a CPU machine, oneDNN notes). What it prints is shown if the import fails.

    A multi-worker strategy must exist before TensorFlow runs anything, so the strategies
    the experiments need are created here too (start_collectives)."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    if 'tensorflow' in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+') as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
            if not start_collectives(experiments):
                tf.config.list_physical_devices()  # the CUDA probe happens here, not at import
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    import absl.logging
    absl.logging.set_verbosity(absl.logging.ERROR)


def start_collectives(experiments):
    """Create the multi-worker strategy of any experiment that needs one (true if one did):
    it must exist before TensorFlow runs anything (validation builds models)."""
    started = False
    for exp in experiments:
        if is_multi_worker(exp.train_parameters.distribution):
            strategy_for(exp.train_parameters.distribution)
            started = True
    return started


def make_strategy(kind):
    # Listing logical devices starts TensorFlow's runtime, after which a multi-worker
    # cluster can no longer be configured: decide on multi_worker first.
    import tensorflow as tf
    if is_multi_worker(kind):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices('GPU')
    if kind == 'auto':
        kind = 'mirrored' if len(gpus) > 1 else 'none'
    if kind == 'none':
        return tf.distribute.get_strategy()
    if kind == 'mirrored':
        devices = [d.name for d in (gpus or tf.config.list_logical_devices('CPU'))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == 'tpu':
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get('TPU_NAME', ''))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f'unknown distribution {kind!r}')


_STRATEGIES = {}


def strategy_for(kind):
    """The strategy of `distribution: kind`, one per kind and process: a process can set up a
    multi-worker cluster only once, so the experiments of a file share it."""
    if kind not in _STRATEGIES:
        _STRATEGIES[kind] = make_strategy(kind)
    return _STRATEGIES[kind]


def is_chief(strategy):
    """Only the chief writes the run directory; every worker still takes part in saves."""
    import tensorflow as tf
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return _chief(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def _cpuinfo(cpuinfo='/proc/cpuinfo'):
    """(model name, set of flags) of the first CPU as Linux reports them; ('', set()) where
    that cannot be read."""
    model, flags = '', set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if key == 'model name' and not model:
                    model = value.strip()
                elif key == 'flags' and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_has_bfloat16(cpuinfo='/proc/cpuinfo'):
    """Whether the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16), as Linux reports
    its flags; False where that cannot be read."""
    return bool(_cpuinfo(cpuinfo)[1] & {'avx512_bf16', 'amx_bf16'})


# The instruction sets that decide a CPU's training speed, widest first: one model name
# (AMD EPYC, say) covers chips with and without them, 2.6 times apart for ResNet-20.
_VECTOR_ISAS = (('amx_bf16', 'AMX'), ('avx512_bf16', 'AVX512-BF16'), ('avx512_vnni', 'AVX512-VNNI'),
                ('avx512f', 'AVX512'), ('avx2', 'AVX2'))


def cpu_description(cpuinfo='/proc/cpuinfo'):
    """'AMD EPYC (AVX2), 2 cores': the CPU model, its widest vector instructions and the
    cores this process may use, for the records that carry a speed."""
    model, flags = _cpuinfo(cpuinfo)
    model = model or platform.processor() or 'unknown CPU'
    isa = next((name for flag, name in _VECTOR_ISAS if flag in flags), None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return f'{model}{f" ({isa})" if isa else ""}, {cores} cores'
