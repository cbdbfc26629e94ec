"""What TensorBoard's extras cost a run (runner/training/tboard.py; docs/tensorboard.md): the run
overview (HParams session and declaration, config.yaml as text, the first-step grid of
augmented images) written at each session start and end, and the confusion matrix of each
evaluation (counted in the evaluation step, drawn and written as an image), against the
training time of the experiment.

    python benchmarks/tensorboard_cost.py [experiments.yaml] [--steps 30] [--data-dir .cache/tfds]

Prints each cost in seconds and as a share of the experiment's whole training time
(total steps x the measured step time). A benchmark, not a test: it asserts nothing.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('file', nargs='?', default='experiments.yaml')
    p.add_argument('--steps', type=int, default=30, help='timed training steps')
    p.add_argument('--data-dir', default=None, help='dataset.data_dir (a TFDS copy)')
    a = p.parse_args()

    import runner  # noqa: F401  (sets the CPU-kernel switch before TensorFlow loads)
    import numpy as np
    import tensorflow as tf
    from runner.data import loader as data_loader, splits as data_splits
    from runner.training import distribute, tboard
    from runner.training.trainer import Trainer
    from runner.config.expand import load_experiments, parse_overrides
    from runner.config.yaml_io import dump_yaml
    overrides = parse_overrides([f'dataset.data_dir={a.data_dir}'] if a.data_dir else [])
    exp = load_experiments(a.file, overrides)[0]
    data = data_loader.load(exp.dataset)
    trainer = Trainer(exp, data, distribute.strategy_for('none'))
    trainer.start_input()
    for _ in range(3):  # trace and warm up
        trainer.train_step(trainer.iterator)
    float(trainer.sums['loss'].numpy())
    start = time.perf_counter()
    for _ in range(a.steps):
        trainer.train_step(trainer.iterator)
    float(trainer.sums['loss'].numpy())
    step = (time.perf_counter() - start) / a.steps
    total = exp.total_steps * step
    evaluations = -(-exp.total_steps // exp.train_parameters.val_interval)

    resolved = exp.to_dict()
    values = tboard.hparam_values(exp, resolved, trainer.params, 'float32')
    with tempfile.TemporaryDirectory() as tmp:
        exp.train_parameters.logdir = tmp
        run_dir = os.path.join(tmp, exp.run_name)
        os.makedirs(run_dir)
        overview = timed(lambda: (tboard.write_overview(run_dir, exp, values, dump_yaml(resolved),
                                                        tboard.first_step_images(trainer.train_ds, data)),
                                  tboard.set_status(run_dir, 'finished')))
        matrix = np.random.default_rng(0).integers(0, 100, (data.info.num_classes,) * 2)
        writer = tf.summary.create_file_writer(tmp)
        with writer.as_default():
            draw = timed(lambda: (tboard.log_confusion('test/confusion_matrix', matrix,
                                                       data.info.class_names, 0), writer.flush()))
    # Counting: the confusion matrix op of the evaluation step, over one test split.
    n = data_splits.size(data.test)
    labels = tf.constant(np.random.default_rng(0).integers(0, data.info.num_classes, n), tf.int32)
    count = tf.function(lambda y: tf.math.confusion_matrix(y, y, data.info.num_classes, dtype=tf.float32))
    count(labels)
    counting = timed(lambda: count(labels).numpy())

    per_run = overview + evaluations * (draw + counting)
    print(f'{exp.run_name}: {exp.model}, {exp.total_steps} steps of batch '
          f'{exp.train_parameters.batch_size}, {evaluations} evaluations')
    print(f'  training step          {step * 1000:8.1f} ms   whole run {total / 3600:.2f} h')
    print(f'  overview (per session) {overview:8.3f} s    {overview / total:.5%} of the run')
    print(f'  confusion image (each) {draw:8.3f} s')
    print(f'  confusion counts (each){counting:8.3f} s    ({n} test images)')
    print(f'  all extras, one session{per_run:8.3f} s    {per_run / total:.5%} of the run')


if __name__ == '__main__':
    main()
