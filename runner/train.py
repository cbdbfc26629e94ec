"""The training loop of one experiment, from data to a finished run directory.

`run` reads top to bottom: `open_run` (strategy, data, precision, the Trainer, the
checkpoint to resume from, the run directory's records), `Session.train` (the steps, with
`log`, `evaluate_and_record` and `save_checkpoint` on their intervals), `Session.finish`
(the final evaluation, the final weights, the summary's status); nanoGPT's train.py
(Karpathy 2022) is the model of a loop that fits on one screen.

`Trainer` holds the model, the optimizer of train_parameters.optimizer (runner.optimizers)
under the learning-rate schedule (runner.schedule: piecewise-constant, linear, cosine,
piecewise-linear, with warm-up), and the step functions: a custom tf.function step
(GradientTape, cross-entropy plus the model's regularisation losses) run under a
tf.distribute strategy (runner.distribute) in the policy runner.precision chose, and the
evaluation, with flip and translate test-time augmentation (`eval_tta`). The averages of the
weights, an exponential moving average and Lookahead, are small objects of
runner.averaging that the step updates. Checkpoints are tf.train.CheckpointManager's;
resuming is the default: a run directory with a checkpoint continues from it, bit for bit
as if never stopped. Every path of the run directory comes from runner.rundir.RunDir.
"""
import contextlib
import functools
import os
import re
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback

import keras
import numpy as np
import tensorflow as tf

import runner
from runner import averaging
from runner import checkpoints
from runner import data as data_lib
from runner import distribute
from runner import inference
from runner import precision
from runner import tta
from runner.optimizers import build_optimizer
from runner import rundir
from runner import tboard
from runner.config import dump_yaml
from runner.registry import (build_model, count_trainable, freeze_schedule, load_initial_weights,
                             resolve_model_fn, resolved_model_parameters)
from runner.schedule import make_lr_schedule


