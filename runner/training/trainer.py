"""The Trainer: a run's model, its optimizer and its step functions, the part of training that
touches tensors (runner.training.session drives it).

It holds the model, the optimizer of train_parameters.optimizer (runner.training.optimizers)
under the learning-rate schedule (runner.training.schedule: piecewise-constant, linear,
cosine, piecewise-linear, with warm-up), and the step functions: a custom tf.function step
(GradientTape, cross-entropy plus the model's regularisation losses) run under a
tf.distribute strategy (runner.training.distribute) in the policy runner.training.precision
chose, and the evaluation, with flip and translate test-time augmentation (`eval_tta`). The
averages of the weights, an exponential moving average and Lookahead, are small objects of
runner.training.averaging that the step updates. Its tf.train.Checkpoint holds everything a
resume needs to go on bit for bit.
"""
import contextlib
import functools
import sys

import keras
import numpy as np
import tensorflow as tf

from runner import compat
from runner.config.errors import ConfigError
from runner.data import loader as data_loader
from runner.data.source import DataUnavailable
from runner.training import averaging, release, tta
from runner.training.optimizers import build_optimizer
from runner.registry import (build_model, count_trainable, freeze_schedule)
from runner.training.schedule import make_lr_schedule
from runner.training.signals import EvaluationStopped


def step_value(variable):
    """The integer value of a step counter, also when it is a distributed variable."""
    value = variable.value if hasattr(variable, 'value') else variable
    return int(tf.convert_to_tensor(value).numpy())


