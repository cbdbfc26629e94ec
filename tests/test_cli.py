"""run_experiments.py end to end: training a small run, what it leaves behind, the smoke run
of every shipped YAML file, and the seed runner's YAML examples."""
import glob
import json
import os
import re
import textwrap

import pytest
import yaml

from conftest import ROOT, SHARED
from runner import cli, compat, rundir
from runner.queue import resume, smoke
from runner.training import distribute, session
from runner.training.trainer import Trainer

TINY = """
module: tiny_models
model: tiny_cnn
dataset: {{image_folder: {images}{extra_dataset}}}
train_parameters:
  logdir: {logdir}
  run_name: {name}
  batch_size: 16
  log_interval: 5
  val_interval: 10
  lr_values: [0.05, 0.005]
  lr_boundaries: [15, 20]
"""


def tiny(images, logdir, name='tiny', extra_dataset=''):
    return TINY.format(images=images, logdir=logdir, name=name, extra_dataset=extra_dataset)


def event_scalars(run_dir):
    """{tag: [steps]} from the run's TensorBoard event files."""
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2
    out = {}
    for path in glob.glob(os.path.join(run_dir, 'events.out.tfevents.*')):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            e = event_pb2.Event.FromString(raw)
            for v in e.summary.value:
                out.setdefault(v.tag, []).append(e.step)
    return out


def test_train_a_run_end_to_end(tmp_path, image_folder, capsys):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs'))
    assert cli.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert 'smoke test: 1 experiment(s)' in out and 'ok    tiny' in out
    run_dir = tmp_path / 'logs' / 'tiny'
    s = json.loads((run_dir / 'summary.json').read_text())
    for key in ('run_name', 'model', 'params', 'steps', 'status', 'test_top1_accuracy', 'test_top5_accuracy',
                'best_test_top1_accuracy', 'train_images_per_second', 'wall_seconds', 'weights'):
        assert key in s, key
    assert s['status'] == 'finished' and s['steps'] == 20 and s['eval_split'] == 'test'
    # what the speeds were measured on
    assert s['machine'] == {'cpu': distribute.cpu_description(), 'onednn': compat.onednn_enabled(),
                            'gpus': 0}
    # The colour classes are easy: five seeds reached 0.75-1.0 (30-40 of 40 test images,
    # chance 0.25); a margin of two images below the lowest.
    assert s['test_top1_accuracy'] >= 0.7, s
    assert (run_dir / s['weights']).stat().st_size > 0
    # the resolved config: defaults and the data statistics filled in
    cfg = yaml.safe_load((run_dir / 'config.yaml').read_text())
    assert cfg['train_parameters']['momentum'] == 0.9 and len(cfg['dataset']['mean']) == 3
    tags = event_scalars(str(run_dir))
    assert tags['train/loss'] == [5, 10, 15, 20]
    assert tags['test/top1_error'] == [10, 20]
    for tag in ('train/error', 'train/reg_loss', 'train/learning_rate', 'train/images_per_second',
                'test/loss', 'test/top5_error'):
        assert tag in tags, tag
    lrs = [r['lr'] for r in rundir.read_metrics(str(run_dir)) if r['kind'] == 'train']
    assert lrs == pytest.approx([0.05, 0.05, 0.05, 0.005])
    # a second run skips the finished one and says so
    assert cli.main([str(path), '--no-smoke']) == 0
    assert 'tiny: finished at step 20; skipped' in capsys.readouterr().out