class StopRequest:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop at the next step boundary (an
    evaluation under way is cut short); a second SIGINT exits at once.

    Python runs a signal's handler only between bytecodes of the main thread, and two signals
    that arrive while the main thread is inside one long TensorFlow call (a step, the first
    step's tracing) reach the handler as one. So every signal is also counted as it arrives,
    through signal.set_wakeup_fd, by a thread of its own: the second SIGINT exits at once,
    in the middle of a step, after `last_words` (which marks the summary interrupted)."""

    def __init__(self):
        self.signal = None
        self.last_words = None
        self.training = False  # in the steps (a stop checkpoints), not before them
        self._old = {}
        self._old_wakeup = None
        self._wakeup_write = None

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass
        if self._old:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            self._wakeup_write = write
            threading.Thread(target=self._count, args=(read,), daemon=True,
                             name='second-interrupt').start()
        return self

    def _count(self, read):
        interrupts = 0
        try:
            while True:
                data = os.read(read, 64)
                if not data:  # __exit__ closed the other end
                    return
                interrupts += data.count(signal.SIGINT)
                if interrupts >= 2:
                    self._exit_now()
        finally:
            os.close(read)

    def _exit_now(self):
        print('\nsecond interrupt: exiting now', file=sys.stderr, flush=True)
        if self.last_words:
            with contextlib.suppress(Exception):
                self.last_words()
        os._exit(130)

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            self._exit_now()
        self.signal = signum
        what = ('saving a checkpoint at the end of this step' if self.training
                else 'stopping before training starts (once the piece of setup under way, such '
                     'as loading the data, returns)')
        print(f'\n{signal.Signals(signum).name}: {what} (Ctrl-C again to exit at once)',
              file=sys.stderr, flush=True)

    def stop_before_training(self):
        """A safe point before the steps: there is no step to finish, so a stop asked for
        ends the run here, its last checkpoint standing (cli.train_one records it
        interrupted). Raised here, between two pieces of setup, rather than by the signal
        in the middle of TensorFlow building an input pipeline: that left the process
        crashed (SIGSEGV) or hung in one try out of ten."""
        if self.signal is not None:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._wakeup_write is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._wakeup_write)
            self._wakeup_write = None
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self):
        return self.signal is not None


class EvaluationStopped(Exception):
    """A stop was asked for during an evaluation: the evaluation is left unfinished."""


def _step_value(variable):
    """The integer value of a step counter, also when it is a distributed variable."""
    value = variable.value if hasattr(variable, 'value') else variable
    return int(tf.convert_to_tensor(value).numpy())


class Progress:
    """tqdm bar on a terminal, a line per log interval elsewhere (CI logs, nohup)."""

    def __init__(self, name, total, initial, quiet):
        self.name, self.total, self.quiet = name, total, quiet
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=name, unit='step', dynamic_ncols=True)

    def step(self, n=1):
        if self.bar:
            self.bar.update(n)

    def log(self, step, text, postfix=None):
        if self.bar:
            if postfix:
                self.bar.set_postfix_str(postfix)
            else:
                self.bar.write(f'{self.name} step {step}: {text}')
        elif not self.quiet:
            print(f'{self.name} step {step}/{self.total}: {text}', flush=True)

    def close(self):
        if self.bar:
            self.bar.close()


class Trainer:
    """The model, its optimizer and step functions, and the checkpoint of one run: build,
    train_step, evaluate, the training metrics. The averages of the weights (runner.averaging)
    are stepped with it; freezing (freeze_after) and the batch-norm offsets' learning rate
    (bn_bias_lr_multiplier) are parts of the step."""

    def __init__(self, exp, data, strategy, policy='float32'):
        tp = exp.train_parameters
        self.exp, self.data, self.strategy = exp, data, strategy
        self.global_batch = tp.batch_size
        self.loss_scaling = policy == 'mixed_float16'
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
        self.lr_boosted = ({layer.beta.path for layer in self.model._flatten_layers(include_self=False)
                            if isinstance(layer, keras.layers.BatchNormalization) and layer.center}
                           if tp.bn_bias_lr_multiplier != 1 else set())
        # Training sums since the last log; reset after every log.
        self.sums = {k: tf.Variable(0.0, trainable=False, name=k)
                     for k in ('loss', 'reg_loss', 'errors', 'examples', 'steps')}
        self.loss_fn = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=tp.label_smoothing, reduction=None)
        self.iterator = None
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
        self.train_ds = data_lib.train_input(self.data, ds, tp.batch_size, tp.seed, start_batch=self.step)
        self.iterator = iter(self.strategy.experimental_distribute_dataset(self.train_ds))

    @property
    def step(self):
        return _step_value(self.optimizer.iterations)

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
        # Persistent when BN offsets are boosted: their decay's gradient is taken apart.
        with tf.GradientTape(persistent=bool(self.lr_boosted)) as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self.loss_fn(tf.one_hot(labels, num_classes), logits)
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
        errors = tf.reduce_sum(tf.cast(tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                    tf.cast(labels, tf.int32)), tf.float32))
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
        images, labels = next(iterator)
        out = self.strategy.run(self.replica_step, args=(images, labels), kwargs={'frozen': frozen})
        loss, reg, errors, n, bad = [self.strategy.reduce('SUM', v, axis=None) for v in out]
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
        targets = [layer for layer in self.model._flatten_layers(include_self=False)
                   if callable(getattr(layer, 'adapt', None))]
        if not targets:
            return []
        n = self.exp.train_parameters.adapt_examples
        batch = min(n, 500)
        batches = data_lib.eval_input(self.data, self.data.train, batch).take(-(-n // batch))
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
        ds = data_lib.eval_input(self.data, split, self.exp.train_parameters.eval_batch_size)
        if max_batches:
            ds = ds.take(max_batches)
        totals = np.zeros(4)
        # Rows: true class, columns: predicted (TensorBoard's image of each evaluation).
        self.confusion = np.zeros((self.data.info.num_classes,) * 2)
        for images, labels in self.strategy.experimental_distribute_dataset(ds):
            if stop:
                raise EvaluationStopped()
            *sums, confusion = self.eval_step(images, labels)
            totals += [float(v) for v in sums]
            self.confusion += confusion.numpy()
        skipped = data_lib.unreadable_report(self.data)  # files skipped since the last report
        if skipped:
            print(skipped, file=sys.stderr, flush=True)
        loss, top1, top5, n = totals
        if n == 0:
            # Every file of a streamed split unreadable (the in-memory ones are refused when
            # loaded): no number, rather than a NaN error reported as a result.
            origin = getattr(getattr(split, 'listing', None), 'origin', 'the dataset')
            raise data_lib.DataUnavailable(f"dataset: no readable image in split '{split.name}' "
                                           f"of {origin}")
        return {'loss': loss / n, 'top1_error': 1 - top1 / n, 'top5_error': 1 - top5 / n,
                'top1_accuracy': top1 / n, 'top5_accuracy': top5 / n, 'examples': int(n)}




# Seconds from a session's start to its first progress line at the latest.
FIRST_LINE_SECONDS = 60


def checkpoint_bytes(params):
    # weights + momentum, float32, twice over while the next one is written, plus room
    return params * 4 * 2 * 2 + 64 * 2**20


def _disable_op_determinism():
    """The inverse of tf.config.experimental.enable_op_determinism, which TensorFlow's public
    API lacks; its internal module has had it since the switch was added (TF 2.9)."""
    from tensorflow.python.framework import config as tf_config
    if getattr(tf_config, 'is_op_determinism_enabled', lambda: False)():
        tf_config.disable_op_determinism()


def set_op_determinism(on):
    """Per run, both ways: it is a process-wide switch, and the previous experiment's
    `deterministic: true` must not carry over into this one."""
    if on:
        tf.config.experimental.enable_op_determinism()
    else:
        _disable_op_determinism()


# -- one run, top to bottom ---------------------------------------------------------------------


def run(exp, data=None, quiet=False, max_eval_batches=None, stop=None):
    """Train one experiment to the end of its schedule (or resume it). Returns the summary."""
    # One stop request for the whole run, its setup too: from here a signal sets a flag that
    # the run acts on where it is safe (StopRequest.stop_before_training, the steps'
    # boundaries, an evaluation's batches).
    stop = stop if stop is not None else StopRequest()
    try:
        with stop:
            session = open_run(exp, data, quiet, max_eval_batches, stop)
            stop.training = True
            stop.stop_before_training()
            return session.finish(session.train())
    finally:
        precision.set_policy('float32')


def open_run(exp, data, quiet, max_eval_batches, stop):
    """Start or resume the run: strategy, data, precision and Trainer; the checkpoint to go
    on from (or the initial weights); then the run directory's config, data info, summary
    and TensorBoard overview. A stop asked for meanwhile ends the run at the next safe point."""
    tp = exp.train_parameters
    strategy = distribute.strategy_for(tp.distribution)
    chief = distribute.is_chief(strategy)
    home = rundir.RunDir.of(exp)
    previous = rundir.read_summary(home) or {}
    set_op_determinism(tp.deterministic)
    data = data or data_lib.load(exp.dataset)
    stop.stop_before_training()
    resuming = checkpoints.present(home.checkpoints)
    policy, why = precision.choose_precision(exp, data.info, strategy,
                                             previous.get('precision') if resuming else None)
    quiet = quiet or not chief
    if why and not quiet:
        print(f'{exp.run_name}: precision {tp.precision}: {policy} ({why})', flush=True)
    precision.set_policy(policy)
    # After the probe, which builds models of its own: the weights start the same either way.
    keras.utils.set_random_seed(tp.seed)
    trainer = Trainer(exp, data, strategy, policy)
    stop.stop_before_training()
    # Other workers of a multi-worker run keep their own copies (every worker must take part
    # in a checkpoint save) in a scratch directory that is removed at the end.
    session = Session(trainer, home if chief else worker_dir(exp), chief, quiet, stop, max_eval_batches)
    session.restore_or_start(home)
    stop.stop_before_training()
    trainer.start_input()
    session.record_start(previous, policy, why if tp.precision == 'fastest' else None)
    return session


class Session:
    """One session of a run, from its start or resume until it finishes or stops: what the
    steps of `train` share (the Trainer, the run directory, the checkpoint managers, the
    summary, the TensorBoard writer, the measured rates and the wall clock)."""

    def __init__(self, trainer, run_dir, chief, quiet, stop, max_eval_batches):
        self.trainer, self.dir, self.chief, self.quiet, self.stop = trainer, run_dir, chief, quiet, stop
        self.exp, self.data = trainer.exp, trainer.data
        self.tp = self.exp.train_parameters
        self.max_eval_batches = max_eval_batches
        self.eval_split = 'validation' if self.exp.dataset.validation_fraction else 'test'
        self.prefix = 'val' if self.eval_split == 'validation' else 'test'
        self.latest = self.resumed_from = None
        self.summary = {}

    def say(self, line):
        if not self.quiet:
            print(f'{self.exp.run_name}: {line}', flush=True)

    # -- opening ------------------------------------------------------------------------
    def restore_or_start(self, home):
        """The checkpoint managers; the newest readable checkpoint restored, or a fresh
        start from init_weights or from layers adapted to the data."""
        trainer, tp = self.trainer, self.tp
        os.makedirs(self.dir, exist_ok=True)
        rundir.remove_partial_checkpoints(self.dir)
        # Before the managers read the state file: an unreadable newest checkpoint is moved aside
        # and the run resumes from the newest one that reads (NoReadableCheckpoint if none does).
        self.latest = checkpoints.newest_readable(
            home.checkpoints, home, move=self.chief, run_name=self.exp.run_name,
            say=lambda line: print(f'{self.exp.run_name}: {line}', file=sys.stderr, flush=True))
        self.manager = tf.train.CheckpointManager(trainer.checkpoint, self.dir.checkpoints,
                                                  max_to_keep=tp.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=trainer.model),
                                                       self.dir.best, max_to_keep=1)
        if self.latest:
            trainer.checkpoint.restore(self.latest).assert_existing_objects_matched()
            self.resumed_from = trainer.step
            rundir.truncate_history(self.dir, self.resumed_from)
            # A finished run extended with more steps: its old final weights are not final now.
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.dir.final_weights)
            return
        rundir.truncate_history(self.dir, 0)
        if tp.init_weights:
            source = load_initial_weights(trainer.model, tp.init_weights, tp.init_skip_mismatch)
            trainer.reset_averages()
            self.say(f'starting from the weights of {source}')
        else:
            adapted = trainer.adapt_layers()
            if adapted:
                self.say(f'adapted {", ".join(adapted)} to {tp.adapt_examples} training images')

    def resolved_config(self):
        """The experiment with every default filled in, as config.yaml records it."""
        exp, tp = self.exp, self.tp
        resolved = exp.to_dict()
        resolved['model_parameters'] = resolved_model_parameters(resolve_model_fn(exp), exp.model_parameters,
                                                                 tp.weight_decay is not None)
        resolved['dataset']['mean'], resolved['dataset']['std'] = self.data.mean, self.data.std
        resolved['train_parameters']['run_name'] = exp.run_name
        return resolved

    def record_start(self, previous, policy, fastest_why):
        """config.yaml, data_info.json, the summary and the TensorBoard overview of this
        session; the progress display; the wall clock and rates the summary keeps."""
        exp, trainer, tp, data = self.exp, self.trainer, self.tp, self.data
        resolved = self.resolved_config()
        config_text = dump_yaml(resolved)
        rundir.write_atomic(self.dir.config, config_text)
        # Shape and class names beside it: evaluate, predict and export of the run then know the
        # real class names where the data is not (inference.data_info reads the file).
        inference.write_data_info(self.dir, data.info)
        self.summary = self.first_summary(previous, resolved, policy, fastest_why)
        self.writer = tf.summary.create_file_writer(str(self.dir))
        if self.chief:
            # The first batch's images on a fresh run; a resumed run's dataset starts later.
            grid = tboard.first_step_images(trainer.train_ds, data) if self.resumed_from is None else None
            tboard.write_overview(str(self.dir), exp, tboard.hparam_values(exp, resolved, trainer.params, policy),
                                  config_text, grid)
        self.progress = Progress(exp.run_name, exp.total_steps, trainer.step, self.quiet)
        if self.resumed_from is not None and not self.quiet:
            self.progress.log(self.resumed_from, f'resuming from {self.latest}')
        self.start_wall, self.base_wall = time.time(), self.summary['wall_seconds']
        # (step, images/s) of every logged interval so far (history before a resume included).
        self.rates = [(r['step'], r['images_per_second']) for r in rundir.read_metrics(self.dir)
                      if r.get('kind') == 'train']
        techniques = ([f'{tp.eval_tta} TTA'] if tp.eval_tta != 'none' else []) + (
            [f'weights: {trainer.evaluated_weights}'] if trainer.ema or trainer.lookahead else [])
        self.how = f' ({", ".join(techniques)})' if techniques else ''
        self.stop.last_words = self.last_words

    def first_summary(self, previous, resolved, policy, fastest_why):
        """summary.json at the start of this session; a resumed run keeps its earlier results."""
        exp, trainer, tp = self.exp, self.trainer, self.tp
        machine = {'cpu': distribute.cpu_description(), 'onednn': runner.onednn_enabled(),
                   'gpus': len(tf.config.list_logical_devices('GPU'))}
        resumed = self.resumed_from is not None
        summary = {
            'run_name': exp.run_name, 'model': exp.model, 'module': exp.module,
            'params': trainer.params, 'dataset': self.data.info.description,
            'steps': trainer.step, 'total_steps': exp.total_steps, 'status': 'running',
            'eval_split': self.eval_split, 'test_split': exp.dataset.test_split,
            'selection_split': self.eval_split,
            'paper': {k: v for k, v in resolved['paper'].items() if v is not None},
            'precision': policy, **({'precision_fastest': fastest_why} if fastest_why else {}),
            'replicas': trainer.strategy.num_replicas_in_sync,
            # What this session's images/s were measured on (the chief's machine); `sessions`
            # has every start and resume, each with its own machine and images/s.
            'machine': machine,
            'sessions': sessions_so_far(previous, self.resumed_from, machine),
            'wall_seconds': previous.get('wall_seconds', 0.0) if resumed else 0.0,
            'train_images_per_second': None,
            # Every accuracy in this summary and in metrics.jsonl is of these weights and views.
            'evaluated_weights': trainer.evaluated_weights, 'eval_tta': tp.eval_tta,
        }
        for key in ('test_top1_accuracy', 'test_top5_accuracy', 'best_test_top1_accuracy',
                    'val_top1_accuracy', 'best_val_top1_accuracy', 'best_step'):
            if resumed and key in previous:
                summary[key] = previous[key]
        return summary

    # -- the steps ----------------------------------------------------------------------
    def train(self):
        """Train from the current step to the end of the run, logging, evaluating and
        checkpointing on the way. None when every step is done, else why the steps ended
        early: 'diverged' or 'interrupted'."""
        trainer, tp, stop, total = self.trainer, self.tp, self.stop, self.exp.total_steps
        status = None
        with self.writer.as_default():
            self.last_log_step, self.last_log_time, self.overhead = trainer.step, time.time(), 0.0
            # The first progress line of a session comes within about a minute, whatever
            # log_interval is (400 steps of a big model can take minutes); it is printed only,
            # so the logged history keeps its log_interval grid.
            first_line_due = self.last_log_time + FIRST_LINE_SECONDS
            while trainer.step < total:
                trainer.train_step(trainer.iterator)
                step = trainer.step
                self.progress.step()
                log_now = step % tp.log_interval == 0 or step == total
                eval_now = step % tp.val_interval == 0 or step == total
                ckpt_now = step % tp.checkpoint_interval == 0 or eval_now
                if (log_now or ckpt_now or step % 10 == 0 or stop) and self.diverged():
                    status = 'diverged'
                    break
                if first_line_due and (log_now or time.time() >= first_line_due):
                    if not log_now:
                        self.log_so_far(step)
                    first_line_due = None
                if log_now:
                    self.log(step)
                side_start = time.time()
                if eval_now:
                    self.evaluate_and_record(step)
                if ckpt_now or stop:
                    # Events up to this step must be on disk before the checkpoint that a
                    # resume starts after; otherwise a kill loses them for good.
                    self.writer.flush()
                    if not self.save_checkpoint(step):
                        status = 'diverged'
                        break
                    self.save_summary()
                self.overhead += time.time() - side_start
                if stop:
                    status = 'interrupted'
                    break
            self.progress.close()
            self.writer.flush()
        return status

    def diverged(self):
        """Whether a step's loss or gradient was not finite; the summary then says where."""
        bad = int(self.trainer.bad_step.numpy())
        if bad >= 0:
            self.summary['error'] = self.diverged_message(bad + 1)
        return bad >= 0

    def diverged_message(self, step, what='loss or gradient'):
        last = self.manager.latest_checkpoint or 'none'
        return f'{what} became NaN/inf at step {step}; last good checkpoint: {last}'

    def wall_seconds(self):
        """Since the run began, earlier sessions of a resumed run included."""
        return self.base_wall + time.time() - self.start_wall

    # -- log ----------------------------------------------------------------------------
    def log_so_far(self, step):
        """The session's first progress line, before the first log interval is complete."""
        m = self.trainer.read_train_metrics(reset=False)
        self.progress.log(step, f'loss {m["loss"]:.4f} error {m["error"]:.2%} (so far; '
                                f'logged every {self.tp.log_interval} steps)')

    def log(self, step):
        """The training metrics since the last log: TensorBoard, metrics.jsonl, progress."""
        trainer, tp = self.trainer, self.tp
        m = trainer.read_train_metrics()
        # Images per second of training alone: evaluation and checkpoint time left out.
        rate = ((step - self.last_log_step) * tp.batch_size
                / max(time.time() - self.last_log_time - self.overhead, 1e-9))
        self.rates.append((step, rate))
        lr = float(trainer.schedule(step - 1))
        tf.summary.scalar('train/loss', m['loss'], step=step)
        tf.summary.scalar('train/error', m['error'], step=step)
        tf.summary.scalar('train/reg_loss', m['reg_loss'], step=step)
        tf.summary.scalar('train/learning_rate', lr, step=step)
        tf.summary.scalar('train/images_per_second', rate, step=step)
        rundir.append_metrics(self.dir, {'step': step, 'kind': 'train', 'lr': lr,
                                         'images_per_second': rate, **m,
                                         'wall_seconds': round(self.wall_seconds(), 2)})
        self.progress.log(step, f'loss {m["loss"]:.4f} error {m["error"]:.2%} lr {lr:g} '
                                f'{rate:.0f} img/s',
                          postfix=f'loss={m["loss"]:.3f} err={m["error"]:.1%} {rate:.0f} img/s')
        self.last_log_step, self.last_log_time, self.overhead = step, time.time(), 0.0

    # -- evaluate and record ------------------------------------------------------------
    def evaluate_and_record(self, step):
        """The periodic evaluation. One cut short by a stop is left unfinished (the step is
        saved and the run stops, as at any step). One that fails (eval_batch_size too large
        for memory, a split gone unreadable) must not lose the steps trained since the last
        checkpoint: this step is saved first, with the best record as before it."""
        trainer = self.trainer
        self.writer.flush()
        best_before = (trainer.best_error.numpy(), trainer.best_step.numpy())
        try:
            self.evaluate(step)
        except EvaluationStopped:
            pass
        except Exception:
            trainer.best_error.assign(best_before[0])
            trainer.best_step.assign(best_before[1])
            with contextlib.suppress(Exception):
                self.writer.flush()
                if self.save_checkpoint(step):
                    self.save_summary()
            raise

    def evaluate(self, step):
        """Evaluate the weights evaluated (runner.averaging) on the evaluation split; keep the
        best in best/; record it in TensorBoard, metrics.jsonl and the summary."""
        trainer, summary, prefix = self.trainer, self.summary, self.prefix
        eval_start = time.time()
        with trainer.averaged_weights():
            m = trainer.evaluate(self.data.eval, self.max_eval_batches, stop=self.stop)
            if m['top1_error'] < float(trainer.best_error.numpy()):
                trainer.best_error.assign(m['top1_error'])
                trainer.best_step.assign(step)
                self.best_manager.save(checkpoint_number=step)
        with self.writer.as_default(step=step):
            for k in ('loss', 'top1_error', 'top5_error'):
                tf.summary.scalar(f'{prefix}/{k}', m[k])
            tf.summary.scalar(tboard.BEST_TAG, trainer.best_error)
            tboard.log_confusion(f'{prefix}/confusion_matrix', trainer.confusion,
                                 self.data.info.class_names, step)
        # The evaluation's own share of the wall time, so time-to-accuracy can leave the
        # measuring out.
        rundir.append_metrics(self.dir, {'step': step, 'kind': prefix, **m, 'eval_tta': self.tp.eval_tta,
                                         'weights': trainer.evaluated_weights,
                                         'wall_seconds': round(self.wall_seconds(), 2),
                                         'eval_seconds': round(time.time() - eval_start, 2)})
        summary[f'{prefix}_top1_accuracy'] = round(m['top1_accuracy'], 6)
        if prefix == 'test':
            summary['test_top5_accuracy'] = round(m['top5_accuracy'], 6)
        summary[f'best_{prefix}_top1_accuracy'] = round(1 - float(trainer.best_error.numpy()), 6)
        summary['best_step'] = int(trainer.best_step.numpy())
        self.progress.log(step, f'{prefix} top-1 error {m["top1_error"]:.2%}, top-5 {m["top5_error"]:.2%}, '
                                f'loss {m["loss"]:.4f}{self.how}')
        return m

    # -- checkpoint ---------------------------------------------------------------------
    def save_checkpoint(self, step):
        """Save unless the state is not finite; False then, and the previous one stays last good."""
        if not checkpoints.all_finite(self.trainer.saved_variables):
            self.summary['error'] = self.diverged_message(step, 'weights or optimizer state')
            return False
        self.manager.save(checkpoint_number=step)
        return True

    def save_summary(self, status=None):
        summary, step = self.summary, self.trainer.step
        summary['steps'] = step
        summary['wall_seconds'] = round(self.wall_seconds(), 1)
        summary['train_images_per_second'] = session_throughput(summary['sessions'], self.rates, step)
        if status:
            summary['status'] = status
        rundir.write_summary(self.dir, summary)

    def last_words(self):
        """A second Ctrl-C exits at once: the summary says so, with the checkpoint a resume
        starts from."""
        words = dict(self.summary, status='interrupted',
                     error=f'stopped at once by a second SIGINT after step {self.summary["steps"]}; '
                           f'a resume starts from {self.manager.latest_checkpoint or "step 0"}')
        rundir.write_summary(self.dir, words)

    # -- finish -------------------------------------------------------------------------
    def finish(self, status):
        """After the steps: the final evaluation of a run that trained them all, then the
        summary's status. The final evaluation honours a stop as the periodic ones do; the
        run is then interrupted at its last step, and a resume does this evaluation again."""
        if status is None:
            try:
                self.final_evaluation()
                status = 'finished'
            except EvaluationStopped:
                status = 'interrupted'
        if self.stop and status == 'interrupted':
            self.summary['error'] = (f'stopped by {signal.Signals(self.stop.signal).name} '
                                     f'at step {self.trainer.step}')
        self.summary['last_checkpoint'] = self.manager.latest_checkpoint
        self.save_summary(status)
        if self.chief:
            tboard.set_status(str(self.dir), status)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.summary

    def final_evaluation(self):
        """The test evaluation of the finished run, its best checkpoint's too, and its final weights."""
        trainer, summary = self.trainer, self.summary
        if trainer.ema:
            self.say(f'the final evaluation and {rundir.FINAL_WEIGHTS} use the '
                     f'averaged weights ({trainer.evaluated_weights})')
        # The checkpoints keep the raw weights beside the averages; what is evaluated and
        # saved as the result is the averaged network.
        with trainer.averaged_weights():
            final = trainer.evaluate(self.data.test, self.max_eval_batches, stop=self.stop)
            summary['test_top1_accuracy'] = round(final['top1_accuracy'], 6)
            summary['test_top5_accuracy'] = round(final['top5_accuracy'], 6)
            summary['test_loss'] = round(final['loss'], 6)
            if self.eval_split == 'validation':
                self.record_final_test(final)
            else:
                summary['best_test_top1_accuracy'] = max(summary.get('best_test_top1_accuracy', 0.0),
                                                         summary['test_top1_accuracy'])
            trainer.model.save_weights(self.dir.final_weights)
        summary['weights'] = rundir.FINAL_WEIGHTS
        summary.pop('error', None)
        # The traceback of a failure this run has since recovered from is history, not news.
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.dir.error_log)

    def record_final_test(self, final):
        """With a validation split: the test error of the final weights in TensorBoard too
        (the HParams table's final test error; without one the last periodic evaluation at
        this step already wrote it), and the number to report, the test accuracy of the
        weights chosen on validation."""
        trainer = self.trainer
        with self.writer.as_default(step=trainer.step):
            for k in ('loss', 'top1_error', 'top5_error'):
                tf.summary.scalar(f'test/{k}', final[k])
            tboard.log_confusion('test/confusion_matrix', trainer.confusion,
                                 self.data.info.class_names, trainer.step)
        self.writer.flush()
        last_weights = [v.numpy() for v in trainer.model.weights]
        if self.best_manager.latest_checkpoint:
            tf.train.Checkpoint(model=trainer.model).restore(self.best_manager.latest_checkpoint)
            best = trainer.evaluate(self.data.test, self.max_eval_batches, stop=self.stop)
            self.summary['best_test_top1_accuracy'] = round(best['top1_accuracy'], 6)
            for v, w in zip(trainer.model.weights, last_weights):
                v.assign(w)


