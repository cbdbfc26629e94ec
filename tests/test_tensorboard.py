"""Runs as a user sees them: read through a real TensorBoard server on 127.0.0.1 over the
HTTP API its dashboards use (scalars, images, text, HParams), compared with what the runs
wrote to metrics.jsonl and summary.json."""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import make_image_folder, subprocess_env
from runner import cli

ALL_STATUSES = ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE', 'STATUS_RUNNING']

RUN = """
module: tiny_models
model: {model}
model_parameters: {model_parameters}
dataset: {dataset}
train_parameters:
  logdir: {logdir}
  run_name: {name}
  batch_size: 16
  lr_values: [{lr}]
  lr_boundaries: [20]
  log_interval: 5
  val_interval: 10
"""


def train(tmp, name, dataset, logdir, lr=0.05, extra=(), model='tiny_cnn', model_parameters=None):
    path = tmp / f'{name}.yaml'
    path.write_text(RUN.format(dataset=json.dumps(dataset), logdir=logdir, name=name, lr=lr, model=model,
                               model_parameters=json.dumps(model_parameters or {'width': 8})))
    return cli.main([str(path), '--no-smoke', *extra])


@pytest.fixture(scope='session')
def tb_runs(tmp_path_factory, cifar10_tfds_dir):
    """Tiny trained runs in one log directory, shared by the tests of this file: a TFDS run
    with a validation split, a list-file run trained in two sessions (stopped by `steps`,
    then resumed), and a run that diverges, its model's parameter in the seed runner's
    spelling (shortcut_mode for shortcut_type)."""
    tmp = tmp_path_factory.mktemp('tb')
    logdir = tmp / 'logs'
    folder = make_image_folder(tmp / 'imgs')
    lists = {}
    for split in ('train', 'test'):
        lines = [f'{split}/{c}/{f} {int(c[-1])}' for c in sorted(os.listdir(os.path.join(folder, split)))
                 for f in sorted(os.listdir(os.path.join(folder, split, c)))]
        (tmp / f'{split}.txt').write_text('\n'.join(lines) + '\n')
        lists[f'{split}_list'] = str(tmp / f'{split}.txt')
    tfds = {'name': 'cifar10', 'data_dir': cifar10_tfds_dir, 'train_split': 'train[:640]',
            'test_split': 'test[:160]', 'validation_fraction': 0.25}
    assert train(tmp, 'tfds', tfds, logdir) == 0
    lists_ds = {'list_root': folder, **lists}
    assert train(tmp, 'lists', lists_ds, logdir, extra=['--set', 'train_parameters.steps=10']) == 0
    assert train(tmp, 'lists', lists_ds, logdir) == 0  # resumed at step 10, on to 20
    assert train(tmp, 'diverged', {'image_folder': folder}, logdir, lr=1e12, model='tiny_resnet_spelling',
                 model_parameters={'width': 8, 'shortcut_mode': 'A'}) == 1
    return {'logdir': str(logdir), 'tmp': tmp, 'train_list': lists['train_list'],
            'tfds_dir': cifar10_tfds_dir}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class TensorBoard:
    def __init__(self, logdir):
        self.port = free_port()
        # load_fast=false: the Python reader, present wherever tensorboard is installed.
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tensorboard.main', '--logdir', logdir, '--host', '127.0.0.1',
             '--port', str(self.port), '--load_fast=false', '--reload_interval=1'],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())

    def get(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f'http://127.0.0.1:{self.port}{path}', data=data,
                                     headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return raw if path.startswith('/data/plugin/images/individualImage') else json.loads(raw)

    def groups(self):
        body = {'experimentName': '', 'allowedStatuses': ALL_STATUSES, 'colParams': [],
                'startIndex': 0, 'sliceSize': 100}
        return {g['name']: g for g in self.get('/data/plugin/hparams/session_groups', body)['sessionGroups']}

    def wait_for(self, runs, timeout=90):
        """Until every run and its HParams session are loaded."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if set(runs) <= set(self.get('/data/runs')) and set(runs) - {'.'} <= set(self.groups()):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f'TensorBoard did not load {runs}: {self.proc.stderr.read()[-2000:]}')
            time.sleep(0.5)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope='module')
def board(tb_runs):
    tb = TensorBoard(tb_runs['logdir'])
    try:
        tb.wait_for(['.', 'tfds', 'lists', 'diverged'])
        yield tb
    finally:
        tb.close()


def records(logdir, run):
    with open(os.path.join(logdir, run, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def summary(logdir, run):
    with open(os.path.join(logdir, run, 'summary.json')) as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.needs('cifar10-tfds')
def test_scalars_in_tensorboard_equal_metrics_jsonl_once_per_step(board, tb_runs):
    logdir = tb_runs['logdir']
    for run, evals in (('tfds', 'val'), ('lists', 'test')):
        recs = records(logdir, run)
        for kind, key, tag in (('train', 'loss', 'train/loss'), ('train', 'lr', 'train/learning_rate'),
                               (evals, 'top1_error', f'{evals}/top1_error'),
                               (evals, 'loss', f'{evals}/loss')):
            want = [(r['step'], r[key]) for r in recs if r['kind'] == kind]
            got = [(step, value) for _, step, value in
                   board.get(f'/data/plugin/scalars/scalars?run={run}&tag={tag}')]
            steps = [s for s, _ in got]
            assert len(steps) == len(set(steps)), f'{run} {tag}: a step shown twice: {steps}'
            assert [s for s, _ in want] == steps, f'{run} {tag}'
            # TensorBoard keeps float32: equal to metrics.jsonl's float64 to float32 precision.
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), f'{run} {tag}'
    # The resumed run's steps: two sessions, each logged step once (checked above), all of them.
    assert [s for _, s, _ in board.get('/data/plugin/scalars/scalars?run=lists&tag=train/loss')] == [5, 10, 15, 20]


@pytest.mark.slow
@pytest.mark.needs('cifar10-tfds')
def test_hparams_declare_typed_hyperparameters_and_the_metrics_that_compare_runs(board, tb_runs):
    logdir = tb_runs['logdir']
    experiment = board.get('/data/plugin/hparams/experiment', {'experimentName': ''})
    infos = {h['name']: h for h in experiment['hparamInfos']}
    for name, kind in (('dataset', 'DATA_TYPE_STRING'), ('validation_fraction', 'DATA_TYPE_FLOAT64'),
                       ('steps', 'DATA_TYPE_FLOAT64'), ('weight_decay', 'DATA_TYPE_FLOAT64'),
                       ('batch_size', 'DATA_TYPE_FLOAT64'), ('nesterov', 'DATA_TYPE_BOOL'),
                       ('model.width', 'DATA_TYPE_FLOAT64')):
        assert infos[name]['type'] == kind, infos[name]
    assert infos['steps']['description'] == infos['batch_size']['description'] == 'an integer'
    # Only the values some run has now: 'lists' trained 10 steps, then was resumed to 20.
    assert infos['steps']['domainDiscrete'] == [20], infos['steps']
    # The seed's spelling in this project's column, beside the runs that spell it so.
    assert 'model.shortcut_mode' not in infos and infos['model.shortcut_type']['domainDiscrete'] == ['A']
    assert set(infos['dataset']['domainDiscrete']) == {'cifar10', tb_runs['train_list'],
                                                       os.path.join(str(tb_runs['tmp']), 'imgs')}
    metrics = {m['name']['tag'] for m in experiment['metricInfos']}
    assert metrics == {'test/top1_error', 'test/top5_error', 'best/top1_error', 'train/images_per_second'}

    groups = board.groups()
    status = {name: [s['status'] for s in g['sessions']] for name, g in groups.items()}
    assert status == {'tfds': ['STATUS_SUCCESS'], 'lists': ['STATUS_SUCCESS'],
                      'diverged': ['STATUS_FAILURE']}, status
    for run, dataset, fraction in (('tfds', 'cifar10', 0.25), ('lists', tb_runs['train_list'], 0.0)):
        hp = groups[run]['hparams']
        assert (hp['dataset'], hp['validation_fraction'], hp['steps'], hp['batch_size']) == \
            (dataset, fraction, 20, 16), hp
        # tiny_cnn's own default: the decay the model was built with, not "model default".
        assert hp['weight_decay'] == pytest.approx(1e-4) and hp['model.width'] == 8, hp
        s = summary(logdir, run)
        values = {m['name']['tag']: m['value'] for m in groups[run]['metricValues']}
        assert values['test/top1_error'] == pytest.approx(1 - s['test_top1_accuracy'], abs=1e-5)
        assert values['test/top5_error'] == pytest.approx(1 - s['test_top5_accuracy'], abs=1e-5)
        best_kind = 'val' if fraction else 'test'
        best = min(r['top1_error'] for r in records(logdir, run) if r['kind'] == best_kind)
        assert values['best/top1_error'] == pytest.approx(best, abs=1e-5)
        assert values['train/images_per_second'] > 0
    assert groups['diverged']['hparams']['model.shortcut_type'] == 'A', groups['diverged']['hparams']


@pytest.mark.slow
@pytest.mark.needs('cifar10-tfds')
def test_images_and_config_text_are_in_tensorboard(board, tb_runs):
    import numpy as np
    import tensorflow as tf
    images = board.get('/data/plugin/images/tags')
    for run, evals in (('tfds', ('val', 'test')), ('lists', ('test',))):
        tags = set(images[run])
        assert {'train/input_images'} | {f'{e}/confusion_matrix' for e in evals} <= tags, tags
        grid = board.get(f'/data/plugin/images/images?run={run}&tag=train/input_images&sample=0')
        assert [g['step'] for g in grid] == [0]
        png = tf.io.decode_png(board.get('/data/plugin/images/' + grid[0]['query'].join(
            ['individualImage?', '']))).numpy()
        assert png.shape == (4 * 34, 4 * 34, 3) and png.std() > 10, png.shape  # 4x4 real images
        cm = board.get(f'/data/plugin/images/images?run={run}&tag={evals[0]}/confusion_matrix&sample=0')
        steps = [c['step'] for c in cm]
        assert steps == sorted(set(steps)) and steps[-1] == 20, steps
        matrix = tf.io.decode_png(board.get('/data/plugin/images/' + cm[-1]['query'].join(
            ['individualImage?', '']))).numpy()
        classes = 10 if run == 'tfds' else 4
        assert matrix.shape[0] == matrix.shape[1] == classes * (256 // classes)
        assert len(np.unique(matrix.reshape(-1, 3), axis=0)) > 1
        # The counts with the class names; they add up to the test images of the evaluation.
        counts = board.get(f'/data/plugin/text/text?run={run}&tag={evals[0]}/confusion_matrix_counts')
        assert [c['step'] for c in counts] == steps
        table = counts[-1]['text']
        # TFDS names its classes; the list files (no class_names_file) number them.
        names = ('<th>airplane</th>', '<th>truck</th>') if run == 'tfds' else ('<th>0</th>', '<th>3</th>')
        assert all(n in table for n in names), table
        cells = [int(x) for row in re.findall(r'<tr>(.*?)</tr>', table, re.S)[1:]
                 for x in re.findall(r'<td>(\d+)</td>', row)]
        last_eval = [r for r in records(tb_runs['logdir'], run) if r['kind'] == evals[0]][-1]
        assert sum(cells) == last_eval['examples'], table
        text = board.get(f'/data/plugin/text/text?run={run}&tag=config.yaml')
        assert 'model: tiny_cnn' in text[0]['text'] and 'weight_decay: 0.0001' in text[0]['text']


def session_status(run_dir):
    """The HParams session end status in a run's overview file, by TensorBoard's own parser."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api_pb2, metadata
    from runner import rundir
    found = {}
    for raw in tf.data.TFRecordDataset(rundir.RunDir(run_dir).overview).as_numpy_iterator():
        for v in tf.compat.v1.Event.FromString(raw).summary.value:
            if v.tag == metadata.SESSION_END_INFO_TAG:
                found.setdefault('end', []).append(api_pb2.Status.Name(
                    metadata.parse_session_end_info_plugin_data(v.metadata.plugin_data.content).status))
            elif v.tag == metadata.SESSION_START_INFO_TAG:
                found['start'] = found.get('start', 0) + 1
    return found


@pytest.mark.parametrize('status, shown', [('interrupted', 'STATUS_UNKNOWN'), ('failed', 'STATUS_FAILURE'),
                                           ('finished', 'STATUS_SUCCESS')])
@pytest.mark.needs('cifar10-tfds')
def test_a_session_end_status_replaces_the_last_one(tb_runs, tmp_path, status, shown):
    import shutil
    from runner.training import tboard
    run_dir = tmp_path / 'run'
    shutil.copytree(os.path.join(tb_runs['logdir'], 'lists'), run_dir)
    tboard.set_status(str(run_dir), status)
    assert session_status(str(run_dir)) == {'start': 1, 'end': [shown]}


@pytest.mark.needs('cifar10-tfds')
def test_a_run_failing_in_the_cli_shows_failure_in_hparams(tb_runs, tmp_path):
    """failures.record_failure, as the command line calls it for an exception, sets the status."""
    import shutil
    from runner.training import failures
    from runner.config.expand import experiment_from_dict
    shutil.copytree(os.path.join(tb_runs['logdir'], 'lists'), tmp_path / 'lists')
    exp = experiment_from_dict({'model': 'tiny_cnn', 'module': 'tiny_models',
                                'train_parameters': {'logdir': str(tmp_path), 'run_name': 'lists'}})
    failures.record_failure(exp, RuntimeError('out of memory'))
    assert session_status(str(tmp_path / 'lists'))['end'] == ['STATUS_FAILURE']


def test_runs_starting_at_once_all_have_their_values_declared(tmp_path):
    """Eight runs writing their sessions and declaring their seeds at the same moment (a Slurm
    array): the declaration is the union, or TensorBoard's table would filter out the runs
    whose seed it lacks."""
    import threading
    from tensorboard.plugins.hparams import metadata
    import tensorflow as tf
    from runner.config.expand import experiment_from_dict
    from runner.training import tboard

    def start(k):
        exp = experiment_from_dict({'model': 'm', 'train_parameters': {'logdir': str(tmp_path),
                                                                       'run_name': f'r{k}'}})
        os.makedirs(tmp_path / exp.run_name)
        tboard.write_overview(str(tmp_path / exp.run_name), exp, {'seed': k, 'model': 'm'}, '', None)
    threads = [threading.Thread(target=start, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for raw in tf.data.TFRecordDataset(str(tmp_path / tboard.EXPERIMENT)).as_numpy_iterator():
        for v in tf.compat.v1.Event.FromString(raw).summary.value:
            if v.tag == metadata.EXPERIMENT_TAG:
                exp = metadata.parse_experiment_plugin_data(v.metadata.plugin_data.content)
                seeds = [h for h in exp.hparam_infos if h.name == 'seed'][0]
                assert sorted(x.number_value for x in seeds.domain_discrete.values) == list(range(8))
                return
    pytest.fail('no experiment declared')
