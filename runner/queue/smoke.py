"""The smoke run: a few steps of every experiment before the long jobs (the seed runner's
`skip_error_test`, *CIFAR vs Tensorflow 2.0*), so a mistake shows in minutes, not hours.

One smoke test checks, in a throwaway directory, on at most `SMOKE_EXAMPLES` images per
split (random ones of the right shape when the data is not here):
  - the model builds (with its optimizer, averages and checkpoint, as training builds them);
  - the train step traces into a graph, as training traces it, and `SMOKE_STEPS` steps run
    (their ops one by one, not the graph: see `_functions_run_eagerly`) with the loss and
    gradients finite;
  - an evaluation runs, through the same tf.function as the periodic evaluations;
  - a checkpoint saves, and restores into a freshly built model with every object matched
    and the weights and step as saved.
Where its time goes, per phase: benchmarks/smoke_phases.py and docs/smoke.md.

Nothing is checked twice: a pass is remembered in the experiment's logdir under a key of
what the test builds and runs (`smoke_key`), experiments that share a key are tested once,
and runs with nothing left to train, resumes of interrupted runs and runs another process
is training are not tested. The tests run in worker processes, `--smoke-jobs` at a time.
"""
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import runner
from runner import rundir  # no TensorFlow: a worker imports it quietly, first (see _worker)
from runner.common import error_summary
from runner.queue import runlock
from runner.rundir import RunDir

SMOKE_STEPS = 2
SMOKE_BATCH = 8         # images per train step at most
SMOKE_EXAMPLES = 32     # images per split at most
PHASES = ('data', 'build', 'trace', 'steps', 'evaluation', 'checkpoint', 'restore')
# Under each logdir: one file per smoke-test key that passed.
PASSED_DIR = '.smoke-passed'
# Keys of an experiment that change nothing a smoke test builds or runs: where and under
# which name a run is written, how long and how often it logs, evaluates and checkpoints
# (the test has its own), its seed (repeats of one experiment share a test), the starting
# weights (validation loads them; the test starts from scratch), and the paper's numbers.
NOT_IN_KEY = ('train_parameters.logdir', 'train_parameters.run_name', 'train_parameters.steps',
              'train_parameters.log_interval', 'train_parameters.val_interval',
              'train_parameters.checkpoint_interval', 'train_parameters.keep_checkpoints',
              'train_parameters.eval_batch_size', 'train_parameters.seed',
              'train_parameters.init_weights', 'train_parameters.init_skip_mismatch',
              'skip_error_test', 'paper')
# How long a stopped worker may take to exit before it is killed (seconds).
WORKER_EXIT_SECONDS = 3.0


class SmokeFailure(Exception):
    """A smoke test that ran but whose result is wrong (a non-finite loss, a wrong restore)."""


class Phases:
    """Wall seconds per phase of one smoke test: `with phases('build'): ...`."""

    def __init__(self, echo=False):
        self.seconds, self.echo = {}, echo

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self.echo:  # as it goes: a benchmark of a slow network shows progress
                print(f'  {name}: {self.seconds[name]:.1f}s', file=sys.stderr, flush=True)


# -- one smoke test -------------------------------------------------------------

def short_settings(exp):
    """The experiment's settings as its smoke test runs them (a dict of `to_dict` form)."""
    raw = exp.to_dict()
    raw['train_parameters'].update(run_name=exp.run_name, steps=SMOKE_STEPS,
                                   batch_size=min(exp.train_parameters.batch_size, SMOKE_BATCH),
                                   eval_batch_size=SMOKE_BATCH, log_interval=1,
                                   val_interval=SMOKE_STEPS, checkpoint_interval=1, init_weights=None)
    return raw


def short_experiment(exp, logdir):
    """The experiment as the smoke test runs it: a few small steps in `logdir`."""
    from runner.config.expand import experiment_from_dict
    raw = short_settings(exp)
    raw['train_parameters']['logdir'] = logdir
    return experiment_from_dict(raw, exp.source, exp.index)


