"""A fuzzer that keeps hostile input out (issue 28). Hypothesis generates experiment files
(valid ones mutated: wrong types, huge and NaN numbers, deep nesting, alias bombs, odd names,
unicode, control characters, bytes that are no UTF-8) and damaged run directories (a file
truncated, emptied, made binary, given JSON of another shape or a YAML bomb, replaced by a
directory or a symbolic link). Each case runs as a user runs it, in a child process, which
must:

- exit with status 0, 1 or 2;
- print at most MAX_STDERR_LINES lines on stderr (one per problem), never a traceback;
- create or change nothing outside its log directory;
- end within TIMEOUT_S seconds, in at most ADDRESS_SPACE_BYTES of address space (past it,
  an allocation fails, which shows as a traceback).

The commands are those that only read and validate (`--list`, `submit slurm --dry-run`,
`status`, `report`): a document that fails validation never imports TensorFlow.

CI runs a small fixed budget (derandomized: the same cases every run). A longer hunt, with
new random cases each time (Hypothesis prints the smallest failing case it finds):

    CONVNET_FUZZ_EXAMPLES=300 python -m pytest -q tests/test_fuzz.py
"""
import copy
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, subprocess_env

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

RUNNER = os.path.join(ROOT, 'run_experiments.py')
TIMEOUT_S = 300                    # TensorFlow's start on a busy machine included
ADDRESS_SPACE_BYTES = 4 * 2**30
MAX_STDERR_LINES = 21              # config.MAX_ERRORS problems and the "... and N more" line
LONG_BUDGET = int(os.environ.get('CONVNET_FUZZ_EXAMPLES', '0'))


def budget(ci_examples):
    """Hypothesis settings: `ci_examples` fixed cases, or CONVNET_FUZZ_EXAMPLES random ones."""
    return settings(max_examples=LONG_BUDGET or ci_examples, derandomize=not LONG_BUDGET,
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))


def snapshot(root, skip):
    """{path: (size, mtime) of a file or link, None for a directory} under `root`, the tree
    `skip` left out, links not followed. (A directory's own mtime changes when a temporary file
    comes and goes; what it holds is what counts.)"""
    out = {}
    for path, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(path, d) != skip]
        out.update((os.path.join(path, d), None) for d in dirs)
        for name in files:
            info = os.lstat(os.path.join(path, name))
            out[os.path.join(path, name)] = (info.st_size, info.st_mtime_ns)
    return out


def check_invariants(args, case_dir, logdir):
    """Run `python ARGS` in `case_dir`; assert the module docstring's invariants. The result."""
    before = snapshot(case_dir, logdir)
    try:
        result = subprocess.run([sys.executable, *args], cwd=case_dir, capture_output=True,
                                text=True, errors='replace', timeout=TIMEOUT_S, preexec_fn=limit_memory,
                                env=subprocess_env(TMPDIR=os.path.join(case_dir, 'tmp')))
    except subprocess.TimeoutExpired:
        pytest.fail(f'{args} did not end within {TIMEOUT_S} s')
    err = result.stderr
    assert result.returncode in (0, 1, 2), f'exit status {result.returncode}\n{err[-3000:]}'
    assert 'Traceback' not in err, err[-3000:]
    assert len(err.splitlines()) <= MAX_STDERR_LINES, err[-3000:]
    after = snapshot(case_dir, logdir)
    assert after == before, f'created or changed outside {logdir}: {set(after) ^ set(before)}'
    return result


def fresh_case(tmp_path_factory):
    case = tmp_path_factory.mktemp('case')
    os.mkdir(case / 'tmp')
    return str(case)


# ---------------------------------------------------------------------------
# Experiment documents

TEXT = st.text(st.characters(codec='utf-8', exclude_categories=['Cs']), max_size=30)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([2**31 - 1, 2**31, 10**9 + 1, 10**30, -1, 0, 1]),
    st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, min_size=1, max_size=4)
                      | st.dictionaries(TEXT, inner, min_size=1, max_size=4), max_leaves=10)
ODD_NAMES = st.one_of(TEXT, st.sampled_from([
    '../up', '/absolute', 'a' * 201, 'é' * 101, 'ok/seed0', '.hidden', 'a//b', 'a\nb', 'a b',
    'r' * 200, 'x/' * 60 + 'y', 'con', 'NUL', '-rf', '\u202e' + 'txt.exe']))


def key_names():
    from runner.config.reference import reference
    keys = [row.key for row in reference() if row.type != 'section']
    return keys + ['grid', 'repeats', 'model_parameters.x', 'train_parameters.typo', 'unknown',
                   'dataset', 'train_parameters', 'paper', 'train_parameters.freeze_after.layer']


KEYS = st.sampled_from(key_names())


def base_document(images):
    """A valid experiment (no_decay_cnn takes no parameters, so no mutation builds a huge model)."""
    return {'model': 'no_decay_cnn', 'module': 'tiny_models', 'dataset': {'image_folder': images},
            'train_parameters': {'batch_size': 8, 'eval_batch_size': 8, 'lr_values': [0.1],
                                 'lr_boundaries': [20], 'logdir': 'logs', 'run_name': 'r'}}


