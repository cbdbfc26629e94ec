"""The roofline of this machine for the runner's ConvNets: what the CPU can do, what a model
needs per image, and how much of it the runner's train step gets.

    python benchmarks/roofline.py                       # airbench94 and ResNet-20, f32 and bf16
    python benchmarks/roofline.py --models cifar_airbench94 --steps 4
    python benchmarks/roofline.py --models cifar_airbench94 --matmul 128 --batch 4 --repeats 1 \
        --steps 2 --min-seconds 0                        # a check that it works (as CI runs it)

1. Peak: a large matrix multiply (tf.linalg.matmul, --matmul cubed), and the forward and
   backward convolutions of every conv layer of each model at its training batch size
   (cifar_airbench94 1024 as airbench, ResNet-20 128 as He et al.), in float32 and
   bfloat16, through TensorFlow's oneDNN kernels as the runner switches them on
   (runner/__init__.py). The best of these rates is the attainable peak.
2. FLOPs per training image, from the layer shapes: a conv or dense layer of M
   multiply-adds per image costs 2M FLOPs forward, 2M for the gradient of its input (not
   for the first layer, whose input is the image) and 2M for the gradient of its kernel (not
   for a frozen one: airbench's whitening layer); batch norm, pooling and activations are
   left out (they are memory-bound and a few per cent of the FLOPs). TensorFlow's own cost
   analysis of the forward graph (tf.compat.v1.profiler float_operation) is printed
   beside it as a check.
3. The floor of a step: each conv layer's training FLOPs at the rate measured for its own
   shapes, summed: the time the step would take if nothing but its convolutions ran, at the
   speed oneDNN runs them in isolation.
4. The runner's step (runner.training.session.Trainer on random CIFAR-shaped data, the pipeline of
   train_throughput.py): images/s, achieved FLOP/s, and that as a fraction of the peak and of
   the floor. And: minutes for 9.9 epochs of CIFAR-10 (airbench94's budget) and 8 epochs
   (airbench94_muon's) at the peak, at the floor and at the measured step.

A benchmark, not a test: it asserts nothing. The machine's load (os.getloadavg) is printed
with the figures; on a shared machine the absolute rates are noisy.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# airbench94's budget (Jordan 2024) and airbench94_muon's, in epochs of the 50,000 images.
CIFAR_TRAIN_IMAGES = 50000
EPOCH_BUDGETS = {'airbench94 (9.9 epochs)': 9.9, 'airbench94_muon (8 epochs)': 8.0}
# Training batch sizes of the recipes: airbench94 1024 (experiments/cifar10_fast.yaml),
# ResNet-20 128 (He et al. 2016, experiments/he2015_resnet_cifar10.yaml).
DEFAULT_BATCH = {'cifar_airbench94': 1024, 'cifar_resnet20': 128}
PRECISIONS = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16'}


def best_seconds(fn, repeats, min_seconds=0.5):
    """Median over `repeats` timings of fn() (each a loop of at least min_seconds)."""
    fn()  # trace and warm up
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    loops = max(1, int(min_seconds / max(once, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops)
    return statistics.median(times)


def layer_costs(model):
    """[(layer, kind, shapes, macs per image, trains kernel, first layer)] of every conv and
    dense layer of a built Keras model, in order."""
    import keras
    out = []
    inputs = {id(t) for t in model.inputs}
    for layer in model.layers:
        kernel = getattr(layer, 'kernel', None)
        if kernel is None or len(kernel.shape) not in (2, 4):
            continue
        out_shape = tuple(layer.output.shape[1:])
        in_shape = tuple(layer.input.shape[1:])
        if len(kernel.shape) == 4:
            kh, kw, cin, cout = kernel.shape
            macs = out_shape[0] * out_shape[1] * cout * kh * kw * cin
            strides = getattr(layer, 'strides', (1, 1))
            padding = getattr(layer, 'padding', 'valid')
            shapes = (in_shape, tuple(kernel.shape), tuple(strides), padding.upper())
        else:
            macs = kernel.shape[0] * kernel.shape[1]
            shapes = (in_shape, tuple(kernel.shape), None, None)
        first = id(layer.input) in inputs
        out.append((layer.name, 'conv' if len(kernel.shape) == 4 else 'dense', shapes, macs,
                    bool(kernel.trainable), first))
    del keras
    return out


def training_flops(costs):
    """FLOPs per training image: forward, input gradient (not of the first layer), kernel
    gradient (not of a frozen kernel)."""
    return sum(2 * macs * (1 + (not first) + trains) for _, _, _, macs, trains, first in costs)


def profiler_forward_flops(model):
    """TensorFlow's cost analysis of the forward pass of one image (None if unavailable)."""
    import tensorflow as tf
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
        spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32)
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        frozen = convert_variables_to_constants_v2(concrete)
        opts = tf.compat.v1.profiler.ProfileOptionBuilder(
            tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
        return tf.compat.v1.profiler.profile(graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(),
                                             cmd='op', options=opts).total_float_ops
    except Exception as e:  # a benchmark: say why and go on
        print(f'  (TensorFlow cost analysis unavailable: {type(e).__name__}: {e})')
        return None


def matmul_rate(n, dtype, repeats, min_seconds=0.5):
    import tensorflow as tf
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    # One element out: the product is computed whole, without copying 4096^2 numbers back.
    f = tf.function(lambda: tf.linalg.matmul(a, b)[0, 0])
    seconds = best_seconds(lambda: f().numpy(), repeats, min_seconds)
    return 2 * n ** 3 / seconds


def conv_rates(shapes, batch, dtype, repeats, first, trains, min_seconds=0.5):
    """(forward FLOP/s, forward+backward FLOP/s, seconds of forward+backward) of one conv
    layer's shapes at this batch; the backward leaves out what the step leaves out."""
    import tensorflow as tf
    in_shape, k_shape, strides, padding = shapes
    x = tf.cast(tf.random.normal([batch, *in_shape]), dtype)
    w = tf.Variable(tf.cast(tf.random.normal(k_shape) * 0.05, dtype))

    @tf.function
    def forward():
        return tf.nn.conv2d(x, w, strides, padding)[0, 0, 0, 0]

    @tf.function
    def train():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, w, strides, padding)
        sources = ([] if first else [x]) + ([w] if trains else [])
        grads = tape.gradient(y, sources, output_gradients=tf.ones_like(y)) if sources else []
        return tf.add_n([tf.cast(t[(0,) * len(t.shape)], tf.float32) for t in [y] + grads])

    kh, kw, cin, cout = k_shape
    out = tf.nn.conv2d(x[:1], w, strides, padding)
    macs = batch * out.shape[1] * out.shape[2] * cout * kh * kw * cin
    t_fwd = best_seconds(lambda: forward().numpy(), repeats, min_seconds)
    t_train = best_seconds(lambda: train().numpy(), repeats, min_seconds)
    return 2 * macs / t_fwd, 2 * macs * (1 + (not first) + trains) / t_train, t_train