def smoke_test(exp, phases=None):
    """One smoke test of `exp` (see the module docstring). Returns where the data came from;
    raises on any failure. `phases`, a Phases, gets the seconds of each phase."""
    phases = phases or Phases()
    tmp = tempfile.mkdtemp(prefix='convnet-smoke-')
    try:
        return _smoke_test(exp, tmp, phases)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _smoke_test(exp, tmp, phases):
    import keras
    import numpy as np
    import tensorflow as tf
    from runner.data import loader as data_loader
    from runner.training import determinism, distribute, precision
    from runner.training.trainer import Trainer
    short = short_experiment(exp, tmp)
    tp = short.train_parameters
    determinism.set_op_determinism(tp.deterministic)
    with phases('data'):
        data = data_loader.load(exp.dataset, limit=SMOKE_EXAMPLES, allow_synthetic=True)
    # 'fastest' trains in the precision it measures to be faster; measuring is not
    # checking, so the test takes the policy 'fastest' starts from.
    policy = precision.resolve_precision(tp.precision)
    precision.set_policy(policy)
    try:
        strategy = distribute.strategy_for(tp.distribution)
        keras.utils.set_random_seed(tp.seed)
        with phases('build'):
            trainer = Trainer(short, data, strategy, policy)
            trainer.adapt_layers()
            trainer.start_input()
        with phases('trace'):
            # The train step traced as training traces it: a model or an option that cannot
            # be a graph fails here (Python control flow on a tensor, a .numpy() call, an
            # unknown batch dimension), as training's first step would.
            trainer.step_fn.get_concrete_function(trainer.iterator, ())
        with phases('steps'), _functions_run_eagerly(strategy.num_replicas_in_sync == 1):
            for _ in range(SMOKE_STEPS):
                trainer.train_step(trainer.iterator)
            metrics = trainer.read_train_metrics()
        if int(trainer.bad_step.numpy()) >= 0 or not np.isfinite(metrics['loss']):
            raise SmokeFailure(f"the loss or a gradient became NaN/inf (mean loss {metrics['loss']:g})")
        with phases('evaluation'):  # its graph: tracing that is most of its cost (docs/smoke.md)
            with trainer.averaged_weights():
                m = trainer.evaluate(data.eval, max_batches=1)
        if not np.isfinite(m['loss']):
            raise SmokeFailure(f"the evaluation's loss is {m['loss']:g}")
        with phases('checkpoint'):
            step = trainer.step
            saved = tf.train.CheckpointManager(trainer.checkpoint, RunDir.of(short).checkpoints,
                                               max_to_keep=1).save(checkpoint_number=step)
            before = trainer.model.trainable_weights[0].numpy()
        del trainer
        keras.backend.clear_session()
        with phases('restore'):
            fresh = Trainer(short, data, strategy, policy)
            fresh.checkpoint.restore(saved).assert_existing_objects_matched()
            restored_step, after = fresh.step, fresh.model.trainable_weights[0].numpy()
        del fresh
        keras.backend.clear_session()
        if restored_step != step:
            raise SmokeFailure(f'the checkpoint restored step {restored_step}, expected {step}')
        if not np.array_equal(before, after):
            raise SmokeFailure('the checkpoint restored other weights than it saved')
        return data.info.description
    finally:
        precision.set_policy('float32')


@contextlib.contextmanager
def _functions_run_eagerly(eager):
    """The train steps run their ops one by one instead of executing the traced graph. The
    first execution of a graph is TensorFlow instantiating it (lowering, placement, a kernel
    made for each of its nodes): for a deep network most of the test (ResNet-1001: 119 of
    248 s, docs/smoke.md), and it checks nothing the trace and the same ops run eagerly do
    not. Only on one replica: a strategy over several devices or workers runs its graphs, as
    training does."""
    import tensorflow as tf
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(eager or before)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


def failure_line(error):
    """One line for a failed smoke test (common.error_summary)."""
    return str(error) if isinstance(error, SmokeFailure) else error_summary(error)


# -- what is tested --------------------------------------------------------------

def _drop(d, dotted):
    *path, last = dotted.split('.')
    for part in path:
        d = d.get(part, {})
    d.pop(last, None)


def _file_digest(paths):
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(path.encode() + b'\0')
        try:
            with open(path, 'rb') as f:
                h.update(f.read())
        except OSError:
            h.update(b'<unreadable>')
    return h.hexdigest()