def test_a_run_resumed_on_another_machine_reports_each_machines_speed(tmp_path, image_folder, monkeypatch):
    """Images/s depend on the CPU: a run begun on one machine and resumed on another keeps
    both sessions, each with its machine and its own median images/s, and the run's
    images/s is only the current machine's, beside that machine."""
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs'))
    here = distribute.cpu_description()
    monkeypatch.setattr(distribute, 'cpu_description', lambda: 'Other CPU (AVX2), 64 cores')
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=10']) == 0
    monkeypatch.setattr(distribute, 'cpu_description', lambda: here)
    assert cli.main([str(path), '--no-smoke']) == 0
    run_dir = tmp_path / 'logs' / 'tiny'
    s = json.loads((run_dir / 'summary.json').read_text())
    rates = {r['step']: r['images_per_second'] for r in rundir.read_metrics(str(run_dir))
             if r['kind'] == 'train'}
    assert sorted(rates) == [5, 10, 15, 20]
    first, second = s['sessions']
    assert s['machine'] == second['machine'] and s['machine']['cpu'] == here
    assert first['machine']['cpu'] == 'Other CPU (AVX2), 64 cores'
    assert (first['start_step'], first['end_step'], second['start_step'], second['end_step']) == (0, 10, 10, 20)
    # Each session's first interval includes tracing the step function: left out.
    assert first['train_images_per_second'] == round(rates[10], 1)
    assert second['train_images_per_second'] == round(rates[20], 1)
    assert s['train_images_per_second'] == second['train_images_per_second']


def test_a_piecewise_linear_schedule_trains_through_its_knots(tmp_path, image_folder):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs').replace(
        'lr_values: [0.05, 0.005]\n  lr_boundaries: [15, 20]',
        'lr_schedule: piecewise_linear\n  lr_values: [0.01, 0.05, 0.0]\n  lr_boundaries: [0, 8, 20]'))
    assert cli.main([str(path), '--no-smoke']) == 0
    # The rate logged at step s is the one its last step (s - 1) trained with.
    lrs = {r['step']: r['lr'] for r in rundir.read_metrics(str(tmp_path / 'logs' / 'tiny'))
           if r['kind'] == 'train'}
    assert lrs == pytest.approx({5: 0.01 + 0.04 * 4 / 8, 10: 0.05 * 11 / 12, 15: 0.05 * 6 / 12,
                                 20: 0.05 * 1 / 12})


def test_session_throughput_pools_the_sessions_on_the_current_machine():
    a, b = {'cpu': 'A'}, {'cpu': 'B'}
    sessions = [{'start_step': 0, 'machine': a}, {'start_step': 30, 'machine': b},
                {'start_step': 50, 'machine': a}]
    rates = [(10, 1.0), (20, 100.0), (30, 110.0), (40, 5.0), (50, 900.0), (60, 7.0), (70, 120.0),
             (80, 130.0)]
    assert session.session_throughput(sessions, rates, 80) == 115.0  # of 100, 110, 120, 130
    assert [(s['end_step'], s['train_images_per_second']) for s in sessions] == \
        [(30, 105.0), (50, 900.0), (80, 125.0)]
    # A session with no logged interval yet
    assert session.session_throughput([{'start_step': 0, 'machine': a}], [], 3) is None


def test_sessions_so_far_drops_what_a_resume_trains_again():
    a, b, c = {'cpu': 'A'}, {'cpu': 'B'}, {'cpu': 'C'}
    assert session.sessions_so_far({}, None, a) == [{'start_step': 0, 'machine': a}]
    previous = {'machine': b, 'sessions': [{'start_step': 0, 'machine': a, 'end_step': 40},
                                           {'start_step': 40, 'machine': b, 'end_step': 45}]}
    # Resumed from the checkpoint of step 40: the session begun there kept nothing.
    assert session.sessions_so_far(previous, 40, c) == [{'start_step': 0, 'machine': a},
                                                      {'start_step': 40, 'machine': c}]
    assert session.sessions_so_far(previous, 44, c)[1:] == [{'start_step': 40, 'machine': b},
                                                          {'start_step': 44, 'machine': c}]
    # A run from before sessions were recorded: one session on its recorded machine
    assert session.sessions_so_far({'machine': b}, 20, c) == [{'start_step': 0, 'machine': b},
                                                            {'start_step': 20, 'machine': c}]


