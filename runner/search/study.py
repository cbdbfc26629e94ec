"""The study of a search and the claim of its trials.

Storage: `search.storage: null` keeps the study in Optuna's journal file
(`<logdir>/<run_name>/study.journal`, optuna.storages.JournalFileBackend): an append-only
log of operations written under a lock that Optuna takes by creating a symbolic link, which
is atomic on NFS (v2 and later) and on Lustre, where SQLite's fcntl locks are not to be
trusted (https://www.sqlite.org/faq.html#q5). A database URL (postgresql://...) is Optuna's
RDBStorage, for machines that share no file system.

Claim: the processes of a search take trials one at a time under `.search.lock`, an
flock(2) on a file of the search directory (the one the run locks already rely on; see
runner.runlock). Under it a process takes, in this order, a trial that is RUNNING in the
study but whose run lock nobody holds (its process was killed, requeued or stopped by
SIGTERM: the trial resumes from its checkpoint with its number and values), else a new
trial while the study has fewer than `search.trials`, and takes that trial's run lock before
it lets go. So no trial is trained by two processes, none is lost, and the budget holds
however many processes share the study. Optuna's heartbeat would instead fail a silent
trial after a grace period and retry its values under a new number; the run lock says at
once, and exactly, whether the trial's process is alive.

Samplers (seeded from train_parameters.seed): TPE (Bergstra et al. 2011), random, CMA-ES
(Hansen 2016, "The CMA Evolution Strategy: A Tutorial"). No grid sampler: the runner's own
`grid:` trains every point of a grid (Optuna's GridSampler also stops the study from inside
`tell`, which only its optimize loop allows).
Pruners: the median stopping rule (Golovin et al. 2017, Google Vizier), successive halving
(Li et al. 2020, ASHA) and Hyperband (Li et al. 2018).
"""
import contextlib
import dataclasses
import fcntl
import os
import sys
import time
import urllib.parse

from runner.common import first_line
from runner.queue import runlock
from runner.rundir import RunDir

DIRECTION = 'minimize'  # the validation top-1 error
TABLE_RACE_TRIES = 3


class StudyUnavailable(Exception):
    """The study's storage cannot be opened (a database that does not answer, a driver that
    is not installed, a journal that cannot be written): one line."""


def search_dir(exp):
    """The directory of a search: its study file and lock, and its trials' run directories."""
    return RunDir.of(exp)


def trial_run_name(exp, number):
    return f'{exp.run_name}/trial{number}'


def make_sampler(search, seed):
    import optuna
    if search.sampler == 'tpe':
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials)
    if search.sampler == 'random':
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=search.startup_trials,
                                        warn_independent_sampling=False)


def trial_seed(seed, number):
    """The sampler's seed for trial `number` of a search seeded `seed`: one stream per trial."""
    import numpy as np
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def make_pruner(search, exp):
    import optuna
    interval = exp.train_parameters.val_interval
    if search.pruner == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials)
    if search.pruner == 'successive_halving':
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=interval)
    if search.pruner == 'hyperband':
        return optuna.pruners.HyperbandPruner(min_resource=interval, max_resource=exp.total_steps)
    return optuna.pruners.NopPruner()


def storage_text(exp):
    """Where the study is, as the user may see it (a URL's password left out)."""
    url = exp.search.storage
    if url is None:
        return RunDir(search_dir(exp)).study_journal
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f':{parts.password}@', ':***@', 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def open_storage(exp):
    """The Optuna storage of the search; StudyUnavailable for one that cannot be opened."""
    import optuna
    url = exp.search.storage
    if url is None:
        path = RunDir(search_dir(exp)).study_journal
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        except OSError as e:
            raise StudyUnavailable(f'search.storage: cannot write {path}: {e.strerror}') from None
    for attempt in range(TABLE_RACE_TRIES):
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as e:  # noqa: BLE001 -- the driver's errors, the ImportError of a missing one
            if 'already exists' in str(e) and attempt + 1 < TABLE_RACE_TRIES:
                # Processes started together on an empty database create Optuna's tables at
                # once; the losers of that race find them made when they try again.
                time.sleep(1)
                continue
            raise StudyUnavailable(f'search.storage: cannot open {storage_text(exp)}: {_reason(e)}') from None


def _reason(error):
    if isinstance(error, ImportError) or 'DB access module' in str(error):
        return ('its database driver is not installed (pip install "convnet-runner[postgres]" '
                'for postgresql://)')
    text = str(getattr(error, 'orig', None) or error)
    return first_line(text.replace('\n', ' ').strip())


@contextlib.contextmanager
def search_lock(exp):
    """The search's claim lock (flock; released by the kernel if the process dies)."""
    path = RunDir(search_dir(exp)).search_lock
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclasses.dataclass
class Claim:
    """A trial this process trains, its run lock held."""
    number: int
    values: dict       # {dotted key: value}
    trial: object      # optuna.trial.Trial, reported to at each evaluation
    lock: object       # runlock.RunLock of the trial's run
    resumed: bool      # left RUNNING by a process that died or was stopped

    def reporter(self):
        """on_evaluation for runner.train.run: report the evaluation's validation top-1 error
        and ask the pruner. A storage that fails meanwhile costs the pruning, not the trial."""
        def report(step, metrics):
            try:
                self.trial.report(float(metrics['top1_error']), step)
                return self.trial.should_prune()
            except Exception as e:  # noqa: BLE001 -- the database's own errors, whatever they are
                print(f'warning: trial {self.number}: cannot report to the study: {_reason(e)}',
                      file=sys.stderr, flush=True)
                return False
        return report


