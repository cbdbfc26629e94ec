"""Nothing hostile gets through (issue 28): each probe that once got through, done for real in a
child process as a user would: YAML alias bombs, a symbolic link out of logdir, a newline in a
Slurm option, damaged summary.json and metrics.jsonl, a foreign folder in logdir, values that
could only fail later, a model module that exits, what status says of a run that lost its
summary, the free space a run needs, TensorFlow's notices and autograph's temporary files.

tests/test_fuzz.py generates such cases at random and checks the same invariants.
"""
import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import yaml

from conftest import ROOT, subprocess_env

RUNNER = os.path.join(ROOT, 'run_experiments.py')
# Every child here: at most this long (TensorFlow's start on a busy machine included), and at
# most this much address space, so a document that would grow without end fails instead of
# taking the machine's memory.
TIMEOUT_S = 300
ADDRESS_SPACE_BYTES = 4 * 2**30


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))


def run(args, cwd, **env):
    """`python ARGS` in `cwd` (a runner command), bounded in time and memory."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env(**env), text=True,
                          capture_output=True, timeout=TIMEOUT_S, preexec_fn=limit_memory)


def error_lines(result, code, count=1):
    """The `error:` lines of a child that exited with `code`, `count` of them, no traceback."""
    err = result.stderr
    assert result.returncode == code, result.stdout + err
    assert 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == count, err
    return lines


def experiment(images, run_name, logdir='logs', **train):
    tp = dict(batch_size=8, eval_batch_size=8, lr_values=[0.1], lr_boundaries=[20], log_interval=5,
              val_interval=10, checkpoint_interval=10, logdir=logdir, run_name=run_name)
    tp.update(train)
    return {'model': 'tiny_cnn', 'module': 'tiny_models', 'dataset': {'image_folder': images},
            'train_parameters': tp}


def write(path, *docs):
    with open(path, 'w') as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return str(path)


# ---------------------------------------------------------------------------
# 1. Alias bombs, deep and recursive documents: one line, at once, in bounded memory

def bomb(levels=9, width=9):
    """A flow list whose aliases stand for width**levels strings (9**9: 387 million)."""
    items = ['&a0 [' + ', '.join(['lol'] * width) + ']']
    items += [f'&a{i} [' + ', '.join([f'*a{i - 1}'] * width) + ']' for i in range(1, levels)]
    return '[' + ', '.join(items) + ']'


BOMBS = {
    'paper.source': 'model: tiny_cnn\npaper: {source: BOMB}\n',
    'model_parameters': 'model: tiny_cnn\nmodel_parameters: {x: BOMB}\n',
    'grid': 'model: tiny_cnn\ngrid: {model_parameters.width: [1, BOMB]}\n',
    'freeze_after': 'model: tiny_cnn\ntrain_parameters: {freeze_after: {stem: BOMB}}\n',
    'whole document': 'BOMB\n',
}


@pytest.mark.parametrize('where', list(BOMBS))
def test_an_alias_bomb_is_one_line_at_once(where, tmp_path):
    path = tmp_path / 'bomb.yaml'
    path.write_text(BOMBS[where].replace('BOMB', bomb()))
    result = run([RUNNER, str(path), '--list'], tmp_path)
    (line,) = error_lines(result, 2)
    assert 'more than 100,000 values once its aliases are expanded' in line, line


@pytest.mark.parametrize('text, says', [
    ('model: tiny_cnn\nmodel_parameters: {x: ' + '[' * 3000 + ']' * 3000 + '}\n', 'nested more than 20 deep'),
    ('model: tiny_cnn\nmodel_parameters: {x: ' + '[' * 25 + ']' * 25 + '}\n', 'nested more than 20 deep'),
    ('model: &a [*a]\n', 'nested more than 20 deep'),                       # an alias inside itself
    ('model: tiny_cnn\nmodel_parameters: &m {x: *m}\n', 'nested more than 20 deep'),
])
def test_deep_or_recursive_documents_are_one_line(text, says, tmp_path):
    path = tmp_path / 'deep.yaml'
    path.write_text(text)
    (line,) = error_lines(run([RUNNER, str(path), '--list'], tmp_path), 2)
    assert says in line, line


def test_a_bomb_given_with_set_and_a_grid_of_too_many_runs(tmp_path, image_folder):
    path = write(tmp_path / 'e.yaml', experiment(image_folder, 'r'))
    result = run([RUNNER, path, '--list', '--set', f'paper.source={bomb()}'], tmp_path)
    assert 'more than 100,000 values' in error_lines(result, 2)[0]
    grid = dict(experiment(image_folder, 'g'),
                grid={'train_parameters.seed': list(range(20)),
                      'train_parameters.batch_size': list(range(1, 21)),
                      'train_parameters.eval_batch_size': list(range(1, 21))})
    result = run([RUNNER, write(tmp_path / 'g.yaml', grid), '--list'], tmp_path)
    assert 'grid: expands into 8,000 runs, more than 1,000' in error_lines(result, 2)[0]


# ---------------------------------------------------------------------------
# 2. A symbolic link out of logdir

def test_a_run_directory_linked_out_of_logdir_is_refused(tmp_path, image_folder):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (tmp_path / 'logs').mkdir()
    os.symlink(elsewhere, tmp_path / 'logs' / 'link')
    path = write(tmp_path / 'e.yaml', experiment(image_folder, 'link'))
    (line,) = error_lines(run([RUNNER, path, '--list'], tmp_path), 2)
    assert "logs/link is a symbolic link to" in line and 'out of the log directory' in line, line
    assert os.listdir(elsewhere) == []


def test_a_link_out_of_logdir_inside_a_run_directory_is_refused(tmp_path, image_folder):
    """A run to resume whose checkpoints/ leads elsewhere: its checkpoints would be written there."""
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (tmp_path / 'logs' / 'r').mkdir(parents=True)
    os.symlink(elsewhere, tmp_path / 'logs' / 'r' / 'checkpoints')
    path = write(tmp_path / 'e.yaml', experiment(image_folder, 'r'))
    (line,) = error_lines(run([RUNNER, path, '--list'], tmp_path), 2)
    assert 'logs/r/checkpoints is a symbolic link' in line, line


def test_a_link_that_stays_inside_logdir_is_fine(tmp_path):
    from runner.rundir import link_out_of
    logdir = tmp_path / 'logs'
    (logdir / 'real').mkdir(parents=True)
    os.symlink(logdir / 'real', logdir / 'alias')
    os.symlink('../real', logdir / 'real' / 'up')  # a link in a run, to inside logdir
    assert link_out_of(str(logdir), str(logdir / 'alias')) is None
    os.symlink('/etc/hostname', logdir / 'real' / 'summary.json')
    assert link_out_of(str(logdir), str(logdir / 'real')) == str(logdir / 'real' / 'summary.json')


# ---------------------------------------------------------------------------
# 3. The Slurm job script: control characters refused, values quoted as sbatch reads them

@pytest.mark.parametrize('option', [
    ['--partition', 'gpu\necho INJECTED'],
    ['--sbatch', 'constraint=a100\necho INJECTED'],
    ['--logdir', 'logs\necho INJECTED'],
    ['--set', 'paper.source=x\necho INJECTED'],
])
def test_a_newline_in_a_slurm_option_is_refused(option, tmp_path, image_folder):
    path = write(tmp_path / 'e.yaml', experiment(image_folder, 'r'))
    result = run(['-m', 'runner', 'submit', 'slurm', path, *option, '--dry-run'], tmp_path)
    (line,) = error_lines(result, 2)
    assert f'{option[0]}: ' in line and 'control character' in line, line
    assert 'INJECTED' not in result.stdout and not os.path.exists(tmp_path / 'logs')


@pytest.mark.needs('slurm')
def test_spaces_and_quotes_reach_sbatch_whole_and_dry_run_writes_nothing(tmp_path, image_folder, slurm):
    """The script of a dry run holds the values quoted; the test Slurm's `sbatch --test-only`
    takes it (unquoted, 'hello world' is an invalid directive there, and a lone quote a fatal
    error); the dry run created no log directory."""
    logdir = tmp_path / 'new logs'
    path = write(tmp_path / 'e.yaml', experiment(image_folder, 'r', logdir=str(logdir)))
    comment = 'it\'s a "test" \\ run'
    result = run(['-m', 'runner', 'submit', 'slurm', path, '--no-smoke', '--dry-run',
                  '--sbatch', f'comment={comment}'], tmp_path, SLURM_CONF=slurm.conf)
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    script = result.stdout
    assert '#SBATCH --comment="it\'s a \\"test\\" \\\\ run"' in script, script
    assert f'#SBATCH --output="{logdir}/slurm-jobs/%A_%a.out"' in script, script
    assert not os.path.exists(logdir)
    (tmp_path / 'job.sh').write_text(script)
    test = subprocess.run(['sbatch', '--test-only', str(tmp_path / 'job.sh')], capture_output=True,
                          text=True, timeout=60, env=subprocess_env(SLURM_CONF=slurm.conf))
    assert test.returncode == 0 and 'to start at' in test.stderr, test.stderr


# ---------------------------------------------------------------------------
# 7, 8. Bounds at validation; a model module that exits

def test_what_could_only_fail_later_is_refused_at_validation(tmp_path, image_folder):
    """Each problem a line of its own in one round, exit status 2, no log directory made."""
    (tmp_path / 'exits_on_import.py').write_text('import sys\nsys.exit(0)\n')
    docs = [experiment(image_folder, 'huge', lr_values=[0.1, 0.01],
                       lr_boundaries=[20, 99999999999999999999999999999]),
            experiment(image_folder, 'x' * 300),
            experiment(image_folder, 'far', steps=2_000_000_000),
            dict(experiment(image_folder, 'exits'), module='exits_on_import')]
    result = run([RUNNER, write(tmp_path / 'e.yaml', *docs), '--list'], tmp_path,
                 PYTHONPATH=str(tmp_path))
    lines = error_lines(result, 2, count=4)
    assert 'lr_boundaries[1]: must be between -2147483647 and 2147483647' in lines[0], lines[0]
    assert 'is longer than 200 bytes' in lines[1], lines[1]
    assert 'train_parameters.steps: must be in [1, 1000000000] or null, got 2000000000' in lines[2], lines[2]
    assert "module: importing 'exits_on_import' called sys.exit(0)" in lines[3], lines[3]
    assert not os.path.exists(tmp_path / 'logs')


# ---------------------------------------------------------------------------
# 4, 6, 10, 11. A queue on a small disk: killed, damaged, resumed

ROOT_NEEDED = pytest.mark.needs('root')  # the queue's disk is a tmpfs it mounts
QUEUE_DISK = '16m'  # a tiny run writes well under 1 MiB; the old check wanted 64 MiB free


@pytest.fixture(scope='module')
def queue(image_folder, tmp_path_factory):
    """Three runs on a 16 MiB tmpfs: `a` and `bomb` train their 20 steps, `b` is SIGKILLed once
    it has logged step 25 of 1000 (its checkpoints of steps 10 and 20 saved); then a's
    summary.json becomes
    `[1]`, an alias bomb is added to bomb's config.yaml, a line of bytes is put into b's
    metrics.jsonl and b's newest checkpoint loses its index, and the same command runs again
    to 40 steps. The children's $TMPDIR is a directory of their own."""
    root = tmp_path_factory.mktemp('queue')
    logdir, tmpdir = root / 'logs', root / 'tmp'
    logdir.mkdir()
    tmpdir.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={QUEUE_DISK}', 'none', str(logdir)], check=True)
    try:
        path = write(root / 'q.yaml', experiment(image_folder, 'a', logdir=str(logdir)),
                     experiment(image_folder, 'bomb', logdir=str(logdir)),
                     experiment(image_folder, 'b', logdir=str(logdir), lr_boundaries=[1000]))
        first = kill_at(path, root, tmpdir, 'b step 25/1000')
        leftovers = os.listdir(tmpdir)
        with open(logdir / 'a' / 'summary.json', 'w') as f:
            f.write('[1]\n')
        with open(logdir / 'bomb' / 'config.yaml', 'a') as f:
            f.write(f'paper: {{source: {bomb()}}}\n')
        metrics_path = logdir / 'b' / 'metrics.jsonl'
        lines = metrics_path.read_bytes().splitlines(keepends=True)
        metrics_path.write_bytes(b''.join(lines[:2] + [b'\xff\xfe\x00\x9c binary\n'] + lines[2:]))
        newest = max(glob.glob(str(logdir / 'b' / 'checkpoints' / '*.index')),
                     key=lambda p: int(p.rsplit('-', 1)[1].split('.')[0]))
        os.remove(newest)
        second = run([RUNNER, path, '--no-smoke', '--set', 'train_parameters.steps=40'], root,
                     TMPDIR=str(tmpdir))
        yield {'logdir': logdir, 'root': root, 'first': first, 'leftovers': leftovers,
               'second': second, 'kept': [json.loads(l) for l in lines[:2] + lines[2:]],
               'moved': os.path.basename(newest)[:-len('.index')]}
    finally:
        subprocess.run(['umount', '-l', str(logdir)], check=False)