def set_path(doc, dotted, value):
    node = doc
    parts = dotted.split('.')
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def bomb(levels, width):
    items = ['&a0 [' + ', '.join(['lol'] * width) + ']']
    items += [f'&a{i} [' + ', '.join([f'*a{i - 1}'] * width) + ']' for i in range(1, levels)]
    return '[' + ', '.join(items) + ']'


RAW = {  # YAML that safe_dump cannot write, put where a mutation left PLACEHOLDER
    'bomb': st.builds(bomb, st.integers(2, 9), st.integers(2, 9)),
    'recursive': st.just('&r [*r, *r]'),
    'deep': st.integers(15, 3000).map(lambda n: '[' * n + ']' * n),
    'merge': st.just('{<<: {a: 1}, b: 2}'),
    'tag': st.sampled_from(['!!python/object:os.system x', '!!binary aGk=', '!!set {a, b}',
                            '!!timestamp 2001-12-14']),
}
PLACEHOLDER = 'PLACEHOLDER_VALUE'


@st.composite
def document_text(draw, images):
    """One document's YAML: the valid base, mutated."""
    doc = copy.deepcopy(base_document(images))
    raw = None
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(['set', 'set', 'delete', 'name', 'raw', 'grid']))
        key = draw(KEYS)
        if kind == 'set':
            set_path(doc, key, draw(VALUES))
        elif kind == 'delete':
            doc.pop(key.split('.')[0], None)
        elif kind == 'name':
            set_path(doc, 'train_parameters.run_name', draw(ODD_NAMES))
        elif kind == 'grid':
            doc['grid'] = {key: draw(st.lists(VALUES, max_size=5))}
            doc['repeats'] = draw(st.one_of(st.integers(-2, 2000), VALUES))
        elif raw is None:
            raw = draw(st.sampled_from(sorted(RAW)))
            set_path(doc, key, PLACEHOLDER)
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))
    if raw is not None:
        text = text.replace(PLACEHOLDER, draw(RAW[raw]))
    return text


@st.composite
def experiment_file(draw, images):
    """The bytes of an experiment file: one to three documents, sometimes with a byte spliced in
    (a control character, a byte that is no UTF-8, a NUL)."""
    data = '---\n'.join(draw(st.lists(document_text(images), min_size=1, max_size=3))).encode()
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b'\x00', b'\x07', b'\r', b'\x1b[2J', b'\xff', b'\xc3',
                                                 b'\t', b'\xef\xbb\xbf', '\u2028'.encode()])) + data[at:]
    return data


COMMANDS = {
    'list': lambda path: [RUNNER, path, '--list'],
    'dry-run': lambda path: ['-m', 'runner', 'submit', 'slurm', path, '--dry-run', '--no-smoke'],
}


@pytest.fixture(scope='module')
def fuzz_images(image_folder):
    return image_folder


def test_experiment_files(fuzz_images, tmp_path_factory):
    @budget(8)
    @given(data=experiment_file(fuzz_images), command=st.sampled_from(sorted(COMMANDS)))
    @example(data=b'grid: {model: [null]}\nmodel: [&a [lol], [*a]]\n', command='list')  # found
    def case(data, command):
        case_dir = fresh_case(tmp_path_factory)
        path = os.path.join(case_dir, 'e.yaml')
        with open(path, 'wb') as f:
            f.write(data)
        check_invariants(COMMANDS[command](path), case_dir, os.path.join(case_dir, 'logs'))
        shutil.rmtree(case_dir)
    case()


# ---------------------------------------------------------------------------
# Damaged run directories