def sessions_so_far(previous, resumed_from, machine):
    """The sessions of a run, one per start and resume, each {'start_step', 'machine'}: the
    earlier ones from the summary of the run resumed (a run from before sessions were
    recorded is one session on its recorded machine), then this one. A session that began
    at or after the checkpoint resumed from kept none of its steps and is dropped."""
    if resumed_from is None:
        return [{'start_step': 0, 'machine': machine}]
    earlier = previous.get('sessions') or [{'start_step': 0, 'machine': previous.get('machine')}]
    kept = [{'start_step': s['start_step'], 'machine': s.get('machine')}
            for s in earlier if s['start_step'] < resumed_from]
    return kept + [{'start_step': resumed_from, 'machine': machine}]


def session_throughput(sessions, rates, step):
    """Fill in each session's `end_step` and `train_images_per_second` (median of its logged
    intervals; `rates` is [(step, images/s)]) and return the run's: the median over the
    intervals of every session on the current (last) session's machine, so the summary's
    images/s and `machine` describe the same hardware. A session's first interval includes
    tracing the step function and is left out, unless it is the only one."""
    pooled = []
    current = sessions[-1]['machine']
    for i, session in enumerate(sessions):
        end = sessions[i + 1]['start_step'] if i + 1 < len(sessions) else step
        own = [r for s, r in rates if session['start_step'] < s <= end]
        own = own[1:] or own
        session['end_step'] = end
        session['train_images_per_second'] = round(statistics.median(own), 1) if own else None
        if session['machine'] == current:
            pooled += own
    return round(statistics.median(pooled), 1) if pooled else None