class Search:
    """The study of one search (created on first use unless create=False: then .study is None
    when there is none yet), with its sampler, pruner and the distributions of its space."""

    def __init__(self, exp, dists, create=True):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.exp, self.dists = exp, dists
        self.study = None
        if not create and exp.search.storage is None and not os.path.exists(RunDir(search_dir(exp)).study_journal):
            return  # no study yet, and nothing written to find that out
        self.storage = open_storage(exp)
        kw = dict(study_name=exp.run_name, storage=self.storage, pruner=make_pruner(exp.search, exp),
                  sampler=make_sampler(exp.search, exp.train_parameters.seed))
        try:
            if create:
                self.study = optuna.create_study(direction=DIRECTION, load_if_exists=True, **kw)
            elif exp.run_name in [s.study_name for s in optuna.get_all_study_summaries(self.storage)]:
                self.study = optuna.load_study(**kw)
        except Exception as e:  # noqa: BLE001 -- the database's own errors
            raise StudyUnavailable(f'search.storage: cannot open the study {exp.run_name!r} in '
                                   f'{storage_text(exp)}: {_reason(e)}') from None

    def check_space(self):
        """A StudyUnavailable naming the first key of the space that Optuna cannot search in
        the study as its trials so far had it (a key's kind, log scale or choices changed)."""
        from optuna.distributions import check_distribution_compatibility
        if self.study is None:
            return
        for t in self.study.get_trials(deepcopy=False):
            for key, old in t.distributions.items():
                new = self.dists.get(key)
                try:
                    if new is not None:
                        check_distribution_compatibility(old, new)
                except ValueError as e:
                    raise StudyUnavailable(
                        f'search.space.{key}: the study {self.study.study_name!r} searched it as '
                        f'{_shown(old)} (trial {t.number}); {first_line(e)[:-1].lower()} ({_shown(new)} '
                        f'now). Start a new study: another run_name, or --restart {self.exp.run_name}') from None

    def _trial_dir(self, number):
        return RunDir(os.path.join(self.exp.train_parameters.logdir, trial_run_name(self.exp, number)))

    def _trial_id(self, number):
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def claim_next(self):
        """The next trial for this process, its run lock held: an abandoned RUNNING one first,
        else a new one within the budget; None when the search has nothing left to train."""
        import optuna
        with search_lock(self.exp):
            trials = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
            for t in trials:
                if t.state != optuna.trial.TrialState.RUNNING:
                    continue
                if runlock.holder(self._trial_dir(t.number)) is not None:
                    continue  # its process lives and trains it (a probe that does not wait)
                lock = runlock.RunLock(self._trial_dir(t.number))
                if not lock.acquire():
                    continue
                trial_id = self._trial_id(t.number)
                # Read again now that the lock is held: its process may have told the study
                # and let go of the lock since the list above was read.
                if self.storage.get_trial(trial_id).state != optuna.trial.TrialState.RUNNING:
                    lock.release()
                    continue
                values = {k: t.params[k] for k in self.dists if k in t.params}
                return Claim(t.number, values, optuna.trial.Trial(self.study, trial_id), lock, True)
            if len(trials) >= self.exp.search.trials:
                return None
            # Seeded by the new trial's number too (Optuna numbers a study's trials 0, 1, ...,
            # and the search lock is held): processes that ask with the same seed and the same
            # history would otherwise draw the same values from their samplers' generators.
            self.study.sampler = make_sampler(self.exp.search, trial_seed(self.exp.train_parameters.seed, len(trials)))
            trial = self.study.ask(self.dists)
            lock = runlock.RunLock(self._trial_dir(trial.number))
            lock.acquire()  # a new run directory: nobody else can hold it
            return Claim(trial.number, dict(trial.params), trial, lock, False)

    def tell(self, claim, summary):
        """What the trial's run ended as, told to the study (under the trial's run lock, so no
        other process takes the trial up meanwhile). An interrupted trial is told nothing."""
        import optuna
        status = summary.get('status')
        best_val = summary.get('best_val_top1_accuracy')
        if status == 'finished' and isinstance(best_val, (int, float)):
            best_test = summary.get('best_test_top1_accuracy')
            if isinstance(best_test, (int, float)):
                claim.trial.set_user_attr('test_top1_error', round(1 - best_test, 6))
            self.study.tell(claim.number, round(1 - best_val, 6))
        elif status == 'pruned':
            self.study.tell(claim.number, state=optuna.trial.TrialState.PRUNED)
        elif status in ('failed', 'diverged', 'finished'):
            self.study.tell(claim.number, state=optuna.trial.TrialState.FAIL)

    def counts(self):
        """{state: count} of the study's trials, e.g. {'complete': 3, 'pruned': 1}."""
        out = {}
        for t in self.study.get_trials(deepcopy=False):
            name = t.state.name.lower()
            out[name] = out.get(name, 0) + 1
        return out


def _shown(dist):
    """A distribution as the space spells it: {low: 0.01, high: 0.5, log: true} or {choices: [..]}."""
    from optuna.distributions import CategoricalDistribution
    if isinstance(dist, CategoricalDistribution):
        return f'{{choices: {list(dist.choices)}}}'
    return f"{{low: {dist.low:g}, high: {dist.high:g}{', log: true' if dist.log else ''}}}"
