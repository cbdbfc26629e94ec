"""Hyperparameter search (issue 30): the `search:` section's refusals, trials as runs shared by
real processes through a real journal file and a real PostgreSQL server, pruning, a trial
killed (SIGTERM, then SIGKILL) and resumed with its number and values, status, report and
--list of a search, and seeded sampling.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import make_image_folder, one_line_error
from test_resilience import Child, run_cli, summary, write_yaml

# The PostgreSQL server's programs: Debian's postgresql package (.ci/run installs it).
PG_BIN = sorted(__import__('glob').glob('/usr/lib/postgresql/*/bin'))

pytestmark = pytest.mark.slow

SPACE = {'train_parameters.lr_values[0]': {'low': 0.02, 'high': 0.2, 'log': True},
         'model_parameters.width': {'choices': [4, 8]}}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """4 classes of 32x32 PNGs told apart by colour: a few steps at lr 0.1 learn them."""
    return make_image_folder(tmp_path_factory.mktemp('search-imgs'))


def search_doc(images, logdir, trials=2, space=None, steps=8, model='tiny_cnn', **search):
    """A search over tiny_cnn on the colour-coded images: `steps` steps, an evaluation every 4."""
    tp = {'logdir': str(logdir), 'run_name': 's', 'batch_size': 16, 'eval_batch_size': 64,
          'lr_values': [0.1], 'lr_boundaries': [steps], 'log_interval': 2, 'val_interval': 4,
          'checkpoint_interval': 2}
    return {'module': 'tiny_models', 'model': model, 'model_parameters': {},
            'dataset': {'image_folder': images, 'validation_fraction': 0.25}, 'train_parameters': tp,
            'search': {'trials': trials, 'startup_trials': 1, 'space': space or SPACE, **search}}


def load_study(logdir, storage=None):
    import optuna
    if storage is None:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(os.path.join(logdir, 's', 'study.journal')))
    return optuna.load_study(study_name='s', storage=storage)


def hparams(run_dir):
    """The HParams values of a run's session, by TensorBoard's own parser."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata
    from runner.rundir import RunDir
    for raw in tf.data.TFRecordDataset(RunDir(run_dir).overview).as_numpy_iterator():
        for v in tf.compat.v1.Event.FromString(raw).summary.value:
            if v.tag == metadata.SESSION_START_INFO_TAG:
                info = metadata.parse_session_start_info_plugin_data(v.metadata.plugin_data.content)
                return {k: getattr(h, h.WhichOneof('kind')) for k, h in info.hparams.items()}
    return {}


def starts(text):
    """The trial runs a process's output says it started or resumed."""
    return re.findall(r'^(s/trial\d+): (?:starting|resuming) \(', text, re.M)


# ---------------------------------------------------------------------------
# 1. refusals: one line, exit status 2, nothing written

@pytest.mark.parametrize('change, needles', [
    ({'search': {'trials': 2, 'spce': {}}}, ["search.spce: unknown key", "'search.space'"]),
    ({'space': {'train_parameters.weight_decay': {'low': 1e-5, 'hihg': 1e-3}}},
     ['search.space.train_parameters.weight_decay.hihg: unknown key', "'high'"]),
    ({'space': {'train_parameters.weight_dcay': {'low': 1e-5, 'high': 1e-3}}},
     ["train_parameters has no key 'weight_dcay'", "'weight_decay'"]),
    ({'space': {'train_parameters.lr_values[1]': {'low': 0.01, 'high': 0.1}}},
     ['lr_values[1]: index out of range', 'has 1 items']),
    ({'space': {'train_parameters.weight_decay': {'low': 0.0, 'high': 1e-3, 'log': True}}},
     ['weight_decay: log needs low > 0']),
    ({'space': {'train_parameters.weight_decay': {'low': 1e-3, 'high': 1e-5}}},
     ['weight_decay: low 0.001 is greater than high 1e-05']),
    ({'grid': {'model_parameters.width': [4, 8]}}, ['search.space.model_parameters.width: the grid sweeps']),
    ({'repeats': 2}, ['repeats: not with search']),
    ({'space': {'train_parameters.momentum': {'low': 0.5, 'high': 1.0}}},
     ['with train_parameters.momentum=1.0', 'momentum: must be in [0, 1)']),
    ({'space': {'model_parameters.widht': {'choices': [4, 8]}}}, ['widht']),
    ({'validation_fraction': 0.0}, ['search: needs held-out data', 'dataset.validation_fraction']),
    ({'storage': 'postgresql://nobody@127.0.0.1:9/none'},
     ['search.storage: cannot open postgresql://nobody@127.0.0.1:9/none']),
    ({'unprepared': True}, ["dataset: 'cifar10' is not prepared in"]),
])
def test_a_wrong_search_is_one_line_and_nothing_is_written(images, tmp_path, capsys, change, needles):
    from runner import cli
    doc = search_doc(images, tmp_path / 'logs')
    if 'space' in change:
        doc['search']['space'] = change['space']
    if 'storage' in change:
        doc['search']['storage'] = change['storage']
    if 'validation_fraction' in change:
        doc['dataset']['validation_fraction'] = change['validation_fraction']
    if 'unprepared' in change:
        doc['dataset'] = {'name': 'cifar10', 'data_dir': str(tmp_path / 'no-tfds'), 'validation_fraction': 0.1}
    for key in ('search', 'grid', 'repeats'):
        if key in change and key != 'space':
            doc[key] = change[key]
    path = write_yaml(tmp_path / 'bad.yaml', doc)
    line = one_line_error(capsys, cli.main([path, '--no-smoke']), 2, *needles)
    assert line.count('experiment 1') == 1, line  # labelled once, not by the corner and the search
    assert not os.path.exists(tmp_path / 'logs' / 's' / 'trial0')