def test_validation_split_selects_and_reports_the_split(tmp_path, image_folder, capsys):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs', extra_dataset=', validation_fraction: 0.25'))
    assert cli.main([str(path), '--no-smoke']) == 0
    run_dir = tmp_path / 'logs' / 'tiny'
    s = json.loads((run_dir / 'summary.json').read_text())
    assert s['eval_split'] == s['selection_split'] == 'validation'
    assert 'val_top1_accuracy' in s and 'best_val_top1_accuracy' in s
    assert 'test_top1_accuracy' in s and 'best_test_top1_accuracy' in s
    tags = event_scalars(str(run_dir))
    # Evaluations during training are on the validation split; the test split once, at the
    # end (the HParams table's final test error).
    assert tags['val/top1_error'] == [10, 20] and tags['test/top1_error'] == [20], tags
    assert 'validation-selected' in capsys.readouterr().out


def test_set_and_logdir_apply_to_every_experiment(tmp_path, image_folder, capsys):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'ignored') + '---\n' + tiny(image_folder, tmp_path / 'ignored', 'two'))
    code = cli.main([str(path), '--no-smoke', '--logdir', str(tmp_path / 'here'),
                     '--set', 'train_parameters.steps=5', '--only', 'two'])
    assert code == 0
    assert not (tmp_path / 'ignored').exists() and not (tmp_path / 'here' / 'tiny').exists()
    s = json.loads((tmp_path / 'here' / 'two' / 'summary.json').read_text())
    assert s['steps'] == 5 and s['status'] == 'finished'


def test_resume_refuses_a_changed_config(tmp_path, image_folder, capsys):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs'))
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=5']) == 0
    capsys.readouterr()
    code = cli.main([str(path), '--no-smoke', '--set', 'train_parameters.batch_size=8'])
    err = capsys.readouterr().err
    assert code == 2 and 'train_parameters.batch_size: changed since run' in err and '--restart tiny' in err
    # A run started by an earlier version of the runner has no record of keys added since:
    # they count as unchanged when the run has their defaults, which that version used.
    saved = tmp_path / 'logs' / 'tiny' / 'config.yaml'
    cfg = yaml.safe_load(saved.read_text())
    del cfg['train_parameters']['freeze_after'], cfg['train_parameters']['label_smoothing']
    saved.write_text(yaml.safe_dump(cfg))
    code = cli.main([str(path), '--no-smoke', '--set', 'train_parameters.label_smoothing=0.1'])
    err = capsys.readouterr().err
    assert code == 2 and 'train_parameters.label_smoothing: changed since run' in err
    assert 'freeze_after' not in err
    # steps may change: the run goes on from its checkpoint
    assert cli.main([str(path), '--no-smoke']) == 0
    assert 'tiny: resuming' in capsys.readouterr().out


def test_changed_settings_start_over_a_run_without_a_checkpoint(tmp_path, image_folder, capsys):
    # A run that failed or diverged before its first checkpoint has nothing to resume: a
    # changed setting starts it over, the old directory moved aside, not deleted.
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs'))
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=2']) == 0
    run_dir = tmp_path / 'logs' / 'tiny'
    for p in (run_dir / 'checkpoints').iterdir():
        p.unlink()
    capsys.readouterr()
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=2',
                     '--set', 'train_parameters.batch_size=8']) == 0
    out = capsys.readouterr().out
    assert 'tiny: settings changed before its first checkpoint; starting it over' in out
    assert yaml.safe_load((run_dir / 'config.yaml').read_text())['train_parameters']['batch_size'] == 8
    old, = glob.glob(str(tmp_path / 'logs' / 'tiny.restarted-*'))
    assert yaml.safe_load(open(os.path.join(old, 'config.yaml')))['train_parameters']['batch_size'] == 16


@pytest.mark.parametrize('key, old_value', [('dataset.tfrecord_train', '/old/train-*'),
                                            ('dataset.list_root', '/old/root'),
                                            ('dataset.image_folder', '/old/images')])
def test_moved_data_does_not_block_a_resume(tmp_path, image_folder, key, old_value):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs'))
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=2']) == 0
    saved = tmp_path / 'logs' / 'tiny' / 'config.yaml'
    cfg = yaml.safe_load(saved.read_text())
    section, name = key.split('.')
    cfg[section][name] = old_value
    saved.write_text(yaml.safe_dump(cfg))
    exp, = cli.load_all([str(path)], [])
    assert resume.check_resumable(exp) is False
    cfg['train_parameters']['batch_size'] = 8  # while a real change is still refused
    saved.write_text(yaml.safe_dump(cfg))
    with pytest.raises(Exception, match='train_parameters.batch_size: changed since'):
        resume.check_resumable(exp)