def kill_at(path, cwd, tmpdir, line_start):
    """Run the queue of `path` until a line of its output starts with `line_start`, then
    SIGKILL it; what it printed."""
    proc = subprocess.Popen([sys.executable, RUNNER, path, '--no-smoke'], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=subprocess_env(TMPDIR=str(tmpdir)))
    timer = threading.Timer(TIMEOUT_S, proc.kill)
    timer.start()
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith(line_start):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    text = ''.join(out)
    assert any(l.startswith(line_start) for l in out), text
    return text


@ROOT_NEEDED
def test_a_small_disk_takes_a_tiny_run(queue):
    """The free-space check asks for what the run writes (about 3 MiB here), not 64 MiB."""
    assert 'a step 20/20: test top-1 error' in queue['first'], queue['first']
    assert 'MiB free' not in queue['first']


@ROOT_NEEDED
def test_a_killed_run_leaves_no_autograph_files_in_tmpdir(queue):
    assert not [n for n in queue['leftovers'] if n.startswith('__autograph_generated_file')], \
        queue['leftovers']


@ROOT_NEEDED
def test_a_damaged_summary_is_one_line_and_the_queue_goes_on(queue):
    second, logdir = queue['second'], queue['logdir']
    a, bomb_line = error_lines(second, 1, count=2)
    assert f"{logdir}/a/summary.json: cannot be read (not a mapping of keys); --restart a" in a, a
    assert f"{logdir}/bomb/config.yaml: cannot be read (more than 100,000 values" in bomb_line, bomb_line
    summary = json.loads((logdir / 'b' / 'summary.json').read_text())
    assert summary['status'] == 'finished' and summary['steps'] == 40