# ---------------------------------------------------------------------------
# 2. two processes, one study: every trial trained once

@pytest.mark.parametrize('sampler', ['tpe', 'random', 'cmaes'])
def test_processes_that_ask_at_once_get_different_values(tmp_path, sampler):
    """Two processes (two Search objects, as each process opens its own) claiming their first
    trials before either is told: the same seed and history must not give the same values."""
    from runner.config.expand import experiment_from_dict
    from runner.search import space, study
    doc = search_doc('/nowhere', tmp_path, trials=4, sampler=sampler)
    exp = experiment_from_dict(doc)
    searches = [study.Search(exp, space.distributions_of(exp)) for _ in range(2)]
    claims = [s.claim_next() for s in searches]
    assert [c.number for c in claims] == [0, 1]
    assert claims[0].values != claims[1].values
    for c in claims:
        c.lock.release()


def test_two_processes_share_one_study_and_no_trial_is_trained_twice(images, tmp_path):
    """Two processes started at once on one file: together they train exactly `trials` trials,
    each once (one start per trial across both, one session in its summary), each trial's run
    directory holds its sampled values, and the study has that many complete trials whose
    values are the runs' and whose test error is a user attribute."""
    logdir = tmp_path / 'logs'
    # No pruner: every trial is trained to the end, whatever values the two processes draw.
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, logdir, trials=3, steps=4, pruner='none'))
    a = Child([path, '--no-smoke'], tmp_path / 'a.err')
    b = Child([path, '--no-smoke'], tmp_path / 'b.err')
    assert a.finish() == 0, a.stdout + a.stderr
    assert b.finish() == 0, b.stdout + b.stderr
    started = starts(a.stdout) + starts(b.stdout)
    assert sorted(started) == ['s/trial0', 's/trial1', 's/trial2'], a.stdout + b.stdout
    study = load_study(logdir)
    assert [t.state.name for t in study.trials] == ['COMPLETE'] * 3
    # Started together, the two processes still drew different values for their first trials.
    values = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(values)) == 3, values
    import yaml
    for t in study.trials:
        run = logdir / 's' / f'trial{t.number}'
        s = summary(run)
        assert s['status'] == 'finished' and len(s['sessions']) == 1, s
        assert t.value == pytest.approx(1 - s['best_val_top1_accuracy'], abs=1e-6)
        assert t.user_attrs['test_top1_error'] == pytest.approx(1 - s['best_test_top1_accuracy'], abs=1e-6)
        config = yaml.safe_load(open(run / 'config.yaml'))
        assert config['train_parameters']['lr_values'][0] == t.params['train_parameters.lr_values[0]']
        assert config['model_parameters']['width'] == t.params['model_parameters.width']
        assert s['trial_values'] == t.params
    # The report: the study's best trial, a table of the trials, Optuna's two plots.
    from runner.commands import report
    out, pictures, _, _ = report.write_report(str(logdir))
    text = open(out).read()
    best = study.best_trial
    assert f'Best trial: **{best.number}**' in text, text
    assert f'validation top-1 error {100 * best.value:.2f}%' in text
    assert re.search(r'^\| 2 \| finished \| 4/4 \|', text, re.M), text
    for name in ('search-s-history.png', 'search-s-importance.png'):
        assert any(p.endswith(name) and os.path.getsize(p) > 10_000 for p in pictures), pictures