class Trainer:
    """The model, its optimizer and step functions, and the checkpoint of one run: build,
    train_step, evaluate, the training metrics. The averages of the weights (runner.training.averaging)
    are stepped with it; freezing (freeze_after) and the batch-norm offsets' learning rate
    (bn_bias_lr_multiplier) are parts of the step."""

    def __init__(self, exp, data, strategy, policy='float32'):
        tp = exp.train_parameters
        self.exp, self.data, self.strategy = exp, data, strategy
        self.global_batch = tp.batch_size
        self.loss_scaling = policy == 'mixed_float16'
        if self.loss_scaling and tp.gradient_accumulation_steps > 1:
            # The step counter the loss scaling corrects is a quotient under accumulation.
            raise ConfigError('train_parameters.gradient_accumulation_steps: not with precision '
                              'mixed_float16 (its loss scaling); use float32 or mixed_bfloat16')
        replicas = strategy.num_replicas_in_sync
        if tp.batch_size % replicas:
            raise ValueError(f'train_parameters.batch_size: {tp.batch_size} does not split evenly '
                             f'over {replicas} replicas')
        with strategy.scope():
            self.model = build_model(exp, data.info.image_shape, data.info.num_classes)
            self.schedule = make_lr_schedule(tp.lr_schedule, tp.lr_values, tp.lr_boundaries, tp.warmup_steps)
            # sgd, or a decoupled optimizer that takes the model's decay regularisers over.
            self.optimizer = build_optimizer(tp, self.model, self.schedule)
            if self.loss_scaling:
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            # Create the slots now: a checkpoint restores into existing variables.
            self.optimizer.build(self.model.trainable_variables)
            self.best_error = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name='best_error')
            self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='best_step')
            self.bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='first_nonfinite_step')
            # Both follow the whole floating-point state, batch-norm statistics included.
            state = [v for v in self.model.variables if keras.backend.is_float_dtype(v.dtype)]
            self.ema = averaging.ExponentialAverage(state, tp.ema_decay) if tp.ema_decay else None
            self.lookahead = (averaging.Lookahead(state, tp.lookahead_interval, tp.lookahead_decay,
                                                  tp.lr_boundaries[-1])
                              if tp.lookahead_interval else None)
        self.params = count_trainable(self.model)
        # Batch-norm offsets whose gradient is scaled (airbench's bias_scaler): with SGD, a
        # gradient m times larger is a learning rate m times larger for that variable.
        self.lr_boosted = ({layer.beta.path for layer in compat.all_layers(self.model)
                            if isinstance(layer, keras.layers.BatchNormalization) and layer.center}
                           if tp.bn_bias_lr_multiplier != 1 else set())
        # Training sums since the last log; reset after every log.
        self.sums = {k: tf.Variable(0.0, trainable=False, name=k)
                     for k in ('loss', 'reg_loss', 'errors', 'examples', 'steps')}
        self.loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=tp.label_smoothing, reduction=None)
        self.iterator = None        # the training batches (start_input)
        self.eval_iterator = None   # the batches of the evaluation under way
        self.checkpoint = self._make_checkpoint()
        # TensorFlow's frequent-retracing warning counts the traces of every tf.function made
        # from one Python function together (keyed by its code object): five Trainers in one
        # process, each tracing its step once and taking two steps (a smoke run), read as one
        # function retraced five times. A partial per Trainer is a key of its own.
        own = functools.partial
        # XLA compiles the per-replica computation; the input iterator stays outside it.
        self.replica_step = tf.function(own(Trainer._replica_step, self), jit_compile=tp.jit_compile)
        self.step_fn = tf.function(own(Trainer._train_step, self))
        # freeze_after: {layer: step} -> [(step, paths of its trainable weights)]
        self.freezes = freeze_schedule(self.model, tp.freeze_after)
        self.eval_step = tf.function(own(Trainer._eval_step, self))

    def _make_checkpoint(self):
        """Everything a resume needs. The input position is the step itself (see
        data.train_dataset), so the checkpoint needs no iterator state."""
        # Keras does not put the dropout seed generators' states in the model's checkpoint
        # graph; without them a resumed run draws other dropout masks.
        rng_states = [v for v in self.model.variables if v.path.endswith('seed_generator_state')]
        # Only runs that average have the averages in their checkpoint, so older
        # checkpoints without them still restore with every object matched.
        averages = {'weight_averages': self.ema.averages} if self.ema else {}
        if self.lookahead:
            averages['lookahead_slow_weights'] = self.lookahead.slow
        return tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                   rng_states=rng_states,
                                   metric_sums=self.sums, best_error=self.best_error,
                                   best_step=self.best_step, **averages)

    @property
    def saved_variables(self):
        """Everything a checkpoint holds that could overflow."""
        return (self.model.variables + self.optimizer.variables
                + (self.ema.averages if self.ema else []) + (self.lookahead.slow if self.lookahead else []))

    @property
    def evaluated_weights(self):
        """What evaluations and saved weights hold, in words for logs and summaries."""
        # Lookahead changes the trained weights themselves; the run ends on its slow copy.
        trained = str(self.lookahead) if self.lookahead else 'raw'
        if not self.ema:
            return trained
        return f'{self.ema}, over {trained}' if self.lookahead else str(self.ema)

    def averaged_weights(self):
        """A context in which the model holds the weights evaluated (the averages, if any)."""
        return self.ema.swapped() if self.ema else contextlib.nullcontext()

    def reset_averages(self):
        """Start the averages and Lookahead's slow weights at the model's current weights
        (after loading init_weights or adapting layers)."""
        for technique in (self.ema, self.lookahead):
            if technique:
                technique.reset()

    def start_input(self):
        """The training batches from the current step on."""
        tp, ds = self.exp.train_parameters, self.exp.dataset
        # Cached or streamed, cifar or imagenet style: a function of (seed, batch number).
        self.train_ds = data_loader.train_input(self.data, ds, tp.batch_size, tp.seed,
                                                start_batch=self.step * tp.gradient_accumulation_steps)
        self.iterator = iter(self.strategy.experimental_distribute_dataset(self.train_ds))

    def stop_input(self):
        """After the last step: the training batches are deleted on a thread of their own
        (runner.training.release: deleting them can wait for tf.data's threads)."""
        self.train_ds = None
        release.delete_in_background(self, 'iterator')

    @property
    def step(self):
        return step_value(self.optimizer.iterations)

    # -- one training step ----------------------------------------------------
    def train_step(self, iterator):
        """One training step. Once a freeze_after step is reached, that layer's weights are
        left out of the gradient and the update (a second trace of the step function)."""
        frozen = ()
        if self.freezes:
            step = self.step
            frozen = tuple(sorted(p for at, paths in self.freezes if step >= at for p in paths))
        return self.step_fn(iterator, frozen)

    def _replica_step(self, images, labels, frozen=()):
        num_classes = self.data.info.num_classes
        # Frozen weights get no gradient, so the backward pass also skips whatever only
        # they needed (airbench's frozen whitening bias: the first conv's input gradient).
        variables = [v for v in self.model.trainable_variables if v.path not in frozen]
        # Mixed targets (mixup, CutMix) come as float [batch, classes], others as class ids.
        targets = labels if labels.dtype.is_floating else tf.one_hot(labels, num_classes)
        # Persistent when BN offsets are boosted: their decay's gradient is taken apart.
        with tf.GradientTape(persistent=bool(self.lr_boosted)) as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self.loss_fn(targets, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            reg = (tf.nn.scale_regularization_loss(tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]))
                   if self.model.losses else tf.constant(0.0))
            total = loss + reg
            scaled = self.optimizer.scale_loss(total) if self.loss_scaling else total
        grads = tape.gradient(scaled, variables)
        if self.lr_boosted:
            self._boost_offsets(tape, reg, variables, grads)
            del tape
        if self.loss_scaling:
            # Overflowing float16 gradients are normal while the loss scale settles; the
            # LossScaleOptimizer skips those steps, so only the loss itself can diverge.
            finite = tf.math.is_finite(total)
        else:
            finite = tf.math.logical_and(tf.math.is_finite(total),
                                         tf.math.is_finite(tf.linalg.global_norm(grads)))
        self.optimizer.apply_gradients(zip(grads, variables))
        # An error is the share of the target off the predicted class: 1 or 0 for a class id,
        # 1 - lambda or lambda for a mixed image (mixup-cifar10's train accuracy).
        predicted = tf.argmax(logits, -1, output_type=tf.int32)
        errors = tf.reduce_sum(1.0 - tf.gather(targets, predicted, batch_dims=1))
        n = tf.cast(tf.shape(labels)[0], tf.float32)
        return loss, reg, errors, n, tf.cast(tf.logical_not(finite), tf.float32)

    def _boost_offsets(self, tape, reg, variables, grads):
        """airbench's bias_scaler, in place in `grads`: the batch-norm offsets' learning rate
        is boosted, their weight decay is not. With g = g_loss + g_decay, boost * g_loss +
        g_decay is boost * g - (boost - 1) * g_decay."""
        boost = float(self.exp.train_parameters.bn_bias_lr_multiplier)
        boosted = [v for v in variables if v.path in self.lr_boosted]
        decay = tape.gradient(self.optimizer.scale_loss(reg) if self.loss_scaling else reg, boosted)
        decay = {v.path: d for v, d in zip(boosted, decay) if d is not None}
        for i, v in enumerate(variables):
            if grads[i] is not None and v.path in self.lr_boosted:
                grads[i] = grads[i] * boost
                if v.path in decay:
                    grads[i] -= (boost - 1.0) * decay[v.path]

    def _train_step(self, iterator, frozen=()):
        step = tf.cast(self.optimizer.iterations, tf.int64)
        # With gradient accumulation a step takes that many batches; the optimizer averages
        # their gradients and updates at the last (Keras' gradient_accumulation_steps).
        sums = []
        for _ in range(self.exp.train_parameters.gradient_accumulation_steps):
            images, labels = next(iterator)
            out = self.strategy.run(self.replica_step, args=(images, labels), kwargs={'frozen': frozen})
            sums.append([self.strategy.reduce('SUM', v, axis=None) for v in out])
        loss, reg, errors, n, bad = [tf.add_n(list(v)) for v in zip(*sums)]
        loss, reg = loss / len(sums), reg / len(sums)
        if self.loss_scaling:
            # Keras 3's LossScaleOptimizer does not count a step it skips for overflowing
            # float16 gradients (Keras 2 did). The step still took a batch, and the data
            # position of a resume, the logging and Lookahead go by the count, so count it.
            iterations = self.optimizer.iterations
            iterations.assign_add(tf.cast(tf.equal(tf.cast(iterations, tf.int64), step), iterations.dtype))
        self.sums['loss'].assign_add(loss)
        self.sums['reg_loss'].assign_add(reg)  # each replica's is 1/n of it (scale_regularization_loss)
        self.sums['errors'].assign_add(errors)
        self.sums['examples'].assign_add(n)
        self.sums['steps'].assign_add(1.0)
        if bad > 0 and self.bad_step < 0:
            self.bad_step.assign(step)
        # In the cross-replica context, after the update: every replica holds the same
        # weights, so the slow weights and averages are computed once from them.
        if self.lookahead:
            self.lookahead.update(step + 1)
        if self.ema:
            self.ema.update(step)
    # -- data-dependent initialisation --------------------------------------------
    def adapt_layers(self):
        """Fit every layer that has an ``adapt(images)`` method (Keras' Normalization, the
        patch whitening of models/fast.py) to the first `adapt_examples` training images,
        un-augmented and normalised, as they reach that layer. Names of the layers adapted."""
        targets = [layer for layer in compat.all_layers(self.model)
                   if callable(getattr(layer, 'adapt', None))]
        if not targets:
            return []
        n = self.exp.train_parameters.adapt_examples
        batch = min(n, 500)
        batches = data_loader.eval_input(self.data, self.data.train, batch).take(-(-n // batch))
        images = np.concatenate([x.numpy() for x, _ in batches])[:n]
        for layer in targets:
            if layer.input is self.model.inputs[0]:
                inputs = images
            else:
                try:
                    feed = keras.Model(self.model.inputs, layer.input)
                except ValueError:
                    raise ValueError(f'layer {layer.name} has an adapt() method but its input is not '
                                     f'reachable from the model input (a nested model?); the runner '
                                     f'adapts layers of the outer functional model only') from None
                inputs = np.asarray(feed.predict(images, batch_size=500, verbose=0), np.float32)
            layer.adapt(inputs)
        # The averages and slow weights began at the unadapted weights.
        self.reset_averages()
        return [layer.name for layer in targets]

    def read_train_metrics(self, reset=True):
        """Means since the last log. The sums and their step count are checkpointed, so a
        log after a resume covers the same steps as in an uninterrupted run."""
        s = {k: float(v.numpy()) for k, v in self.sums.items()}
        for v in self.sums.values() if reset else ():
            v.assign(0.0)
        steps = max(s['steps'], 1.0)
        return {'loss': s['loss'] / steps, 'reg_loss': s['reg_loss'] / steps,
                'error': s['errors'] / max(s['examples'], 1.0)}

    # -- evaluation -------------------------------------------------------------
    def _replica_eval(self, images, labels):
        labels = tf.cast(labels, tf.int32)
        views = tta.tta_views(images, self.exp.train_parameters.eval_tta)
        if len(views) > 1:
            # One call on all views together; as `python -m runner evaluate --tta ...`.
            logits = self.model(tf.concat(views, 0), training=False)
            scores = tta.combine_views(tf.split(logits, len(views)), self.exp.train_parameters.eval_tta)
            p_true = tf.gather(scores, labels, batch_dims=1)
            loss = tf.reduce_sum(-tf.math.log(tf.maximum(p_true, 1e-12)))
        else:
            scores = tf.cast(self.model(images, training=False), tf.float32)
            loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, scores, from_logits=True))
        k = min(5, self.data.info.num_classes)
        top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, scores, 1), tf.float32))
        top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, scores, k), tf.float32))
        confusion = tf.math.confusion_matrix(labels, tf.argmax(scores, -1, output_type=tf.int32),
                                             self.data.info.num_classes, dtype=tf.float32)
        return loss, top1, top5, tf.cast(tf.shape(labels)[0], tf.float32), confusion

    def _eval_step(self, images, labels):
        out = self.strategy.run(self._replica_eval, args=(images, labels))
        return [self.strategy.reduce('SUM', v, axis=None) for v in out]

    def evaluate(self, split, max_batches=None, stop=None):
        """Top-1/5 error and loss over the split; EvaluationStopped as soon as `stop` is
        true (a StopRequest that has had its signal), between two batches."""
        ds = data_loader.eval_input(self.data, split, self.exp.train_parameters.eval_batch_size)
        if max_batches:
            ds = ds.take(max_batches)
        totals = np.zeros(4)
        # Rows: true class, columns: predicted (TensorBoard's image of each evaluation).
        self.confusion = np.zeros((self.data.info.num_classes,) * 2)
        self.eval_iterator = iter(self.strategy.experimental_distribute_dataset(ds))
        for images, labels in self.eval_iterator:
            if stop:  # the process ends; its exit need not wait for the iterator's threads
                raise EvaluationStopped()
            *sums, confusion = self.eval_step(images, labels)
            totals += [float(v) for v in sums]
            self.confusion += confusion.numpy()
        release.delete_in_background(self, 'eval_iterator')  # as stop_input
        skipped = data_loader.unreadable_report(self.data)  # files skipped since the last report
        if skipped:
            print(skipped, file=sys.stderr, flush=True)
        loss, top1, top5, n = totals
        if n == 0:
            # Every file of a streamed split unreadable (the in-memory ones are refused when
            # loaded): no number, rather than a NaN error reported as a result.
            origin = getattr(getattr(split, 'listing', None), 'origin', 'the dataset')
            raise DataUnavailable(f"dataset: no readable image in split '{split.name}' "
                                           f"of {origin}")
        return {'loss': loss / n, 'top1_error': 1 - top1 / n, 'top5_error': 1 - top5 / n,
                'top1_accuracy': top1 / n, 'top5_accuracy': top5 / n, 'examples': int(n)}