def test_restart_takes_the_name_of_a_repeats_group(tmp_path, image_folder, capsys):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs') + 'repeats: 2\n')
    args = [str(path), '--no-smoke', '--set', 'train_parameters.steps=2']
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main(args + ['--restart', 'tiny']) == 0
    out = capsys.readouterr().out
    assert 'tiny/seed0: old run moved to' in out and 'tiny/seed1: old run moved to' in out
    assert len(glob.glob(str(tmp_path / 'logs' / 'tiny' / 'seed*.restarted-*'))) == 2


@pytest.mark.parametrize('signum', ['SIGINT', 'SIGTERM'])
def test_a_stop_outside_the_steps_marks_the_run_interrupted(tmp_path, image_folder, capsys, monkeypatch, signum):
    # Ctrl-C or a scheduler's SIGTERM while the data loads: no traceback, the run recorded
    # as interrupted before training starts, exit status 1, and the next experiment not
    # started. (The stop is acted on once the load returns, not raised inside TensorFlow.)
    import signal
    from runner.data import loader as data_loader
    real_load = data_loader.load

    def load_then_signal(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, signum))
        return real_load(*args, **kwargs)

    def no_training(*args, **kwargs):
        raise AssertionError('a step was trained after the stop')
    monkeypatch.setattr(Trainer, 'train_step', no_training)

    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs') + '---\n' + tiny(image_folder, tmp_path / 'logs', 'second'))
    monkeypatch.setattr(data_loader, 'load', load_then_signal)
    # Ctrl-C at a terminal: Python's own SIGINT handler. A process started in the background
    # of a script (CI, nohup) inherits SIGINT ignored, and Python then leaves it ignored.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main([str(path), '--no-smoke'])
    finally:
        signal.signal(signal.SIGINT, previous_int)
    out, err = capsys.readouterr()
    assert code == 1 and 'Traceback' not in out + err, out + err
    assert f'{signum}: stopping before training starts' in err
    assert 'tiny: interrupted at step 0; run the same command again to resume' in out
    s = json.loads((tmp_path / 'logs' / 'tiny' / 'summary.json').read_text())
    assert s['status'] == 'interrupted' and 'stopped outside the training steps' in s['error']
    assert not (tmp_path / 'logs' / 'second').exists()
    assert signal.getsignal(signal.SIGTERM) == before


def shipped_yaml_files():
    return [os.path.join(ROOT, 'experiments.yaml')] + sorted(glob.glob(os.path.join(ROOT, 'experiments', '*.yaml')))