def test_the_trials_of_one_process_read_the_dataset_once(images, tmp_path, monkeypatch, capsys):
    """Reading the data is a process's cost, not each trial's (the benchmark's share not
    training): three trials in one process, one read; a dataset key in the space reads again."""
    from runner import cli
    from runner.data import loader
    reads = []
    real = loader.load
    monkeypatch.setattr(loader, 'load', lambda cfg, *a, **k: reads.append(cfg) or real(cfg, *a, **k))
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, tmp_path / 'a', trials=3, steps=4, pruner='none'))
    assert cli.main([path, '--no-smoke']) == 0, capsys.readouterr()
    assert len(reads) == 1
    reads.clear()
    space = {**SPACE, 'dataset.cutout_size': {'choices': [0, 8]}}
    doc = search_doc(images, tmp_path / 'b', trials=3, steps=4, pruner='none', space=space)
    assert cli.main([write_yaml(tmp_path / 't.yaml', doc), '--no-smoke']) == 0, capsys.readouterr()
    cutouts = [cfg.cutout_size for cfg in reads]
    assert 1 <= len(reads) <= 3 and all(a != b for a, b in zip(cutouts, cutouts[1:])), cutouts


def test_a_finished_trials_input_iterators_are_deleted_off_the_main_thread(images, tmp_path,
                                                                          monkeypatch, capsys):
    """Deleting a tf.data iterator can wait up to a minute for its autotuning thread
    (runner.training.release), which held a search's processes between trials. Every iterator a
    trial trained or evaluated from is deleted, by the end of the trial, and not on the thread
    that goes on to the next trial."""
    import threading
    import weakref
    from runner import cli
    from runner.training import release
    deleted_on, taken = [], []
    real = release.delete_in_background

    def watched(owner, attribute):
        taken.append(attribute)
        it = getattr(owner, attribute)
        # Keep the weak reference alive in the list: its callback runs where the iterator dies.
        deleted_on.append(weakref.ref(it, lambda _: deleted_on.append(threading.current_thread())))
        del it
        return real(owner, attribute)

    monkeypatch.setattr(release, 'delete_in_background', watched)
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, tmp_path / 'a', trials=2, pruner='none'))
    assert cli.main([path, '--no-smoke']) == 0, capsys.readouterr()
    for thread in threading.enumerate():
        if thread.name.startswith('delete-'):
            thread.join(120)
    threads = [t for t in deleted_on if isinstance(t, threading.Thread)]
    # Per trial: the training batches, the evaluations at steps 4 and 8, the test.
    assert taken.count('iterator') == 2 and taken.count('eval_iterator') >= 6, taken
    assert len(threads) == len(taken), (len(threads), taken)
    assert threading.main_thread() not in threads


# ---------------------------------------------------------------------------
# 3. pruning