def step_rate(model_name, batch, precision, steps, profile_dir=None, model_parameters=None):
    """Images/s of the runner's train step (Trainer) on random data, median of `steps`;
    with profile_dir, those steps run under the TensorFlow profiler, its trace written there."""
    import keras
    import tensorflow as tf
    from runner.data import info as data_info, loader as data_loader, splits as data_splits
    from runner.training import precision as precision_lib
    from runner.config.expand import experiment_from_dict
    from runner.training.trainer import Trainer
    exp = experiment_from_dict({'model': model_name, 'model_parameters': model_parameters or {},
                                'train_parameters': {
        'batch_size': batch, 'precision': precision, 'lr_values': [0.01], 'lr_boundaries': [10 ** 6]}})
    info = data_info.DataInfo('random', (32, 32, 3), 10)
    train = data_splits.synthetic(info, max(4 * batch, 5000), seed=0)
    data = data_loader.Data(info, train, train, train, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    precision_lib.set_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        trainer = Trainer(exp, data, tf.distribute.get_strategy(), precision)
        trainer.start_input()
        for _ in range(2):  # trace, warm up
            trainer.train_step(trainer.iterator)
        trainer.step
        times = []
        if profile_dir:
            tf.profiler.experimental.start(profile_dir)
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(trainer.iterator)
            trainer.step  # wait for the step
            times.append(time.perf_counter() - start)
        if profile_dir:
            tf.profiler.experimental.stop()
        return batch / statistics.median(times)
    finally:
        precision_lib.set_policy('float32')
        keras.backend.clear_session()


def top_ops(profile_dir, n):
    """The n TensorFlow op types with the most self time in a profile (tensorboard-plugin-
    profile's framework_op_stats, as its TensorBoard page shows them): [(type, share, ms)]."""
    import glob
    import json
    from xprof.convert import raw_to_tool_data
    paths = sorted(glob.glob(os.path.join(profile_dir, 'plugins', 'profile', '*', '*.xplane.pb')))
    data, _ = raw_to_tool_data.xspace_to_tool_data(paths[-1:], 'framework_op_stats', {})
    tables = json.loads(data)
    table = tables[0] if isinstance(tables, list) else tables
    cols = [c['id'] for c in table['cols']]
    type_col, self_col = cols.index('type'), cols.index('total_self_time')
    by_type = {}
    for r in table['rows']:
        kind, us = r['c'][type_col]['v'], float(r['c'][self_col]['v'] or 0)
        if kind != 'IDLE':  # the profiled threads waiting: not an op
            by_type[kind] = by_type.get(kind, 0.0) + us
    total = sum(by_type.values())
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])[:n]
    return [(t, us / total, us / 1000) for t, us in ranked]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='cifar_airbench94,cifar_resnet20')
    p.add_argument('--precisions', default='float32,bfloat16')
    p.add_argument('--matmul', type=int, default=4096, help='size of the square matmul')
    p.add_argument('--repeats', type=int, default=3, help='timings per kernel (median)')
    p.add_argument('--min-seconds', type=float, default=0.5,
                   help='each timing loops a kernel for at least this long (default 0.5; 0: once, '
                        'a check that the script works)')
    p.add_argument('--steps', type=int, default=5, help='timed runner steps per model and precision (0: none)')
    p.add_argument('--batch', type=int, default=None, help='batch size for every model (default: its recipe\'s)')
    p.add_argument('--model-parameter', metavar='KEY=VALUE', action='append', default=[],
                   help='a model parameter of the runner step (YAML value), e.g. fused_norm=true')
    p.add_argument('--profile', metavar='LOGDIR',
                   help='instead: profile --steps runner steps of the first model in the first '
                        'precision into LOGDIR (tensorboard --logdir LOGDIR, Profile tab) and print '
                        'the op types that take the time')
    a = p.parse_args()
    from runner.config.expand import parse_overrides
    model_parameters = dict(parse_overrides(a.model_parameter))
    if a.profile:
        name, prec = a.models.split(',')[0], a.precisions.split(',')[0]
        batch = a.batch or DEFAULT_BATCH.get(name, 128)
        rate = step_rate(name, batch, PRECISIONS[prec], a.steps, profile_dir=a.profile,
                         model_parameters=model_parameters)
        print(f'{name}, batch {batch}, {prec}: {rate:.1f} images/s over {a.steps} profiled steps; '
              f'load average {os.getloadavg()[0]:.2f}')
        for op, share, ms in top_ops(a.profile, 15):
            print(f'  {op:32s} {share:6.1%} {ms:10.1f} ms')
        return

    import runner.compat
    from runner.training import distribute
    from runner.config.expand import experiment_from_dict
    from runner.registry import build_model
    import keras
    import tensorflow as tf

    precisions = a.precisions.split(',')
    dtypes = {'float32': tf.float32, 'bfloat16': tf.bfloat16}
    print(f'{distribute.cpu_description()}; TensorFlow {tf.__version__}; oneDNN kernels '
          f'{"on" if runner.compat.onednn_enabled() else "off"}; intra-op threads '
          f'{tf.config.threading.get_intra_op_parallelism_threads() or "default"}; '
          f'load average {os.getloadavg()[0]:.2f} at start', flush=True)

    peak = {}
    for prec in precisions:
        rate = matmul_rate(a.matmul, dtypes[prec], a.repeats, a.min_seconds)
        peak[prec] = rate
        print(f'matmul {a.matmul}^3 {prec:9s} {rate / 1e9:7.1f} GFLOP/s', flush=True)

    summary = []
    for name in a.models.split(','):
        batch = a.batch or DEFAULT_BATCH.get(name, 128)
        model = build_model(experiment_from_dict({'model': name}), (32, 32, 3), 10)
        costs = layer_costs(model)
        flops = training_flops(costs)
        forward = sum(2 * c[3] for c in costs)
        tf_forward = profiler_forward_flops(model)
        check = f'; TensorFlow cost analysis: {tf_forward / 1e6:.1f}' if tf_forward else ''
        print(f'\n{name}, batch {batch}: {forward / 1e6:.1f} MFLOP forward per image (layer shapes{check}), '
              f'{flops / 1e6:.1f} MFLOP per training image', flush=True)
        keras.backend.clear_session()
        for prec in precisions:
            floor_seconds = 0.0
            print(f'  {prec}: layer, shapes, forward GFLOP/s, training (fwd+bwd) GFLOP/s')
            for lname, kind, shapes, macs, trains, first in costs:
                if kind != 'conv':
                    continue
                fwd, train, seconds = conv_rates(shapes, batch, dtypes[prec], a.repeats, first, trains,
                                                 a.min_seconds)
                floor_seconds += seconds
                peak[prec] = max(peak[prec], fwd, train)
                print(f'    {lname:14s} {str(shapes[0]):15s} {str(shapes[1]):18s} {fwd / 1e9:7.1f} '
                      f'{train / 1e9:7.1f}', flush=True)
            floor_rate = batch / floor_seconds
            measured = (step_rate(name, batch, PRECISIONS[prec], a.steps, model_parameters=model_parameters)
                        if a.steps else None)
            summary.append((name, batch, prec, flops, floor_rate, measured))

    print(f'\nattainable peak (best of matmul and conv kernels): '
          + ', '.join(f'{p} {r / 1e9:.1f} GFLOP/s' for p, r in peak.items()))
    print(f'{"model":18s} {"prec":9s} {"MFLOP/img":>9s} {"floor img/s":>11s} {"step img/s":>10s} '
          f'{"step GFLOP/s":>12s} {"of peak":>7s} {"of floor":>8s}')
    for name, batch, prec, flops, floor_rate, measured in summary:
        if measured:
            achieved = measured * flops
            tail = f'{measured:10.1f} {achieved / 1e9:12.1f} {achieved / peak[prec]:7.0%} {measured / floor_rate:8.0%}'
        else:
            tail = ''
        print(f'{name:18s} {prec:9s} {flops / 1e6:9.1f} {floor_rate:11.1f} {tail}')
    for name, batch, prec, flops, floor_rate, measured in summary:
        if name != 'cifar_airbench94':
            continue
        for label, epochs in EPOCH_BUDGETS.items():
            images = epochs * CIFAR_TRAIN_IMAGES
            at = [f'peak {images * flops / peak[prec] / 60:.1f}', f'floor {images / floor_rate / 60:.1f}']
            if measured:
                at.append(f'step {images / measured / 60:.1f}')
            print(f'{label} of cifar_airbench94 in {prec}: minutes of training at the ' + ', '.join(at)
                  + f' ({images * flops / 1e15:.2f} PFLOP)')
    print(f'load average {os.getloadavg()[0]:.2f} at the end')


if __name__ == '__main__':
    main()
