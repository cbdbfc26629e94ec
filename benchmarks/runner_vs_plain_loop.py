"""ResNet-20 on the offline CIFAR-10 copy for N steps: the runner end to end beside a plain
hand-written TF2 loop on the same data, model and schedule, in one process.

    python ../shared/tools/make_tfds_cifar10.py .cache/tfds    # once
    python benchmarks/runner_vs_plain_loop.py --data-dir .cache/tfds --steps 800
    python benchmarks/runner_vs_plain_loop.py --steps 4 --batch 8 --train-split 'train[:64]' \
        --test-split 'test[:32]'           # a check that it works (as CI runs it)

Prints test accuracy and training images/s of both. The plain loop is what a person
would write by hand: tfds.load, per-image flip and pad-crop in a map, shuffle, batch,
one tf.function step. A benchmark, not a test: it asserts nothing.
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plain_loop(data_dir, splits, steps, batch, lr_values, lr_boundaries, seed):
    import keras
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from models.resnet import cifar_resnet20
    keras.utils.set_random_seed(seed)
    train, test = tfds.load('cifar10', data_dir=data_dir, split=list(splits), as_supervised=True)
    mean = tf.constant([0.4914, 0.4822, 0.4465])
    std = tf.constant([0.2470, 0.2435, 0.2616])

    def prep(x, y):
        return (tf.cast(x, tf.float32) / 255.0 - mean) / std, y

    def augment(x, y):
        x = tf.image.random_flip_left_right(x)
        x = tf.image.random_crop(tf.pad(x, [[4, 4], [4, 4], [0, 0]]), [32, 32, 3])
        return x, y
    train_ds = (train.cache().shuffle(50000, seed=seed).repeat().map(prep, num_parallel_calls=tf.data.AUTOTUNE)
                .map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE))
    test_ds = test.map(prep).batch(500).cache()
    model = cifar_resnet20()
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [b - 1 for b in lr_boundaries[:-1]], lr_values)
    opt = keras.optimizers.SGD(schedule, momentum=0.9)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    it = iter(train_ds)
    step(*next(it))  # trace
    start = time.perf_counter()
    for _ in range(steps - 1):
        step(*next(it))
    seconds = time.perf_counter() - start
    correct = n = 0
    for x, y in test_ds:
        pred = tf.argmax(model(x, training=False), -1)
        correct += int(tf.reduce_sum(tf.cast(pred == y, tf.int32)))
        n += int(tf.shape(y)[0])
    return correct / n, (steps - 1) * batch / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-dir', default='.cache/tfds')
    p.add_argument('--steps', type=int, default=800)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--train-split', default='train', help='TFDS split (default train)')
    p.add_argument('--test-split', default='test', help='TFDS split (default test)')
    a = p.parse_args()
    # He et al.'s 0.01 warm-up for 50 steps (half of a run shorter than 100 steps), then 0.1.
    lr_values, lr_boundaries = [0.01, 0.1], [min(50, a.steps // 2), a.steps]
    from runner import cli
    logdir = tempfile.mkdtemp(prefix='bench-')
    yaml_path = os.path.join(logdir, 'e.yaml')
    with open(yaml_path, 'w') as f:
        f.write(f"""
model: cifar_resnet20
dataset: {{name: cifar10, data_dir: {os.path.abspath(a.data_dir)}, train_split: '{a.train_split}',
          test_split: '{a.test_split}'}}
train_parameters:
  logdir: {logdir}
  run_name: runner
  batch_size: {a.batch}
  seed: {a.seed}
  log_interval: 100
  val_interval: {a.steps}
  checkpoint_interval: {a.steps}
  lr_values: {lr_values}
  lr_boundaries: {lr_boundaries}
""")
    cli.main([yaml_path, '--no-smoke'])
    with open(os.path.join(logdir, 'runner', 'summary.json')) as f:
        s = json.load(f)
    import keras
    keras.backend.clear_session()
    acc, rate = plain_loop(a.data_dir, (a.train_split, a.test_split), a.steps, a.batch, lr_values,
                           lr_boundaries, a.seed)
    print(f'\nResNet-20, {a.steps} steps of batch {a.batch}, LR {lr_values} until {lr_boundaries}; '
          f'{os.cpu_count()} CPU cores')
    print(f'{"":12s} {"test acc":>9s} {"img/s":>7s}')
    print(f'{"runner":12s} {s["test_top1_accuracy"]:9.4f} {s["train_images_per_second"]:7.0f}')
    print(f'{"plain loop":12s} {acc:9.4f} {rate:7.0f}')


if __name__ == '__main__':
    main()
