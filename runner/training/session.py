"""The training loop of one experiment, from data to a finished run directory.

`run` reads top to bottom: `open_run` (strategy, data, precision, the Trainer, the
checkpoint to resume from, the run directory's records), `Session.train` (the steps, with
`log`, `evaluate_and_record` and `save_checkpoint` on their intervals), `Session.finish`
(the final evaluation, the final weights, the summary's status); nanoGPT's train.py
(Karpathy 2022) is the model of a loop that fits on one screen.

The Trainer (runner.training.trainer) does the tensor work. Checkpoints are
tf.train.CheckpointManager's; resuming is the default: a run directory with a checkpoint
continues from it, bit for bit as if never stopped. Every path of the run directory comes
from runner.rundir.RunDir.
"""
import contextlib
import os
import shutil
import signal
import statistics
import sys
import time

import keras
import tensorflow as tf

from runner import compat, rundir
from runner.common import rate_text
from runner.config.regularisers import Regularisers, describe as describe_regularisers
from runner.config.yaml_io import dump_yaml
from runner.data import loader as data_loader
from runner.data.info import write_data_info
from runner.data import splits as data_splits
from runner.training import checkpoints, distribute, precision, tboard, tta
from runner.registry import (load_initial_weights, resolve_model_fn, resolved_model_parameters)
from runner.training.determinism import set_op_determinism
from runner.training.failures import worker_dir
from runner.training.progress import Progress
from runner.training.signals import EvaluationStopped, StopRequest
from runner.training.trainer import Trainer


# Seconds from a session's start to its first progress line at the latest.
FIRST_LINE_SECONDS = 60
# Seconds between two records of the step reached (progress.json, for `status`) at most.
PROGRESS_SECONDS = 5


# -- one run, top to bottom ---------------------------------------------------------------------


def run(exp, data=None, quiet=False, max_eval_batches=None, stop=None, on_evaluation=None, read=None):
    """Train one experiment to the end of its schedule (or resume it). Returns the summary.
    Without `data`, `read(exp.dataset)` reads it (default: runner.data.loader.load).
    `on_evaluation(step, metrics)`, called after each periodic evaluation, returns True to end
    the run there, checkpointed, as `pruned` (a search's pruner: runner.search)."""
    # One stop request for the whole run, its setup too: from here a signal sets a flag that
    # the run acts on where it is safe (StopRequest.stop_before_training, the steps'
    # boundaries, an evaluation's batches).
    stop = stop if stop is not None else StopRequest()
    tp = exp.train_parameters
    # Another worker of a multi-worker run leaves the run directory to the chief.
    own = not (distribute.is_multi_worker(tp.distribution) and not distribute.task_is_chief())
    try:
        with stop, (rundir.temporary_files_in(rundir.RunDir.of(exp)) if own else contextlib.nullcontext()):
            session = open_run(exp, data, quiet, max_eval_batches, stop, read)
            session.on_evaluation = on_evaluation
            stop.training = True
            stop.stop_before_training()
            return session.finish(session.train())
    finally:
        precision.set_policy('float32')