def shipped_documents(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


@pytest.mark.slow
@pytest.mark.parametrize('path', shipped_yaml_files(), ids=os.path.basename)
def test_every_shipped_experiment_validates_and_builds_offline(path, tmp_path, capsys, monkeypatch):
    """Validation builds every model and counts its parameters; --list reads the same counts
    and dataset descriptions from the registry (models/zoo.py) without building anything."""
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no-data'))
    experiments = cli.load_all([path], [('dataset.data_dir', None)])
    built = cli.validate(experiments, need_data=False)
    assert [(c.params, c.dataset) for c in cli.listed(experiments, ())] == \
        [(c.params, c.dataset) for c in built]
    code = cli.main([path, '--list', '--set', 'dataset.data_dir=null'])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    for doc in shipped_documents(path):
        name = doc.get('train_parameters', {}).get('run_name') or doc['model']
        assert name in out, f'{name} missing from --list:\n{out}'


def training_setup(exp):
    """What a smoke test of an experiment checks beyond its network: the experiment less the
    network (model, model_parameters), its names, the schedule's values and lengths, and the
    paper's figures. CIFAR-100 counts as CIFAR-10: offline the smoke run's batches are random
    images of the same shape, and only the classifier's width differs."""
    d = exp.to_dict()
    for key in ('model', 'model_parameters', 'paper', 'skip_error_test'):
        d.pop(key)
    for key in ('run_name', 'logdir', 'steps', 'lr_values', 'lr_boundaries'):
        d['train_parameters'].pop(key)
    if d['dataset']['name'] == 'cifar100':
        d['dataset']['name'] = 'cifar10'
    return json.dumps(d, sort_keys=True, default=str)


def smoke_representatives():
    """(experiments, representatives): every shipped experiment, and the first of each file's
    experiments under each training setup (the files list their networks smallest first)."""
    from runner.config.expand import load_experiments
    experiments, chosen = [], {}
    for path in shipped_yaml_files():
        for exp in load_experiments(path, [('dataset.data_dir', None)]):
            experiments.append(exp)
            if not exp.skip_error_test:
                chosen.setdefault((path, training_setup(exp)), exp)
    return experiments, list(chosen.values())


@pytest.mark.slow
def test_each_training_setup_of_the_shipped_files_passes_the_smoke_run_on_its_first_network(
        tmp_path, capsys, monkeypatch):
    """The smoke run of every shipped experiment takes 568 s on two idle cores
    (docs/smoke.md; ResNet-1001 alone 219 s): what a user pays once before training them,
    not what CI should pay each time. So each file's every training
    setup is smoke-tested once, on the first network the file trains with it, in one smoke
    run as the command runs it (its workers in parallel). Every experiment is validated and
    its network built by test_every_shipped_experiment_validates_and_builds_offline; every
    network's forward pass and gradients are checked by tests/test_models.py."""
    experiments, chosen = smoke_representatives()
    setups = {(e.source, training_setup(e)) for e in experiments if not e.skip_error_test}
    assert len(chosen) == len(setups) and len(experiments) > 2 * len(chosen), [e.run_name for e in chosen]
    names = [e.run_name for e in chosen]
    # No prepared data here: the smoke run falls back to synthetic batches of the dataset's shape.
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no-data'))
    code = cli.main(shipped_yaml_files() + ['--smoke', '--only', ','.join(names), '--logdir',
                                             str(tmp_path / 'logs'), '--set', 'dataset.data_dir=null'])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert 'FAIL' not in out and out.count('  ok    ') == len(names), out
    for name in names:
        assert re.search(rf'  ok    {name} ', out), (name, out)
    # The smoke run trains in a throwaway directory; the logdir gets only its remembered passes.
    assert os.listdir(tmp_path / 'logs') == [smoke.PASSED_DIR]


SEED_001 = os.path.join(SHARED, 'seeds', '001_bba23ab2ea219f51.txt')


def seed_experiments_yaml():
    """Seed 001's experiments.yaml as its README gives it: the YAML blocks of its 'Training
    ... example' sections, one document each, exactly as written (`module: 'Models.Resnets'`)."""
    if not os.path.exists(SEED_001):
        pytest.skip(f'{SEED_001} is absent')
    text = open(SEED_001).read()
    blocks = re.findall(r'^### Training [^\n]* example:\n```\n(.*?)```', text, re.M | re.S)
    assert len(blocks) == 2 and "module: 'Models.Resnets'" in blocks[0], blocks
    return '---\n'.join(blocks)


@pytest.mark.slow
@pytest.mark.needs('seed-001')
def test_the_seed_runners_experiments_yaml_runs_unchanged(tmp_path, capsys, monkeypatch):
    """Validation, --list and the smoke run of seed 001's file as the seed gives it: ResNet-110
    and WRN-40-4 (the heaviest smoke run of the tests; synthetic data, no TFDS copy here)."""
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no-data'))
    path = tmp_path / 'experiments.yaml'
    path.write_text(seed_experiments_yaml())
    monkeypatch.chdir(tmp_path)
    code = cli.main([str(path), '--list'])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    header, *lines = out.splitlines()
    run, model = header.split().index('run'), header.split().index('model')
    rows = {line.split()[run]: line.split() for line in lines}
    assert set(rows) == {'resnet110_v1', 'WRN_40_4'}, out
    assert rows['resnet110_v1'][model] == 'cifar_resnet110' and '64000' in rows['resnet110_v1'], out
    # The seed's model name in this project's spelling (issue 29 item 8).
    assert rows['WRN_40_4'][model] == 'cifar_WRN_40_4' and '80000' in rows['WRN_40_4'], out
    code = cli.main([str(path), '--smoke'])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert 'ok    resnet110_v1' in out and 'ok    WRN_40_4' in out, out
    # The smoke runs train in a throwaway directory (the logdir keeps only their passes).
    assert not any((tmp_path / 'logs' / name).exists() for name in ('resnet110_v1', 'WRN_40_4'))


def test_validation_reports_every_problem_of_every_experiment_at_once(tmp_path, capsys):
    """Schema mistakes, a model that does not exist and a broken schedule in three of four
    experiments of two files: one line each, in one round, exit 2."""
    a = tmp_path / 'a.yaml'
    a.write_text("model: cifar_resnet20\ntrain_parameters: {batch_sise: 3}\n---\n"
                 "model: cifar_resnet20\ntrain_parameters: {run_name: fine}\n---\n"
                 "model: cifar_resnet_20\ntrain_parameters: {run_name: typo}\n")
    b = tmp_path / 'b.yaml'
    b.write_text("model: cifar_resnet20\ntrain_parameters: {run_name: sched, lr_values: [1], "
                 "lr_boundaries: [1, 2]}\n")
    code = cli.main([str(a), str(b), '--list', '--logdir', str(tmp_path / 'logs')])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_CONFIG and 'Traceback' not in err, err
    lines = err.strip().splitlines()
    assert all(l.startswith('error: ') for l in lines) and len(lines) == 3, err
    assert any(f'{a}: experiment 1' in l and 'batch_sise' in l for l in lines), err
    assert any(f'{a}: experiment 3 (typo): model:' in l and "'cifar_resnet20'" in l for l in lines), err
    assert any(f'{b}: experiment 1 (sched): train_parameters.lr_values' in l for l in lines), err


def test_validation_stops_listing_problems_at_a_limit(tmp_path, capsys):
    from runner.config.errors import MAX_ERRORS
    path = tmp_path / 'many.yaml'
    path.write_text('---\n'.join(f'model: m{i}\ntrain_parameters: {{run_name: r{i}, bad_key: 1}}\n'
                                 for i in range(MAX_ERRORS + 5)))
    code = cli.main([str(path), '--list'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_CONFIG
    assert len(err) == MAX_ERRORS + 1 and err[-1] == 'error: ... and 5 more problems', err[-3:]


def test_warm_start_from_a_run_and_hparams(tmp_path, image_folder, capsys):
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs', 'base'))
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=5']) == 0
    base = tmp_path / 'logs' / 'base'
    # TensorBoard HParams: the run's settings are logged for the dashboard
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2
    plugins = set()
    for f in glob.glob(str(base / 'events.out.tfevents.*')):
        for raw in tf.data.TFRecordDataset(f).as_numpy_iterator():
            for v in event_pb2.Event.FromString(raw).summary.value:
                plugins.add(v.metadata.plugin_data.plugin_name)
    assert 'hparams' in plugins

    fine = tmp_path / 'fine.yaml'
    fine.write_text(tiny(image_folder, tmp_path / 'logs', 'fine') +
                    f'  init_weights: {base}\n')
    capsys.readouterr()
    assert cli.main([str(fine), '--no-smoke', '--set', 'train_parameters.steps=1']) == 0
    assert f'starting from the weights of {base}/final.weights.h5' in capsys.readouterr().out

    # another width does not fit: the first layer that does not fit is named, nothing runs
    wide = tmp_path / 'wide.yaml'
    wide.write_text(tiny(image_folder, tmp_path / 'logs', 'wide').replace('dataset:', 'model_parameters: {width: 16}\ndataset:')
                    + f'  init_weights: {base}/final.weights.h5\n')
    assert cli.main([str(wide), '--no-smoke']) == 2
    err = capsys.readouterr().err
    assert "layer 'conv2d' (weight 0)" in err and 'has shape (3, 3, 3, 16)' in err and 'init_skip_mismatch' in err
    assert not (tmp_path / 'logs' / 'wide').exists()
    assert cli.main([str(wide), '--no-smoke', '--set', 'train_parameters.init_skip_mismatch=true',
                     '--set', 'train_parameters.steps=1']) == 0


def test_config_records_the_model_defaults_and_a_resume_sees_a_changed_default(tmp_path, image_folder,
                                                                              capsys):
    """config.yaml holds every argument of the model function, defaults included, so the
    file says which network ran; a default changed since (here: written differently into
    the file) is a change a resume refuses. A file without them resumes as before."""
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs'))
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=2']) == 0
    saved = tmp_path / 'logs' / 'tiny' / 'config.yaml'
    cfg = yaml.safe_load(saved.read_text())
    # tiny_cnn's default weight decay too: the file says which decay the run used.
    assert cfg['model_parameters'] == {'width': 8, 'dropout': 0.0, 'weight_decay': 1e-4}, cfg['model_parameters']
    exp, = cli.load_all([str(path)], [])
    assert resume.check_resumable(exp) is False
    cfg['model_parameters']['width'] = 16  # as if the function's default had been 16
    saved.write_text(yaml.safe_dump(cfg))
    with pytest.raises(Exception, match='model_parameters.width: changed since'):
        resume.check_resumable(exp)
    cfg['model_parameters'] = {}  # a run of an earlier version, which recorded no defaults
    saved.write_text(yaml.safe_dump(cfg))
    assert resume.check_resumable(exp) is False
    # train_parameters.weight_decay overrides the default: the file says that one, once.
    assert cli.main([str(path), '--no-smoke', '--set', 'train_parameters.steps=2', '--logdir',
                     str(tmp_path / 'wd'), '--set', 'train_parameters.weight_decay=5e-4']) == 0
    cfg = yaml.safe_load((tmp_path / 'wd' / 'tiny' / 'config.yaml').read_text())
    assert cfg['train_parameters']['weight_decay'] == 5e-4 and 'weight_decay' not in cfg['model_parameters']


@pytest.mark.slow
def test_a_grid_experiment_trains_each_point_with_its_own_settings(tmp_path, image_folder, capsys):
    """A swept width: each point a run of its own, trained with its own network."""
    path = tmp_path / 'grid.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs', name='g').replace(
        'dataset:', 'grid:\n  model_parameters.width: [4, 8]\n  train_parameters.steps: [6]\ndataset:'))
    assert cli.main([str(path), '--no-smoke']) == 0
    capsys.readouterr()
    params = {}
    for width in (4, 8):
        run_dir = tmp_path / 'logs' / f'g_width-{width}_steps-6'
        s = json.loads((run_dir / 'summary.json').read_text())
        cfg = yaml.safe_load((run_dir / 'config.yaml').read_text())
        assert s['status'] == 'finished' and s['steps'] == 6, s
        assert cfg['model_parameters']['width'] == width
        assert [r['step'] for r in rundir.read_metrics(str(run_dir)) if r['kind'] == 'train'] == [5, 6]
        params[width] = s['params']
    # tiny_cnn's parameters grow with the width: each point trained its own network
    assert params[4] < params[8]


def test_a_progress_line_comes_early_whatever_log_interval_is(tmp_path, image_folder, capsys,
                                                              monkeypatch):
    """With log_interval: 400 a big model would print nothing for minutes: the first line of
    a session comes after session.FIRST_LINE_SECONDS (here 0, so at the first step), printed
    only, so the logged history keeps its log_interval grid."""
    monkeypatch.setattr(session, 'FIRST_LINE_SECONDS', 0)
    path = tmp_path / 'e.yaml'
    path.write_text(tiny(image_folder, tmp_path / 'logs').replace('log_interval: 5', 'log_interval: 20'))
    assert cli.main([str(path), '--no-smoke']) == 0
    out = capsys.readouterr().out
    early = [l for l in out.splitlines() if '(so far; logged every 20 steps)' in l]
    assert len(early) == 1 and early[0].startswith('tiny step 1/20: loss '), out
    records = rundir.read_metrics(str(tmp_path / 'logs' / 'tiny'))
    assert [r['step'] for r in records if r['kind'] == 'train'] == [20]
