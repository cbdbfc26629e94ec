"""The first hour of a new user (issue 29), done as the user did it: real processes, a real
pipe closed by `head`, a real `status` while a run trains. The final evaluation's Ctrl-C is
in test_survive, the HParams columns in test_tensorboard (a real TensorBoard)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, subprocess_env

RUNNER = os.path.join(ROOT, 'run_experiments.py')
# What TensorFlow's C++ start-up prints unless runner.training.distribute.quiet_tensorflow
# catches it: absl's notice, oneDNN and CUDA lines, glog-style 'I0000 ...' / 'E0000 ...'.
TF_NOISE = re.compile(r'absl::InitializeLog|oneDNN|cuda|cuInit|^[IWEF]\d{4} ', re.I | re.M)


def run(args, module=False, **kw):
    cmd = [sys.executable, '-m', 'runner', *args] if module else [sys.executable, RUNNER, *args]
    return subprocess.run(list(map(str, cmd)), cwd=kw.pop('cwd', ROOT), env=subprocess_env(),
                          capture_output=True, text=True, timeout=kw.pop('timeout', 300), **kw)


def tiny(logdir, run_name, folder, **train):
    tp = dict(logdir=str(logdir), run_name=run_name, batch_size=8, lr_values=[0.05],
              lr_boundaries=[20], log_interval=5, val_interval=20)
    tp.update(train)
    return {'module': 'tiny_models', 'model': 'tiny_cnn', 'dataset': {'image_folder': folder},
            'train_parameters': tp}


def write(path, *docs):
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def test_every_problem_of_every_experiment_at_once_each_named_by_its_run(tmp_path):
    """Three wrong values in one experiment and a misspelt key in another: four lines, each
    naming file, experiment and run, at once; the unknown key's line names its run too."""
    path = tmp_path / 'bad.yaml'
    path.write_text('model: cifar_resnet20\ntrain_parameters:\n  run_name: a\n  batch_size: "128x"\n'
                    '  steps: 1.5\n  momentum: "fast"\n---\nmodel: cifar_resnet20\n'
                    'train_parameters:\n  lr_valeus: [0.1]\n')
    done = run([path, '--list'])
    assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {path}: experiment 1 (a): train_parameters.batch_size: expected integer, got str '128x'",
        f'error: {path}: experiment 1 (a): train_parameters.steps: expected integer, got float 1.5',
        f"error: {path}: experiment 1 (a): train_parameters.momentum: expected number, got str 'fast'",
        f"error: {path}: experiment 2 (cifar_resnet20): train_parameters.lr_valeus: unknown key; did you "
        f"mean 'train_parameters.lr_values'?"], done.stderr