def model_sources(exp):
    """The source files a model is built from: its function's file and, for this project's
    models, the zoo's other modules (its shared layers)."""
    from runner.registry import ZOO_PACKAGE, resolve_model_fn
    fn = resolve_model_fn(exp)
    path = inspect.getsourcefile(fn) or ''
    if fn.__module__.split('.')[0] == ZOO_PACKAGE:
        folder = os.path.dirname(path)
        return [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.py')]
    return [path]


def versions():
    """The versions a smoke pass depends on besides the experiment: the runner (its version
    and its sources, which change between releases of a checkout), TensorFlow and Keras."""
    import keras
    import tensorflow as tf
    here = os.path.dirname(os.path.abspath(__file__))
    sources = [os.path.join(here, f) for f in os.listdir(here) if f.endswith('.py')]
    return {'runner': runner.__version__, 'runner_sources': _file_digest(sources)[:16],
            'tensorflow': tf.__version__, 'keras': keras.__version__}


def smoke_key(exp, data_here, project_versions=None):
    """The key a smoke pass is remembered under: what the test builds and runs (the
    experiment as `short_settings` gives it, model parameters with the function's defaults,
    less NOT_IN_KEY), whether the real data was here, the versions, and the model's sources."""
    from runner.registry import resolve_model_fn, resolved_model_parameters
    settings = short_settings(exp)
    settings['model_parameters'] = resolved_model_parameters(resolve_model_fn(exp), exp.model_parameters)
    for dotted in NOT_IN_KEY:
        _drop(settings, dotted)
    record = {'experiment': settings, 'data_here': bool(data_here),
              'versions': project_versions or versions(), 'model_sources': _file_digest(model_sources(exp))}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]


def passed_path(exp, key):
    return os.path.join(exp.train_parameters.logdir, PASSED_DIR, key + '.json')