@ROOT_NEEDED
def test_binary_metrics_lines_are_dropped_by_name_and_the_run_resumes(queue):
    second, logdir = queue['second'], queue['logdir']
    assert f'b: {logdir}/b/metrics.jsonl: dropped 1 damaged line(s)' in second.stderr, second.stderr
    records = [json.loads(l) for l in (logdir / 'b' / 'metrics.jsonl').read_text().splitlines()]
    resumed_from = int(queue['moved'].rsplit('-', 1)[1]) - 10
    kept = [r for r in queue['kept'] if r['step'] <= resumed_from]
    assert records[:len(kept)] == kept and kept[0]['step'] == 5
    assert records[-1]['step'] == 40


@ROOT_NEEDED
def test_an_unreadable_checkpoint_is_one_line_without_tensorflow_notices(queue):
    err = queue['second'].stderr
    assert f"{queue['moved']} is unreadable" in err and 'moved to' in err, err
    assert 'deprecated' not in err and 'Instructions for updating' not in err, err


@ROOT_NEEDED
def test_status_and_report_show_damage_and_what_the_checkpoints_say(queue):
    """a: summary.json `[1]` beside checkpoints; c: b without summary.json (a full disk before
    the first one was written); e: b with an empty one; foreign: a folder of another tool
    whose summary.json says `"status": 5`."""
    logdir = queue['logdir']
    shutil.copytree(logdir / 'b', logdir / 'c')
    os.remove(logdir / 'c' / 'summary.json')
    shutil.copytree(logdir / 'b', logdir / 'e')
    (logdir / 'e' / 'summary.json').write_text('')
    (logdir / 'foreign').mkdir()
    (logdir / 'foreign' / 'summary.json').write_text('{"status": 5}')
    status = run(['-m', 'runner', 'status', str(logdir)], queue['root'])
    assert status.returncode == 0 and status.stderr == '', status.stderr
    rows = {l.split()[0]: l.split()[1:3] for l in status.stdout.splitlines()[1:] if not l.startswith(' ')}
    assert rows['a'] == ['damaged', '20/?'] and rows['b'][0] == 'finished', status.stdout
    assert rows['c'] == ['interrupted', '40/?'] and rows['e'] == ['damaged', '40/?'], status.stdout
    assert rows['foreign'] == ['damaged', '-'], status.stdout
    assert "c: no summary.json; its newest checkpoint is at step 40" in status.stdout
    assert "e: " in status.stdout and '--restart e starts the run over' in status.stdout
    assert "foreign/summary.json: cannot be read (its 'status' is int '5')" in status.stdout
    report = run(['-m', 'runner', 'report', str(logdir)], queue['root'])
    assert report.returncode == 0 and 'Traceback' not in report.stderr, report.stderr
    table = {l.split()[0]: l.split()[-1] for l in report.stdout.splitlines()[1:] if l.strip()}
    assert table['a'] == table['e'] == table['foreign'] == 'damaged', report.stdout


def test_a_run_too_large_for_the_disk_is_refused_with_its_estimate(tmp_path):
    """The estimate counts every checkpoint kept (a million parameters: 16 MB each) and stays
    small for a tiny run; a disk without that much free is refused in one line that gives it."""
    from runner.config.schema import Experiment
    from runner.rundir import check_writable
    from runner.rundir import run_bytes
    exp = Experiment(model='m')
    assert run_bytes(exp, 1_000_000, 10) > 4 * 4 * 1_000_000 * (exp.train_parameters.keep_checkpoints + 1)
    tiny = Experiment(model='m')
    tiny.train_parameters.lr_boundaries, tiny.train_parameters.log_interval = [20], 5
    tiny.train_parameters.val_interval = 10
    assert run_bytes(tiny, 1_500, 4) < 8 * 2**20
    problem = check_writable(str(tmp_path), 10 * 2**40)
    assert problem.startswith(f"train_parameters.logdir: '{tmp_path}' has ") and \
        'a run needs about 10485760.0 MiB (its checkpoints and logs, with a margin)' in problem, problem
