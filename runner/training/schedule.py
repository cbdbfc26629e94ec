"""Learning-rate schedules.

The seed runner's rule: `lr_values[i]` holds for steps [lr_boundaries[i-1], lr_boundaries[i]),
the first piece starting at step 0, and the last boundary is the end of training. The
default, [0.01, 0.1, 0.01, 0.001] ending at [400, 32000, 48000, 64000], is He et al.'s
CIFAR ResNet schedule (2015, section 4.2) with their 400-step warm-up at 0.01.
Keras' PiecewiseConstantDecay does the stepping; an optional linear warm-up
(Goyal et al. 2017, arXiv:1706.02677) scales it over the first `warmup_steps`.

For short budgets the speed-record literature uses a warm-up then a decay to zero
(Smith's one-cycle, arXiv:1708.07120; airbench): `lr_schedule: linear` or `cosine` (Keras
CosineDecay with its own linear warm-up): up to lr_values[0] over the warm-up, then from it
down to 0 at the last boundary (a straight line, or half a cosine).

The speed-record codes write their schedules as straight lines between (step, rate) knots:
Page's ResNet-9 `PiecewiseLinear([0, 5, 24], [0, 0.4, 0])` (epochs), airbench94's 0.2x
peak rising to the peak at 23% of the steps and falling to 0.07x at the end.
`lr_schedule: piecewise_linear` is that rule: `lr_values[i]` at step `lr_boundaries[i]`,
the first boundary 0 and the last the end of training.

Lookahead (Zhang et al. 2019, arXiv:1907.08610) as airbench94 uses it (Jordan 2024,
arXiv:2404.00498): every `interval` steps the slow weights move towards the trained ones
by 1 - alpha and the trained ones are reset to them; alpha grows with the cube of the
progress, so the early run is plain SGD and the late run is pulled back hard.
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable('convnet_runner')
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Scale `schedule` by (step + 1) / warmup_steps until warmup_steps, then follow it."""

    def __init__(self, schedule, warmup_steps):
        self.schedule = schedule
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        rate = self.schedule(step)
        if not self.warmup_steps:
            return rate
        step = tf.cast(step, tf.float32)
        scale = tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return rate * tf.cast(scale, rate.dtype)

    def get_config(self):
        return {'schedule': keras.optimizers.schedules.serialize(self.schedule),
                'warmup_steps': self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config['schedule']), config['warmup_steps'])


@keras.saving.register_keras_serializable('convnet_runner')
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """`values[i]` at step `boundaries[i]` (in steps, increasing), straight lines between,
    the first value before the first boundary and the last after the last (a run extended
    with `steps`)."""

    def __init__(self, boundaries, values):
        if len(boundaries) != len(values) or len(boundaries) < 2:
            raise ValueError('piecewise_linear needs two or more (boundary, value) knots, '
                             f'got {boundaries} and {values}')
        self.boundaries = [int(b) for b in boundaries]
        self.values = [float(v) for v in values]

    def __call__(self, step):
        knots = tf.constant(self.boundaries, tf.float32)
        values = tf.constant(self.values, tf.float32)
        step = tf.cast(step, tf.float32)
        # The segment [knots[i], knots[i + 1]] that holds the step; the first before it.
        i = tf.searchsorted(knots, tf.reshape(step, [1]), side='right')[0] - 1
        i = tf.clip_by_value(i, 0, len(self.boundaries) - 2)
        start, end = knots[i], knots[i + 1]
        fraction = tf.clip_by_value((step - start) / (end - start), 0.0, 1.0)
        return values[i] + fraction * (values[i + 1] - values[i])

    def get_config(self):
        return {'boundaries': self.boundaries, 'values': self.values}


@keras.saving.register_keras_serializable('convnet_runner')
class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` in updates, for an optimizer with gradient accumulation: Keras evaluates
    the schedule at its count of batches (`_iterations`), which runs `accumulation` times
    faster than its count of updates (`iterations`), the runner's steps."""

    def __init__(self, schedule, accumulation):
        self.schedule = schedule
        self.accumulation = accumulation

    def __call__(self, step):
        return self.schedule(step // self.accumulation)

    def get_config(self):
        return {'schedule': keras.optimizers.schedules.serialize(self.schedule),
                'accumulation': self.accumulation}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config['schedule']), config['accumulation'])


def piecewise_lr(lr_values, lr_boundaries, warmup_steps=0):
    """The seed's piecewise-constant schedule (boundaries in steps) with optional warm-up."""
    if len(lr_values) != len(lr_boundaries):
        raise ValueError('lr_values and lr_boundaries must have the same length')
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i]; the seed's pieces
    # are half-open [start, end), so each Keras boundary is the last step of its piece.
    inner = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[int(b) - 1 for b in lr_boundaries[:-1]], values=[float(v) for v in lr_values])
    if len(lr_values) == 1:
        value = float(lr_values[0])
        inner = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries=[0], values=[value, value])
    return LinearWarmup(inner, int(warmup_steps))


def make_lr_schedule(kind, lr_values, lr_boundaries, warmup_steps=0):
    """The schedule a config names: 'piecewise', 'linear', 'cosine' or 'piecewise_linear'
    (see module doc)."""
    if kind == 'piecewise':
        return piecewise_lr(lr_values, lr_boundaries, warmup_steps)
    if kind == 'piecewise_linear':
        return LinearWarmup(PiecewiseLinear(lr_boundaries, lr_values), int(warmup_steps))
    peak, total = float(lr_values[0]), int(lr_boundaries[-1])
    if kind == 'linear':
        # The line starts at the peak where the warm-up ends, as cosine's does: scaling a line
        # that starts at step 0 by the ramp would never reach the peak (0.79x of it at Page's
        # 5-of-24-epochs warm-up).
        start = min(int(warmup_steps), total - 1)
        return LinearWarmup(PiecewiseLinear([start, total], [peak, 0.0]), int(warmup_steps))
    if kind == 'cosine':
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else peak, max(total - warmup_steps, 1), alpha=0.0,
            warmup_target=peak if warmup_steps else None, warmup_steps=int(warmup_steps))
    raise ValueError(f'unknown lr_schedule {kind!r}')