def remember_pass(exp, key, seconds):
    """Record a pass in the experiment's logdir; False when it could not be written."""
    path = passed_path(exp, key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rundir.write_atomic(path, json.dumps({'run_name': exp.run_name, 'model': exp.model,
                                              'seconds': round(seconds, 1),
                                              'when': time.strftime('%Y-%m-%dT%H:%M:%S%z')}) + '\n')
        return True
    except OSError:
        return False


def has_nothing_to_train(exp):
    """Finished at its last step: the training queue skips it."""
    return rundir.is_finished(rundir.read_summary(RunDir.of(exp)), exp.total_steps)


def is_interrupted_resume(exp):
    """Stopped with a checkpoint to resume from (interrupted, or killed while running):
    it passed its smoke test, or was started without one, before it trained."""
    run_dir = RunDir.of(exp)
    summary = rundir.read_summary(run_dir) or {}
    return (summary.get('status') in ('interrupted', 'running')
            and os.path.isdir(run_dir.checkpoints)
            and any(f.endswith('.index') for f in os.listdir(run_dir.checkpoints)))


@dataclasses.dataclass
class Item:
    """One selected experiment in the smoke run: tested, or why not."""
    exp: object
    key: str = ''
    skip: str = ''          # why it is not tested ('' when it is)
    same_as: object = None  # the Item whose test stands for this one (same key)
    seconds: float = 0.0
    source: str = ''
    error: str = ''
    done: bool = False


def plan(checked, every=False, restarting=()):
    """The Items of the smoke run in file order, and the ones to test. Without `every`
    (a plain run), experiments whose key passed before, finished runs, resumes of
    interrupted runs and runs another process trains are not tested; with it (`--smoke`
    alone) every experiment is. Experiments that share a key are tested once either way."""
    project = versions()
    items, first = [], {}
    for c in checked:
        exp = c.exp
        if exp.skip_error_test:
            continue
        run_dir = RunDir.of(exp)
        item = Item(exp, smoke_key(exp, c.data_ready, project))
        fresh = exp.run_name in restarting
        if not every and not fresh:
            if has_nothing_to_train(exp):
                continue  # the training queue says it is finished and skipped
            holder = runlock.holder(run_dir)
            if holder is not None:
                item.skip = f'another process trains it ({runlock.describe(holder)})'
            elif is_interrupted_resume(exp):
                item.skip = 'resuming an interrupted run; tested before it started'
            elif os.path.exists(passed_path(exp, item.key)):
                item.skip = (f'passed before with these settings, model sources and versions '
                             f'(remembered in {os.path.join(exp.train_parameters.logdir, PASSED_DIR)}; '
                             f'--smoke tests it again)')
        if not item.skip:
            item.same_as = first.setdefault(item.key, item)
            if item.same_as is item:
                item.same_as = None
        items.append(item)
    return items, [i for i in items if not i.skip and i.same_as is None]


# -- running the tests -----------------------------------------------------------

def default_jobs():
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _die_with_parent():
    """Ask Linux to kill this process when its parent dies, even by SIGKILL: a smoke worker
    is never left behind. Elsewhere the parent's own clean-up has to do."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def prepare_process(threads=None):
    """TensorFlow as a smoke worker runs it: imported quietly (its C++ start-up notices
    held back, as the command does), with `threads` threads inside an op (the cores are
    shared among the workers; the pool that runs independent ops side by side and the
    input pipeline's keep TensorFlow's defaults)."""
    from runner.training import distribute
    distribute.quiet_tensorflow()
    import tensorflow as tf
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    # Grappler, TensorFlow's graph optimiser, was about half of the first execution of a
    # deep network's train step (constant folding, common-subgraph elimination, the remapper's
    # fusions, over a graph of tens of thousands of nodes). It rewrites how the graph runs,
    # not what it computes, and a smoke test runs two steps: the workers run the graph as
    # traced. Training, in its own process, keeps it.
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})


def _worker(conn, threads):
    """A smoke worker process: smoke-tests the experiments the parent sends down `conn`,
    one at a time, answering each, until it gets None or the pipe closes."""
    _die_with_parent()
    # Ctrl-C at a terminal reaches the whole process group: the parent alone decides, and
    # stops the workers. SIGTERM (the parent's, or a scheduler's) ends a worker at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by Worker until now
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    prepare_process(threads)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        index, exp = task
        start = time.time()
        try:
            source = smoke_test(exp)
            conn.send(('ok', index, time.time() - start, source))
        except Exception as e:  # every failure is reported; the worker goes on
            conn.send(('fail', index, time.time() - start, failure_line(e)))


@contextlib.contextmanager
def _signals_held():
    """Start a worker whole. The worker starts with SIGINT blocked (a signal mask survives
    fork and exec) until _worker ignores it: a Ctrl-C to the process group in the second the
    new interpreter takes to start killed it there with a traceback. This process's own
    SIGINT or SIGTERM in that moment is held until the worker has its start-up data (the
    KeyboardInterrupt raised in the middle of writing it left the worker reading half of it,
    with a traceback), then raised as it would have been."""
    held = []
    stops = (signal.SIGINT, signal.SIGTERM)
    try:
        handlers = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in stops}
    except ValueError:  # not the main thread: no handlers to hold
        handlers = {}
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if held and callable(handlers.get(held[0])):
        handlers[held[0]](held[0], None)


class Worker:
    """A worker process, the parent's end of its pipe, and the test it runs (an index)."""

    def __init__(self, ctx, threads):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, threads), daemon=True)
        with _signals_held():
            self.process.start()
        child.close()
        self.index = None

    def send(self, task):
        self.index = task[0] if task else None
        try:
            self.conn.send(task)
        except OSError:  # it died already; its sentinel says so next
            pass

    def stop(self, deadline):
        """Terminate (SIGTERM, immediate), then kill whatever is left at the deadline."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _run_in_workers(todo, jobs, report):
    """Smoke-test `todo` in `jobs` worker processes, each fed one test at a time by this
    process (so it always knows which test a worker runs, also when the worker dies);
    `report(item)` as each test ends. Every worker is stopped on the way out, however."""
    import multiprocessing
    from multiprocessing.connection import wait
    # Spawned, not forked: this process has TensorFlow's threads running, which a fork does
    # not carry over.
    ctx = multiprocessing.get_context('spawn')
    threads = max(1, default_jobs() // jobs)
    pending = list(range(len(todo)))
    workers = []

    def finish(item, seconds, source='', error=''):
        item.seconds, item.source, item.error, item.done = seconds, source, error, True
        report(item)

    def feed(worker):
        worker.send((pending[0], todo[pending.pop(0)].exp) if pending else None)

    try:
        for _ in range(min(jobs, len(todo))):
            workers.append(Worker(ctx, threads))
            feed(workers[-1])
        while not all(item.done for item in todo):
            busy = [w for w in workers if w.index is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for w in busy:
                if w.index is None:
                    continue
                if w.conn in ready:
                    try:
                        kind, index, seconds, text = w.conn.recv()
                    except EOFError:
                        pass  # it died: its sentinel is ready too
                    else:
                        finish(todo[index], seconds, **{'source' if kind == 'ok' else 'error': text})
                        feed(w)
                        continue
                if w.process.sentinel in ready or not w.process.is_alive():
                    # A worker that died inside a test (killed, out of memory, a crash in
                    # TensorFlow's C++): that test fails, a new worker takes the rest.
                    w.process.join()
                    code = w.process.exitcode
                    finish(todo[w.index], 0.0, error=f'the smoke worker died (exit status {code}'
                                                     f"{': killed by a signal, out of memory?' if code < 0 else ''})")
                    w.index = None
                    w.conn.close()
                    workers.remove(w)
                    if pending:
                        workers.append(Worker(ctx, threads))
                        feed(workers[-1])
        deadline = time.monotonic() + WORKER_EXIT_SECONDS
        for w in workers:  # each was sent None when nothing was left: they exit by themselves
            w.process.join(max(0.0, deadline - time.monotonic()))
    finally:
        deadline = time.monotonic() + WORKER_EXIT_SECONDS
        for w in workers:
            w.stop(deadline)


def _run_here(todo, report):
    """Smoke-test `todo` in this process (multi-worker experiments: their collective
    strategy lives here, and every worker of the cluster must take part)."""
    for item in todo:
        start = time.time()
        try:
            item.source = smoke_test(item.exp)
        except Exception as e:
            item.error = failure_line(e)
        item.seconds = time.time() - start
        item.done = True
        report(item)


def run_smoke(checked, every=False, restarting=(), jobs=None):
    """The smoke run of the checked experiments (cli.Checked), its lines in file order.
    Returns the failures, [(experiment, one line)], in file order. KeyboardInterrupt
    (Ctrl-C, or SIGTERM as the command maps it) stops every worker and propagates."""
    from runner.training import distribute
    items, todo = plan(checked, every, restarting)
    if not items:
        return []
    jobs = max(1, min(jobs or default_jobs(), len(todo) or 1))
    print(f'smoke test: {len(items)} experiment(s), {len(todo)} to test'
          + (f' in {jobs} worker processes' if jobs > 1 else ''), flush=True)
    printed = [0]

    def report(_item):
        # Lines in file order: print every item up to the first one still running.
        while printed[0] < len(items):
            item = items[printed[0]]
            lead = item.same_as or item
            if not item.skip and not lead.done:
                return
            name = item.exp.run_name
            if item.skip:
                print(f'  skip  {name}: {item.skip}', flush=True)
            elif lead.error:
                print(f'  FAIL  {name}: {lead.error}' + (f' (as {lead.exp.run_name}: same test)'
                                                        if lead is not item else ''), flush=True)
            elif lead is not item:
                print(f'  ok    {name} (same test as {lead.exp.run_name})', flush=True)
            else:
                print(f'  ok    {name} ({item.seconds:.1f}s, {item.source})', flush=True)
            printed[0] += 1

    here = [i for i in todo if distribute.is_multi_worker(i.exp.train_parameters.distribution)]
    elsewhere = [i for i in todo if i not in here]
    report(None)  # the skipped ones before the first test
    try:
        if elsewhere:
            _run_in_workers(elsewhere, jobs, report)
        _run_here(here, report)
    except KeyboardInterrupt:
        print('smoke test: interrupted; the workers are stopped and nothing was trained',
              file=sys.stderr, flush=True)
        raise
    failures = []
    for item in items:
        lead = item.same_as or item
        if item.skip:
            continue
        if lead.error:
            failures.append((item.exp, lead.error))
        elif not remember_pass(item.exp, item.key, lead.seconds):
            print(f'  note: could not record the pass of {item.exp.run_name} in '
                  f'{os.path.dirname(passed_path(item.exp, item.key))}', flush=True)
    return failures