def test_a_missing_file_is_said_once_and_before_tensorflow_is_imported(tmp_path):
    """`run_experiments.py experiments.yaml --logdir x` in a directory without the file: one
    line, exit 2, and the answer does not wait for TensorFlow's import."""
    code = ('import sys\nfrom runner import cli\ncode = cli.main(["experiments.yaml", "--logdir", "x"])\n'
            'print("tensorflow imported" if "tensorflow" in sys.modules else "no tensorflow")\n'
            'sys.exit(code)\n')
    done = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ['error: experiments.yaml: cannot read: No such file or directory']
    assert done.stdout.strip() == 'no tensorflow'
    assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_list_into_a_pipe_that_head_closes_is_a_success(tmp_path, image_folder):
    """`--list | head -1` of a file of three runs: the header line, nothing on stderr, and the
    runner's own exit status 0 (1 would say a run failed)."""
    path = write(tmp_path / 'e.yaml', dict(tiny(tmp_path / 'logs', 'r', image_folder), repeats=3))
    done = subprocess.run(['bash', '-c', f'"{sys.executable}" "{RUNNER}" "{path}" --list | head -1; '
                                         'echo "status ${PIPESTATUS[0]}"'],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ['index', 'run', 'model'], done.stdout
    assert lines[1:] == ['status 0'] and done.stderr == '', (done.stdout, done.stderr)


@pytest.mark.slow
def test_status_shows_the_step_of_a_run_before_its_first_checkpoint(tmp_path, image_folder):
    """`python -m runner status` while a run trains, before it has saved anything: the run is
    running at the step it has reached, not `-`."""
    logdir = tmp_path / 'logs'
    path = write(tmp_path / 'e.yaml', tiny(logdir, 'r', image_folder, lr_boundaries=[1000000],
                                           log_interval=1000000, val_interval=1000000,
                                           checkpoint_interval=1000000))
    proc = subprocess.Popen([sys.executable, RUNNER, str(path), '--no-smoke'], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, 'no step shown while it trained'
            row = next((line.split() for line in run(['status', logdir], module=True).stdout.splitlines()
                        if line.startswith('r ')), None)
            if row and row[1] == 'running' and re.fullmatch(r'[1-9]\d*/1000000', row[2]):
                break
            time.sleep(0.5)
        assert not os.path.exists(logdir / 'r' / 'checkpoints' / 'checkpoint'), 'a checkpoint came first'
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    steps = json.loads((logdir / 'r' / 'summary.json').read_text())['steps']
    row = next(line.split() for line in run(['status', logdir], module=True).stdout.splitlines()
               if line.startswith('r '))
    assert row[1:3] == ['interrupted', f'{steps}/1000000'], row


@pytest.fixture(scope='module')
def slow_run(tmp_path_factory, image_folder):
    """A finished run of steps of 2 s on one image each (a big model on a CPU)."""
    tmp = tmp_path_factory.mktemp('slow')
    logdir = tmp / 'logs'
    path = write(tmp / 'e.yaml', dict(
        tiny(logdir, 'r', image_folder, batch_size=1, lr_boundaries=[4], log_interval=2, val_interval=4),
        module='test_survive', model='sleepy', model_parameters={'train_seconds': 2.0}))
    done = run([path, '--no-smoke'])
    assert done.returncode == 0, done.stderr
    return {'file': path, 'logdir': logdir, 'images': image_folder, 'stdout': done.stdout}


@pytest.mark.slow
def test_a_slow_run_on_image_files_says_its_speed(slow_run):
    """The progress lines and the results table give the images/s, 0.5, not 0."""
    out = slow_run['stdout']
    rates = [float(r) for r in re.findall(r'lr \S+ ([\d.,]+) img/s', out)]
    assert rates and all(0.3 < r < 0.6 for r in rates), out
    table = out[out.index('\nrun '):]
    row = next(line.split() for line in table.splitlines() if line.startswith('r '))
    assert 0.3 < float(row[-3]) < 0.6, table


@pytest.mark.slow
def test_every_command_is_as_quiet_as_train(slow_run):
    """submit slurm --dry-run (which validates, importing TensorFlow), stats, status and
    report print none of TensorFlow's C++ start-up lines."""
    for args in (['submit', 'slurm', slow_run['file'], '--dry-run', '--no-smoke'],
                 ['stats', slow_run['images']], ['status', slow_run['logdir']],
                 ['report', slow_run['logdir']]):
        done = run(args, module=True)
        assert done.returncode == 0 and not TF_NOISE.search(done.stderr), (args, done.stderr)
        assert done.stdout.strip(), args


@pytest.mark.slow
def test_list_names_the_seed_runners_models_and_parameters_as_this_project_does(tmp_path, image_folder):
    """The seed's `module: Models.Resnets` and `WRN_16_4`: --list says cifar_WRN_16_4, the name
    the model has here (its parameters' names in HParams: test_tensorboard)."""
    logdir = tmp_path / 'logs'
    seed = {'module': 'Models.Resnets', 'dataset': {'image_folder': image_folder},
            'train_parameters': {'logdir': str(logdir), 'batch_size': 8}}
    path = write(tmp_path / 'seed.yaml', dict(seed, model='WRN_16_4'))
    done = run([path, '--list'])
    assert done.returncode == 0, done.stderr
    models = [line.split()[2] for line in done.stdout.splitlines()[1:]]
    assert models == ['cifar_WRN_16_4'], done.stdout