def error_message(error):
    """One line that says what went wrong. A TensorFlow op error raised in a tf.function
    begins 'Graph execution error:' and carries its cause in a later line."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith('[[')]
    if isinstance(error, tf.errors.OpError):
        lines = [l for l in lines if not l.startswith(('Graph execution error', 'Detected at node',
                                                       'File "', 'Stack trace'))] or lines
        if not lines:
            return type(error).__name__
        # An eager op's error wraps its message in the function's node name and the op's name.
        return re.sub(r'^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]$', '', lines[-1])
    return lines[0] if lines else type(error).__name__


def worker_dir(exp):
    """The scratch run directory of a non-chief worker of a multi-worker run."""
    return rundir.RunDir.worker_scratch(exp, distribute.task_id())


def record_failure(exp, error, status='failed'):
    """Mark a run `failed` (or `status`) with the error, keeping the traceback in error.log. A worker of a
    multi-worker run other than the chief writes to its own scratch directory, as it does
    while training: the chief's run directory is the chief's to write."""
    run_dir = rundir.RunDir.of(exp)
    if distribute.is_multi_worker(exp.train_parameters.distribution) and not distribute.task_is_chief():
        run_dir = worker_dir(exp)
    summary = rundir.read_summary(run_dir) or {'run_name': exp.run_name, 'model': exp.model}
    summary['status'] = status
    summary['error'] = f'{type(error).__name__}: {error_message(error)}'
    # The failure may be a full disk or a directory gone read-only: what cannot be written is
    # said in the summary returned (`not_recorded`), never raised from here.
    try:
        os.makedirs(run_dir, exist_ok=True)
        rundir.write_atomic(run_dir.error_log, ''.join(traceback.format_exception(error)))
        rundir.write_summary(run_dir, summary)
        tboard.set_status(str(run_dir), status)
    except OSError as e:
        summary['not_recorded'] = (f'could not mark the run {status}: cannot write '
                                   f'{e.filename or run_dir}: {e.strerror}')
    return summary

