"""Images per second of the runner's train step beside keras.Model.fit and a bare
hand-written tf.function loop, on the same model and the same batches, in one process.

    python benchmarks/train_throughput.py --model cifar_resnet20 --batch 128 --steps 60
    python benchmarks/train_throughput.py --model cifar_resnet20 --precision mixed_bfloat16
    python benchmarks/train_throughput.py --model cifar_airbench94 --batch 1024 \
        --precision mixed_bfloat16 --variant fused_norm=true --skip fit,pipeline

Prints a table (images/s, ratio to the bare loop), the input pipeline alone, and the peak
resident memory of the process (all contenders together; --skip the others for one's
own). Data are random CIFAR-shaped images, so no dataset is needed; the pipeline is the
runner's own (gather, normalise, flip, pad-crop). A benchmark, not a
test: it asserts nothing. Run it on an otherwise idle machine.
"""
import argparse
import os
import resource
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='cifar_resnet20')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--steps', type=int, default=50, help='timed steps per contender')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--rounds', type=int, default=5, help='contenders take turns this many times')
    p.add_argument('--precision', default='float32',
                   choices=['float32', 'mixed_bfloat16', 'mixed_float16'])
    p.add_argument('--jit', action='store_true', help='XLA-compile the runner step')
    p.add_argument('--skip', default='', help='comma-separated: runner,fit,bare,pipeline')
    p.add_argument('--variant', metavar='KEY=VALUE', action='append', default=[],
                   help='also time the runner step of the model with these model parameters '
                        '(YAML values), in the same rounds, e.g. fused_norm=true')
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(',')))

    # The runner first: it sets TensorFlow's CPU-kernel switch before TensorFlow loads, so
    # every contender runs on the kernels a training run gets.
    import runner.compat
    from runner.data import (info as data_info,
                             loader as data_loader,
                             pipeline as data_pipeline,
                             splits as data_splits)
    from runner.training import precision
    from runner.config.expand import experiment_from_dict
    from runner.registry import build_model
    from runner.training.trainer import Trainer
    import keras
    import tensorflow as tf

    from runner.config.expand import parse_overrides

    def experiment(model_parameters=None):
        return experiment_from_dict({'model': a.model, 'model_parameters': model_parameters or {},
                                     'train_parameters': {
            'batch_size': a.batch, 'precision': a.precision, 'jit_compile': a.jit,
            'lr_values': [0.01], 'lr_boundaries': [10 ** 6]}})
    exp = experiment()
    info = data_info.DataInfo('random', (32, 32, 3), 10)
    train = data_splits.synthetic(info, 50000 // 4, seed=0)
    data = data_loader.Data(info, train, train, train, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    print(f'{a.model}, batch {a.batch}, {a.precision}{", XLA" if a.jit else ""}, '
          f'{a.steps} timed steps after {a.warmup} warm-up; {os.cpu_count()} CPU cores; '
          f'oneDNN kernels {"on" if runner.compat.onednn_enabled() else "off"}', flush=True)

    def pipeline():
        return data_pipeline.train_dataset(train, a.batch, 0, data.mean, data.std)

    # Each contender is a function that runs k steps; they take turns in rounds and the
    # median round is reported, so a change in background load hits all of them alike.
    contenders = {}
    if 'pipeline' not in skip:
        it_p = iter(pipeline())

        def run_pipeline(k):
            for _ in range(k * 4):
                next(it_p)
        contenders['input pipeline alone'] = (run_pipeline, 4)

    precision.set_policy(a.precision)
    if 'runner' not in skip:
        keras.utils.set_random_seed(0)
        trainer = Trainer(exp, data, tf.distribute.get_strategy(), a.precision)
        trainer.start_input()

        def run_runner(k):
            for _ in range(k):
                trainer.train_step(trainer.iterator)
            trainer.step  # wait for the last step
        contenders['runner train_step'] = (run_runner, 1)

    if a.variant:
        variant = dict(parse_overrides(a.variant))
        keras.utils.set_random_seed(0)
        v_trainer = Trainer(experiment(variant), data, tf.distribute.get_strategy(), a.precision)
        v_trainer.start_input()

        def run_variant(k):
            for _ in range(k):
                v_trainer.train_step(v_trainer.iterator)
            v_trainer.step
        contenders['runner, ' + ','.join(a.variant)] = (run_variant, 1)

    if 'bare' not in skip:
        keras.utils.set_random_seed(0)
        model = build_model(exp, info.image_shape, info.num_classes)
        opt = keras.optimizers.SGD(0.01, momentum=0.9)
        if a.precision == 'mixed_float16':
            opt = keras.optimizers.LossScaleOptimizer(opt)

        @tf.function
        def bare_step(x, y):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
                loss += tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        it_b = iter(pipeline())

        def run_bare(k):
            for _ in range(k):
                loss = bare_step(*next(it_b))
            float(loss)
        contenders['bare tf.function loop'] = (run_bare, 1)

    if 'fit' not in skip:
        keras.utils.set_random_seed(0)
        fit_model = build_model(exp, info.image_shape, info.num_classes)
        fit_model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=['accuracy'], jit_compile=a.jit)
        ds_fit = pipeline()

        def run_fit(k):
            fit_model.fit(ds_fit, steps_per_epoch=k, epochs=1, verbose=0)
        contenders['keras Model.fit'] = (run_fit, 1)

    for fn, _ in contenders.values():  # trace and warm up
        fn(a.warmup)
    per_round = max(a.steps // a.rounds, 1)
    times = {name: [] for name in contenders}
    for _ in range(a.rounds):
        for name, (fn, _) in contenders.items():
            start = time.perf_counter()
            fn(per_round)
            times[name].append(time.perf_counter() - start)
    # seconds per `steps` steps, from the median round
    results = {name: statistics.median(t) / mult * a.steps / per_round
               for name, t in times.items() for mult in [contenders[name][1]]}

    bare = results.get('bare tf.function loop')
    print(f'{"":24s} {"img/s":>8s} {"vs bare":>8s}   per-round ratio to bare: median (quartiles)')
    for name, seconds in results.items():
        rate = a.steps * a.batch / seconds
        ratio = f'{bare / seconds:8.2f}' if bare else ''
        # Each round's ratio to the bare loop's round beside it: background load that
        # comes and goes hits both, so the spread says what a difference of a few per
        # cent is worth on this machine.
        spread = ''
        if bare and name != 'bare tf.function loop' and contenders[name][1] == 1:
            paired = paired_ratios(times['bare tf.function loop'], times[name])
            spread = f'   {paired[1]:.2f} ({paired[0]:.2f}-{paired[2]:.2f}) of {a.rounds}'
        print(f'{name:24s} {rate:8.0f} {ratio}{spread}')
    for name in times:
        if name.startswith('runner, ') and 'runner train_step' in times:
            low, median, high = paired_ratios(times['runner train_step'], times[name])
            print(f'{name}: {median:.2f}x the runner step\'s speed per round ({low:.2f}-{high:.2f} '
                  f'quartiles of {a.rounds})')
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # One process holds every contender, so this is their peak together, not each one's.
    print(f'peak resident memory of this process (all contenders): {peak:.0f} MiB')


def paired_ratios(bare_seconds, seconds):
    """Lower quartile, median and upper quartile of bare / contender over paired rounds."""
    ratios = [b / t for b, t in zip(bare_seconds, seconds)]
    if len(ratios) < 2:
        return ratios * 3
    low, median, high = statistics.quantiles(ratios, n=4, method='inclusive')
    return low, median, high


if __name__ == '__main__':
    main()