def test_a_lagging_trial_is_pruned_and_that_is_not_a_failure(images, tmp_path, capsys):
    """Trial 0 learns (lr 0.1); trial 1 cannot (lr 0, its error stays at chance) and the median
    pruner stops it at its second evaluation, where trial 0 is far ahead: exit status 0,
    `pruned` in the summary, the results table, `status` and the study; its checkpoint kept."""
    from runner.queue import status
    logdir = tmp_path / 'logs'
    lr = 'train_parameters.lr_values[0]'
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, logdir, trials=1, steps=16,
                                                      space={lr: {'low': 0.1, 'high': 0.1}}))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 0, out + err
    # The same search, one trial more, its space now the rate that cannot learn.
    rc, out, err = run_cli(capsys, path, '--no-smoke', '--set', 'search.trials=2',
                           '--set', f"search.space={{'{lr}': {{low: 0.0, high: 0.0}}}}")
    assert rc == 0, out + err
    run = logdir / 's' / 'trial1'
    s = summary(run)
    k = s['steps']
    assert s['status'] == 'pruned' and k in (4, 8, 12), s  # at an evaluation, before the end
    assert re.search(rf'^s/trial1\s+pruned\s+{k}\s', out, re.M), out
    assert f's/trial1: pruned at step {k}' in out
    assert os.path.exists(run / 'checkpoints' / f'ckpt-{k}.index')
    capsys.readouterr()
    assert status.main([str(logdir)]) == 0
    assert re.search(rf'^s/trial1\s+pruned\s+{k}/16', capsys.readouterr().out, re.M)
    study = load_study(logdir)
    assert [t.state.name for t in study.trials] == ['COMPLETE', 'PRUNED']
    # TensorBoard: the sampled value among the trial's HParams; its session neither a success
    # nor a failure (HParams has no word for pruned).
    assert hparams(run)[lr] == 0.0
    from test_tensorboard import session_status
    assert session_status(str(run))['end'] == ['STATUS_UNKNOWN']
    # --list: the search as one line, its budget and the trials done.
    rc, out, err = run_cli(capsys, path, '--list', '--set', 'search.trials=2')
    assert rc == 0 and re.search(r'^0\s+s\s+tiny_cnn .* search: 2/2 trials done \(1 pruned\)$', out, re.M), out
    # A key's kind cannot change in a study: one line.
    from runner import cli
    one_line_error(capsys, cli.main([path, '--no-smoke', '--set', f"search.space={{'{lr}': {{choices: [0.1]}}}}"]),
                   2, f'search.space.{lr}: the study', 'searched it as {low: 0.1, high: 0.1}')
    # Nothing left: the next process trains nothing and says so.
    rc, out, err = run_cli(capsys, path, '--no-smoke', '--set', 'search.trials=2')
    assert rc == 0 and 'all 2 trials are taken or done' in out, out + err


# ---------------------------------------------------------------------------
# 4. preemption

def test_a_stopped_or_killed_trial_resumes_with_its_number_and_values(images, tmp_path):
    """SIGTERM in the middle of trial 0: it checkpoints and stays RUNNING in the study. The next
    process resumes trial 0 (not a new trial) from that checkpoint; SIGKILL it mid-trial, and
    the one after resumes trial 0 again and finishes it: one trial in the study, complete,
    with the values it was sampled with, its run made of three sessions."""
    logdir = tmp_path / 'logs'
    doc = search_doc(images, logdir, trials=1, steps=40, model='paced_cnn')
    doc['model_parameters'] = {'step_seconds': 0.25}
    doc['search']['space'] = {'train_parameters.lr_values[0]': SPACE['train_parameters.lr_values[0]']}
    path = write_yaml(tmp_path / 's.yaml', doc)
    run = logdir / 's' / 'trial0'
    first = Child([path, '--no-smoke'], tmp_path / 'a.err')
    first.wait_for(r'^s/trial0 step 4/40')
    first.kill(signal.SIGTERM)
    assert first.finish() == 1, first.stdout + first.stderr
    stopped = summary(run)
    assert stopped['status'] == 'interrupted', stopped
    values = stopped['trial_values']
    assert [t.state.name for t in load_study(logdir).trials] == ['RUNNING']

    second = Child([path, '--no-smoke'], tmp_path / 'b.err')
    second.wait_for(r'^s/trial0: trial 0 of the search was left unfinished')
    k = stopped['steps']
    second.wait_for(rf'^s/trial0 step ({k + 3}|{k + 4})/40')  # a checkpoint past the first stop
    second.kill(signal.SIGKILL)

    third = Child([path, '--no-smoke'], tmp_path / 'c.err')
    assert third.finish() == 0, third.stdout + third.stderr
    assert starts(third.stdout) == ['s/trial0'] and 'resuming from' in third.stdout
    s = summary(run)
    assert s['status'] == 'finished' and s['steps'] == 40 and s['trial_values'] == values, s
    assert len(s['sessions']) == 3 and s['sessions'][1]['start_step'] == stopped['steps'], s['sessions']
    trials = load_study(logdir).trials
    assert [(t.number, t.state.name, t.params) for t in trials] == [(0, 'COMPLETE', values)]
    assert not os.path.exists(logdir / 's' / 'trial1')


# ---------------------------------------------------------------------------
# 5. PostgreSQL