def healthy_logdir(logdir, images):
    """Runs as the runner's own writers leave them: `r` (finished, with a checkpoint, a lock
    record and a Slurm record) and the repeats `g/seed0`, `g/seed1`."""
    from runner import rundir
    from runner.config.expand import experiment_from_dict
    from runner.config.yaml_io import dump_yaml
    from runner.queue.runlock import RunLock
    for name in ('r', 'g/seed0', 'g/seed1'):
        doc = base_document(images)
        doc['train_parameters'].update(run_name=name, logdir=logdir)
        exp = experiment_from_dict(doc)
        run_dir = rundir.RunDir.of(exp)
        os.makedirs(run_dir.checkpoints)
        rundir.write_atomic(run_dir.config, dump_yaml(exp.to_dict()))
        rundir.write_summary(run_dir, {
            'run_name': name, 'model': exp.model, 'status': 'finished', 'steps': 20, 'total_steps': 20,
            'params': 1468, 'test_top1_accuracy': 0.75, 'best_test_top1_accuracy': 0.8,
            'selection_split': 'test', 'train_images_per_second': 1000.0, 'wall_seconds': 12.5,
            'paper': {'top1_error': 8.75, 'source': 'He et al. 2016'}})
        for step in (5, 10, 15, 20):
            rundir.append_metrics(run_dir, {'kind': 'train', 'step': step, 'loss': 1.0, 'error': 0.5,
                                            'lr': 0.1})
            if step % 10 == 0:
                rundir.append_metrics(run_dir, {'kind': 'test', 'step': step, 'top1_error': 0.3})
        lock = RunLock(run_dir)
        lock.acquire()
        lock.release()
        with open(run_dir.submit_record, 'w') as f:
            json.dump({'array_job_id': '12', 'array_task_id': 0, 'submitted': '2026-01-01T00:00:00'}, f)
        with open(os.path.join(run_dir.checkpoints, 'checkpoint'), 'w') as f:
            f.write('model_checkpoint_path: "ckpt-20"\nall_model_checkpoint_paths: "ckpt-20"\n')
        for suffix in ('index', 'data-00000-of-00001'):
            with open(os.path.join(run_dir.checkpoints, f'ckpt-20.{suffix}'), 'wb') as f:
                f.write(os.urandom(64))
        with open(run_dir.data_info, 'w') as f:
            json.dump({'image_shape': [32, 32, 3], 'class_names': ['a', 'b']}, f)


TARGETS = ['r/summary.json', 'r/config.yaml', 'r/metrics.jsonl', 'r/.lock', 'r/slurm.json',
           'r/data_info.json', 'r/checkpoints', 'r/checkpoints/checkpoint', 'r/checkpoints/ckpt-20.index',
           'r', 'g', 'g/seed0/summary.json', 'g/seed1/config.yaml', 'g/seed1/metrics.jsonl']
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | TEXT,
                    lambda inner: st.lists(inner, min_size=1, max_size=3) | st.dictionaries(
                        st.sampled_from(['status', 'steps', 'total_steps', 'error', 'model', 'paper',
                                         'test_top1_accuracy', 'wall_seconds', 'kind', 'step', 'lr',
                                         'host', 'pid', 'top1_error', 'params', 'x']) | TEXT,
                        inner, min_size=1, max_size=5), max_leaves=8)
DAMAGE = st.one_of(
    st.tuples(st.just('truncate'), st.floats(0, 1)),
    st.tuples(st.just('empty')),
    st.tuples(st.just('binary'), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just('json'), JSON),
    st.tuples(st.just('json lines'), st.lists(JSON, min_size=1, max_size=4)),
    st.tuples(st.just('yaml'), st.sampled_from([bomb(9, 9), '&r [*r]', '[' * 2000 + ']' * 2000,
                                                '!!python/object/apply:os.system ["x"]'])),
    st.tuples(st.just('directory')),
    st.tuples(st.just('symlink'), st.sampled_from(['outside file', 'outside directory', 'dangling',
                                                   'itself', 'parent'])),
)


def damage(path, how, case_dir):
    """Apply one damage to the file or directory at `path` (absent: created by it)."""
    kind = how[0]
    parent = os.path.dirname(path)
    if os.path.islink(parent) or not os.path.isdir(parent):
        return  # an earlier damage replaced the directory it was in
    if kind == 'truncate':
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, 'r+b') as f:
                f.truncate(int(os.path.getsize(path) * how[1]))
        return
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    if kind == 'directory':
        os.makedirs(os.path.join(path, 'inside'))
    elif kind == 'symlink':
        targets = {'outside file': os.path.join(case_dir, 'outside.txt'),
                   'outside directory': os.path.join(case_dir, 'outside'), 'dangling': '/nonexistent/x',
                   'itself': path, 'parent': '..'}
        os.symlink(targets[how[1]], path)
    else:
        value = how[-1]
        if kind == 'json':
            data = json.dumps(value).encode()
        elif kind == 'json lines':
            data = b'\n'.join(json.dumps(v).encode() for v in value)
        elif kind == 'yaml':
            data = value.encode()
        else:
            data = value if kind == 'binary' else b''
        with open(path, 'wb') as f:
            f.write(data)


def test_damaged_run_directories(fuzz_images, tmp_path_factory):
    @budget(10)
    @given(damages=st.lists(st.tuples(st.sampled_from(TARGETS), DAMAGE), min_size=1, max_size=3),
           command=st.sampled_from(['status', 'report']))
    @example(damages=[('r/summary.json', ('json', {'status': None}))], command='status')  # found
    def case(damages, command):
        case_dir = fresh_case(tmp_path_factory)
        logdir = os.path.join(case_dir, 'logs')
        healthy_logdir(logdir, fuzz_images)
        os.makedirs(os.path.join(case_dir, 'outside'))
        with open(os.path.join(case_dir, 'outside.txt'), 'w') as f:
            f.write('not the runner\'s\n')
        for target, how in damages:
            damage(os.path.join(logdir, target), how, case_dir)
        check_invariants(['-m', 'runner', command, logdir], case_dir, logdir)
        shutil.rmtree(case_dir)
    case()
