"""Averages of the weights a run trains: two small objects the Trainer steps after each update.

- `ExponentialAverage` (`train_parameters.ema_decay`): an exponential moving average of the
  whole model state, weights and batch-norm statistics, that evaluations and the final
  weights use instead of the trained weights. Averaging the iterates is Polyak and
  Juditsky's (1992, "Acceleration of stochastic approximation by averaging"); an average over
  the last part of training generalises better than its end point (Izmailov et al. 2018,
  "Averaging Weights Leads to Wider Optima and Better Generalization", SWA,
  arXiv:1803.05407). The exponential form with a warm-up of the decay is Page's DAWNBench
  ResNet-9 (2018), and the object is shaped like timm's `ModelEmaV3`: it holds the averages,
  updates them after a step and swaps them in for an evaluation.
- `Lookahead` (`lookahead_interval`, `lookahead_decay`): every k steps the slow weights move
  part of the way towards the trained ("fast") ones and training restarts from them (Zhang et
  al. 2019, "Lookahead Optimizer: k steps forward, 1 step back", arXiv:1907.08610), with
  airbench94's schedule of how much of the slow weights is kept (Jordan 2024,
  arXiv:2404.00498, its `LookaheadState`).

Both keep float32 copies of the variables they follow, batch-norm statistics included, as
Page's and airbench's copies of the whole state_dict: statistics gathered under the raw
weights would not describe the averaged network's activations. Their variables are in the
run's checkpoint (runner.training.session.Trainer names them), so a resumed run goes on with them.
"""
import contextlib
import functools

import tensorflow as tf


def _copies(variables, prefix):
    """Copies of `variables`, named after them, that no gradient reaches."""
    return [tf.Variable(tf.convert_to_tensor(v), trainable=False, name=prefix + v.path.replace('/', '_'))
            for v in variables]


class ExponentialAverage:
    """An exponential moving average of `weights` (the model's floating-point variables).

    The decay warms up as (1 + n) / (10 + n) after step n, capped at `decay` (Page's
    ResNet-9; TensorFlow's ExponentialMovingAverage with num_updates), so the first steps'
    weights, far from any good network, are soon forgotten."""

    def __init__(self, weights, decay):
        self.weights = list(weights)
        self.decay = float(decay)
        self.averages = _copies(self.weights, 'average_')
        # A partial per object, not a bound method: TensorFlow counts the traces of every
        # tf.function of one Python function together (see Trainer's step functions).
        self._swap = tf.function(functools.partial(ExponentialAverage._swap_now, self))

    def __str__(self):
        return f'exponential moving average, decay {self.decay:g}'

    def update(self, step):
        """After the update of step number `step` (0-based), in the cross-replica context:
        every replica holds the same weights, so the averages are computed once from them."""
        n = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for average, var in zip(self.averages, self.weights):
            average.assign_sub((1.0 - decay) * (average - tf.cast(var, tf.float32)))

    def reset(self):
        """Start the averages at the current weights (after loading init_weights or adapting layers)."""
        for average, var in zip(self.averages, self.weights):
            average.assign(tf.convert_to_tensor(var))

    def _swap_now(self):
        for average, var in zip(self.averages, self.weights):
            raw = tf.identity(tf.convert_to_tensor(var))
            var.assign(average)
            average.assign(raw)

    @contextlib.contextmanager
    def swapped(self):
        """Inside: the model holds the averaged weights (and the averages the raw ones).
        Swapping twice restores both exactly, so training goes on as if nothing happened."""
        self._swap()
        try:
            yield
        finally:
            self._swap()


def lookahead_alpha(step, total_steps, decay, interval):
    """How much of the slow weights a Lookahead synchronisation after `step` (steps done,
    1-based) keeps: decay**interval * (step / total_steps)**3, airbench94's rule (0.95**5
    times the cubed progress), and 1 at total_steps, the schedule's end, where the run
    ends on the slow weights. Past it (a run extended with `steps`) the full decay holds.
    Works on Python numbers and on tensors."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(total_steps), 1.0)
    alpha = float(decay) ** int(interval) * progress ** 3
    return tf.where(tf.equal(tf.cast(step, tf.int64), int(total_steps)), 1.0, alpha)


class Lookahead:
    """Lookahead's slow copy of `weights`, synchronised every `interval` steps and at the
    schedule's last step, `total_steps` (the schedule's end, not `steps`: a run stopped early
    by `steps` and resumed must follow the same path as one run straight through)."""

    def __init__(self, weights, interval, decay, total_steps):
        self.weights = list(weights)
        self.interval, self.decay, self.total_steps = interval, decay, total_steps
        self.slow = _copies(self.weights, 'slow_')

    def __str__(self):
        return f'Lookahead every {self.interval} steps'

    def update(self, done):
        """After step number `done` (1-based), when a synchronisation is due: pull the slow
        weights towards the trained ones and restart from them."""
        if tf.logical_or(done % self.interval == 0, done == self.total_steps):
            alpha = lookahead_alpha(done, self.total_steps, self.decay, self.interval)
            for slow, var in zip(self.slow, self.weights):
                slow.assign_add((1.0 - alpha) * (tf.cast(var, tf.float32) - slow))
                var.assign(tf.cast(slow, var.dtype))

    def reset(self):
        """Start the slow weights at the current weights."""
        for slow, var in zip(self.slow, self.weights):
            slow.assign(tf.convert_to_tensor(var))