@pytest.fixture(scope='module')
def postgres():
    """A real PostgreSQL server of its own, started by a non-root user (`postgres` when the
    tests run as root) in a temporary directory, listening on a Unix socket there only: the
    URL of its database `study`. Fails under CI=true when it cannot start; skipped elsewhere."""
    root = tempfile.mkdtemp(prefix='pg-', dir='/tmp')  # a socket path must be short
    user = 'postgres' if os.geteuid() == 0 else None
    as_user = ['runuser', '-u', user, '--'] if user else []

    def pg(tool, *args):
        subprocess.run(as_user + [os.path.join(PG_BIN[-1], tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    try:
        if not PG_BIN:
            raise FileNotFoundError('no /usr/lib/postgresql/*/bin: apt-get install postgresql')
        if user:
            shutil.chown(root, user)
        data = os.path.join(root, 'data')
        pg('initdb', '-D', data, '-A', 'trust', '-U', 'postgres')
        pg('pg_ctl', '-D', data, '-l', os.path.join(root, 'log'), '-w', 'start',
           '-o', f"-k {root} -c listen_addresses='' -p 5432")
        pg('createdb', '-h', root, '-p', '5432', '-U', 'postgres', 'study')
    except (OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(root, ignore_errors=True)
        stderr = getattr(e, 'stderr', b'') or b''
        message = f'a test PostgreSQL cannot start here: {e} {stderr.decode(errors="replace")}'
        if os.environ.get('CI') == 'true':
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f'postgresql://postgres@/study?host={root}&port=5432'
    finally:
        subprocess.run(as_user + [os.path.join(PG_BIN[-1], 'pg_ctl'), '-D', data, '-m', 'immediate',
                                  'stop'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_a_study_in_postgresql(images, tmp_path, postgres):
    """storage: a postgresql:// URL. Two processes on one file, one study in the database:
    two trials, each trained once, both complete in the database."""
    import optuna
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, logdir, trials=2, steps=4, storage=postgres))
    a = Child([path, '--no-smoke'], tmp_path / 'a.err')
    b = Child([path, '--no-smoke'], tmp_path / 'b.err')
    assert a.finish() == 0, a.stdout + a.stderr
    assert b.finish() == 0, b.stdout + b.stderr
    assert sorted(starts(a.stdout) + starts(b.stdout)) == ['s/trial0', 's/trial1']
    study = load_study(logdir, optuna.storages.RDBStorage(postgres))
    assert [t.state.name for t in study.trials] == ['COMPLETE'] * 2
    assert not os.path.exists(logdir / 's' / 'study.journal')


# ---------------------------------------------------------------------------
# 6. the dashboard, 7. seeded sampling

def test_optuna_dashboard_reads_the_study_through_its_http_api(images, tmp_path, capsys):
    """optuna-dashboard started on the search's journal file, as docs/search.md says, serves the
    study and its trial through its HTTP API (/api/studies, /api/studies/<id>)."""
    import socket
    import sys
    import urllib.request
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, logdir, trials=1, steps=4))
    rc, out, err = run_cli(capsys, path, '--no-smoke')
    assert rc == 0, out + err
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    dashboard = os.path.join(os.path.dirname(sys.executable), 'optuna-dashboard')
    proc = subprocess.Popen([dashboard, str(logdir / 's' / 'study.journal'), '--host', '127.0.0.1',
                             '--port', str(port), '--quiet'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/studies', timeout=5) as r:
                    studies = json.load(r)['study_summaries']
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.5)
        assert [s['study_name'] for s in studies] == ['s']
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}",
                                    timeout=10) as r:
            detail = json.load(r)
        (trial,) = detail['trials']
        assert trial['number'] == 0 and trial['state'] == 'Complete'
        assert {p['name'] for p in trial['params']} == set(SPACE)
        assert [v['step'] for v in trial['intermediate_values']] == [4]  # the one evaluation
    finally:
        proc.kill()
        proc.wait(30)


def _sampled(logdir, seed, sampler):
    """The values of three trials of a search in `logdir`, one process, each told the same
    objective (a function of the values), through the runner's own claim and tell."""
    from runner.config.expand import experiment_from_dict
    from runner.search import space, study
    doc = search_doc('/nowhere', logdir, trials=3, sampler=sampler)
    doc['train_parameters']['seed'] = seed
    exp = experiment_from_dict(doc)
    search = study.Search(exp, space.distributions_of(exp))
    values = []
    for _ in range(3):
        claim = search.claim_next()
        lr = claim.values['train_parameters.lr_values[0]']
        search.tell(claim, {'status': 'finished', 'best_val_top1_accuracy': 1 - abs(lr - 0.1)})
        claim.lock.release()
        values.append(claim.values)
    assert search.claim_next() is None  # the budget holds
    return values


@pytest.mark.parametrize('sampler', ['tpe', 'random', 'cmaes'])
def test_a_seeded_sampler_samples_the_same_values_again(tmp_path, sampler):
    """With one process, the same file and the same objective values, a second search in a fresh
    logdir samples the same values; another train_parameters.seed samples others."""
    first = _sampled(tmp_path / 'a', 0, sampler)
    assert _sampled(tmp_path / 'b', 0, sampler) == first
    assert _sampled(tmp_path / 'c', 1, sampler) != first


# ---------------------------------------------------------------------------
# 8. the smoke run at the corners

def test_a_search_is_smoke_tested_at_the_corners_that_change_the_model(images, tmp_path, capsys):
    """The smoke run tries each end of a model parameter's range (here width 4 and 8) with the
    other keys at their largest, once each, not once per trial; the passes are remembered, so
    the search's own smoke run before its trials tests nothing again."""
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, logdir, trials=1, steps=4))
    rc, out, err = run_cli(capsys, path, '--smoke', '--smoke-jobs', '1')
    assert rc == 0, out + err
    assert 'smoke test: 2 experiment(s), 2 to test' in out, out
    assert re.search(r'^  ok    s \(', out, re.M) and re.search(r'^  ok    s/corner1 \(', out, re.M), out
    assert not os.path.exists(logdir / 's' / 'trial0')  # --smoke trains nothing
    rc, out, err = run_cli(capsys, path)
    assert rc == 0 and 'smoke test: 2 experiment(s), 0 to test' in out, out + err
    assert out.count('skip  ') == 2 and 'passed before' in out, out
    assert starts(out) == ['s/trial0']