def open_run(exp, data, quiet, max_eval_batches, stop, read=None):
    """Start or resume the run: strategy, data, precision and Trainer; the checkpoint to go
    on from (or the initial weights); then the run directory's config, data info, summary
    and TensorBoard overview. A stop asked for meanwhile ends the run at the next safe point."""
    tp = exp.train_parameters
    strategy = distribute.strategy_for(tp.distribution)
    chief = distribute.is_chief(strategy)
    home = rundir.RunDir.of(exp)
    previous = rundir.read_summary(home) or {}
    set_op_determinism(tp.deterministic)
    quiet = quiet or not chief
    if data is None and not quiet:  # minutes for a large dataset: say so before they pass
        print(f'{exp.run_name}: reading the data', flush=True)
    data = data or (read or data_loader.load)(exp.dataset)
    stop.stop_before_training()
    resuming = checkpoints.present(home.checkpoints)
    policy, why = precision.choose_precision(exp, data.info, strategy,
                                             previous.get('precision') if resuming else None,
                                             say=None if quiet else lambda line: print(line, flush=True))
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
        self.last_eval = (None, None)  # (step, metrics) of this session's latest evaluation
        # With mixup or CutMix the training error is against mixed labels: the log says so.
        self.mixed = Regularisers.of(self.exp.dataset).mixing
        self.error_name = 'mixed-label error' if self.mixed else 'error'
        self.summary = {}
        self.on_evaluation = None

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
            self.dropped_lines(rundir.truncate_history(self.dir, self.resumed_from))
            # A finished run extended with more steps: its old final weights are not final now.
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.dir.final_weights)
            return
        self.dropped_lines(rundir.truncate_history(self.dir, 0))
        if tp.init_weights:
            source = load_initial_weights(trainer.model, tp.init_weights, tp.init_skip_mismatch)
            trainer.reset_averages()
            self.say(f'starting from the weights of {source}')
        else:
            adapted = trainer.adapt_layers()
            if adapted:
                self.say(f'adapted {", ".join(adapted)} to {tp.adapt_examples} training images')

    def dropped_lines(self, count):
        """Say so when metrics.jsonl had lines that are no record (damage): they were dropped,
        the good records kept."""
        if count:
            print(f'{self.exp.run_name}: {self.dir.metrics}: dropped {count} damaged line(s) '
                  f'(not a JSON record); kept the others', file=sys.stderr, flush=True)

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
        # real class names where the data is not (runner.commands.inference.data_info reads the file).
        write_data_info(self.dir, data.info)
        self.summary = self.first_summary(previous, resolved, policy, fastest_why)
        self.writer = tf.summary.create_file_writer(str(self.dir))
        if self.chief:
            # The first batch's images on a fresh run; a resumed run's dataset starts later.
            grid, labels = (tboard.first_step_inputs(trainer.train_ds, data) if self.resumed_from is None
                            else (None, None))
            tboard.write_overview(str(self.dir), exp, tboard.hparam_values(exp, resolved, trainer.params, policy),
                                  config_text, grid, labels=labels)
        self.progress = Progress(exp.run_name, exp.total_steps, trainer.step, self.quiet)
        rundir.write_progress(self.dir, trainer.step, exp.total_steps)  # `status` shows it from now
        self.progress_due = time.time() + PROGRESS_SECONDS
        if self.resumed_from is not None and not self.quiet:
            self.progress.log(self.resumed_from, f'resuming from {self.latest}')
        self.start_wall, self.base_wall = time.time(), self.summary['wall_seconds']
        # (step, images/s) of every logged interval so far (history before a resume included).
        self.rates = [(r['step'], r['images_per_second']) for r in rundir.read_metrics(self.dir)
                      if r.get('kind') == 'train']
        regularisers = describe_regularisers(resolved)
        if regularisers:
            self.say(f'regularisers: {", ".join(regularisers)}' + (
                '; the training error is against the mixed labels (an image counts 1 minus its '
                'label\'s share of the predicted class)' if self.mixed else ''))
        techniques = ([f'{tp.eval_tta} TTA'] if tp.eval_tta != 'none' else []) + (
            [f'weights: {trainer.evaluated_weights}'] if trainer.ema or trainer.lookahead else [])
        self.how = f' ({", ".join(techniques)})' if techniques else ''
        self.stop.last_words = self.last_words

    def first_summary(self, previous, resolved, policy, fastest_why):
        """summary.json at the start of this session; a resumed run keeps its earlier results."""
        exp, trainer, tp = self.exp, self.trainer, self.tp
        machine = {'cpu': distribute.cpu_description(), 'onednn': compat.onednn_enabled(),
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
        if exp.trial_values:  # a trial of a search: the values sampled for it
            summary['trial_values'] = exp.trial_values
        for key in ('test_top1_accuracy', 'test_top5_accuracy', 'best_test_top1_accuracy',
                    'val_top1_accuracy', 'best_val_top1_accuracy', 'best_step'):
            if resumed and key in previous:
                summary[key] = previous[key]
        return summary

    # -- the steps ----------------------------------------------------------------------
    def train(self):
        """Train from the current step to the end of the run, logging, evaluating and
        checkpointing on the way. None when every step is done, else why the steps ended
        early: 'diverged', 'interrupted' or 'pruned'."""
        trainer, tp, stop, total = self.trainer, self.tp, self.stop, self.exp.total_steps
        status = None
        with self.writer.as_default():
            self.last_log_step, self.last_log_time, self.overhead = trainer.step, time.time(), 0.0
            # The first progress line of a session comes within about a minute, whatever
            # log_interval is (400 steps of a big model can take minutes); it is printed only,
            # so the logged history keeps its log_interval grid.
            first_line_due = self.last_log_time + FIRST_LINE_SECONDS
            start = trainer.step
            if not self.quiet:
                self.progress.log(start, f'training; the first step also builds the step function '
                                         f'(a progress line follows within {FIRST_LINE_SECONDS} s)')
            while trainer.step < total:
                trainer.train_step(trainer.iterator)
                step = trainer.step
                self.progress.step()
                self.note_step(step, first=step == start + 1)
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
                    m = self.evaluate_and_record(step)
                    if m is not None and self.on_evaluation and self.on_evaluation(step, m):
                        status = 'pruned'  # checkpointed just below, as at any evaluation
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
                if status == 'pruned':
                    break
            self.progress.close()
            self.writer.flush()
        return status

    def note_step(self, step, first):
        """After each step: the step reached in progress.json every PROGRESS_SECONDS (for
        `status`); after a session's first step, the speed clock restarted, for that step
        also traced the step function and filled the input pipeline (minutes for image
        files, which read as 0 img/s)."""
        now = time.time()
        if first and step % self.tp.log_interval and step < self.exp.total_steps:
            self.last_log_step, self.last_log_time = step, now
        if now >= self.progress_due:
            rundir.write_progress(self.dir, step, self.exp.total_steps)
            self.progress_due = now + PROGRESS_SECONDS

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
        self.progress.log(step, f'loss {m["loss"]:.4f} {self.error_name} {m["error"]:.2%} (so far; '
                                f'logged every {self.tp.log_interval} steps)')

    def log(self, step):
        """The training metrics since the last log: TensorBoard, metrics.jsonl, progress."""
        trainer, tp = self.trainer, self.tp
        m = trainer.read_train_metrics()
        # Images per second of training alone: evaluation and checkpoint time left out.
        rate = ((step - self.last_log_step) * tp.batch_size * tp.gradient_accumulation_steps
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
        self.progress.log(step, f'loss {m["loss"]:.4f} {self.error_name} {m["error"]:.2%} lr {lr:g} '
                                f'{rate_text(rate)} img/s',
                          postfix=f'loss={m["loss"]:.3f} err={m["error"]:.1%} {rate_text(rate)} img/s')
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
            return self.evaluate(step)
        except EvaluationStopped:
            return None
        except Exception:
            trainer.best_error.assign(best_before[0])
            trainer.best_step.assign(best_before[1])
            with contextlib.suppress(Exception):
                self.writer.flush()
                if self.save_checkpoint(step):
                    self.save_summary()
            raise

    def evaluate(self, step):
        """Evaluate the weights evaluated (runner.training.averaging) on the evaluation split; keep the
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
        self.last_eval = (step, m)
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
        rundir.write_progress(self.dir, step, self.exp.total_steps)  # never behind the summary

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
        if status != 'interrupted':  # an interrupted run ends its process, which need not wait
            self.trainer.stop_input()
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
            step, final = self.last_eval
            if self.eval_split != 'test' or step != trainer.step:
                # Else the evaluation at this step was of these weights on the test split.
                self.announce('final evaluation', self.data.test)
                final = trainer.evaluate(self.data.test, self.max_eval_batches, stop=self.stop)
                self.say(f'test top-1 error {final["top1_error"]:.2%}, top-5 {final["top5_error"]:.2%}, '
                         f'loss {final["loss"]:.4f}{self.how}')
            summary['test_top1_accuracy'] = round(final['top1_accuracy'], 6)
            summary['test_top5_accuracy'] = round(final['top5_accuracy'], 6)
            summary['test_loss'] = round(final['loss'], 6)
            if self.eval_split == 'validation':
                self.record_final_test(final)
            else:
                summary['best_test_top1_accuracy'] = max(summary.get('best_test_top1_accuracy', 0.0),
                                                         summary['test_top1_accuracy'])
            self.say(f'writing the final weights, {self.dir.final_weights}')
            trainer.model.save_weights(self.dir.final_weights)
        summary['weights'] = rundir.FINAL_WEIGHTS
        summary.pop('error', None)
        # The traceback of a failure this run has since recovered from is history, not news.
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.dir.error_log)

    def announce(self, what, split):
        """Say which evaluation begins, and how large it is, before its minutes pass."""
        images = data_splits.size(split)
        if self.max_eval_batches:
            images = min(images, self.max_eval_batches * self.tp.eval_batch_size)
        views = tta.VIEWS[self.tp.eval_tta]
        each = f' x {views} {self.tp.eval_tta} TTA views' if views > 1 else ''
        self.say(f'{what}: {images} images{each} of the {split.name} split (Ctrl-C stops it; '
                 f'the same command again does it)')

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
        if int(trainer.best_step.numpy()) == trainer.step:  # the best are the final weights
            self.summary['best_test_top1_accuracy'] = self.summary['test_top1_accuracy']
            return
        last_weights = [v.numpy() for v in trainer.model.weights]
        if self.best_manager.latest_checkpoint:
            tf.train.Checkpoint(model=trainer.model).restore(self.best_manager.latest_checkpoint)
            self.announce(f'the best checkpoint on validation (step {int(trainer.best_step.numpy())})',
                          self.data.test)
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