def test_submit_slurm_gives_a_search_one_task_per_trial(images, tmp_path, capsys):
    """`submit slurm --dry-run` of a plain run and a search of 3 trials: the run is task 0, the
    search task 1 and the further tasks 2 and 3, each mapped to the search's index 1; the
    script is valid bash."""
    from runner.queue import slurm
    logdir = tmp_path / 'logs'
    plain = search_doc(images, logdir)
    plain.pop('search')
    plain['train_parameters']['run_name'] = 'plain'
    path = write_yaml(tmp_path / 'q.yaml', plain, search_doc(images, logdir, trials=3))
    assert slurm.main(['slurm', path, '--dry-run', '--max-parallel', '2']) == 0
    script, err = capsys.readouterr()
    assert '#SBATCH --array=0-3%2' in script.splitlines(), script
    assert 'INDEX=([0]=0 [1]=1 [2]=1 [3]=1)' in script.splitlines(), script
    assert re.search(r'--no-smoke --index "\$\{INDEX\[\$SLURM_ARRAY_TASK_ID\]\}" &$', script, re.M), script
    assert f"[3]={logdir / 's'}" in script, script
    assert subprocess.run(['bash', '-n'], input=script, text=True).returncode == 0


@pytest.mark.needs('slurm')
def test_a_search_submitted_to_slurm_trains_each_trial_once(slurm, images, tmp_path):
    """On a real Slurm: `submit slurm --wait` of a search of 3 trials, at most 2 tasks at once.
    Every trial trained once, complete in the study; --wait's table lists the trials and the
    exit status is 0."""
    from test_slurm import Submission
    logdir = tmp_path / 'logs'
    path = write_yaml(tmp_path / 's.yaml', search_doc(images, logdir, trials=3, steps=4, pruner='none'))
    sub = Submission(tmp_path, path, '--max-parallel', '2', '--cpus-per-run', '1', '--mem-per-run', '1G',
                     '--no-smoke')
    assert sub.finish() == 0, sub.out
    assert len(re.findall(r'^s/trial\d+ +finished ', sub.out, re.M)) == 3, sub.out
    assert [t.state.name for t in load_study(logdir).trials] == ['COMPLETE'] * 3
    for k in range(3):
        assert len(summary(logdir / 's' / f'trial{k}')['sessions']) == 1
