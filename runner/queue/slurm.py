"""`python -m runner submit slurm FILE ...`: the queue as one Slurm job array, one task per
run not finished yet; task K runs `python -m runner train FILE ... --index K --no-smoke`.

Everything is checked here, once, before anything is submitted: the experiments validate
and pass the smoke test. Then one `sbatch` of a generated job script:

- `--array=<indices>%<max-parallel>` over the runs not finished; a task's index is the run's
  index in `--list` (runner.queue.shares), so a task always trains the run it was made for.
  A search (runner.search) gets `search.trials` tasks: its own index and further ones after
  the queue's, mapped to its index in the script; each trains trials of the shared study
  until none is left, a requeued one resuming the trial it was in.
- `--requeue`: a task that Slurm stops (preemption, `scontrol requeue`) goes back to the queue.
  Slurm sends SIGTERM to every process of the job first, the runner included, which saves a
  checkpoint at the end of the step and stops (signals.StopRequest); the next allocation resumes
  from it. KillWait (30 s by default) is how long it has.
- `--signal=B:USR1@<lead>`: some minutes before the time limit Slurm signals the batch shell
  (B: the shell only, sbatch(1)), which passes SIGTERM on to the runner, waits for its
  checkpoint, and requeues its own job: a run longer than the partition's limit continues in
  the next allocation. Slurm may send the signal up to 60 s earlier than asked.
- `--open-mode=append`, and each task appends its output to `<logdir>/<run>/slurm.out`, one
  header line per allocation; Slurm's own messages (a time limit, a requeue) go to
  `<logdir>/slurm-jobs/<job>_<task>.out`, beside the submitted script.
- `--wait` is `sbatch --wait` (Slurm does the waiting), then the usual results table.

Runs claim themselves with runner.queue.runlock, so a task that meets its run held by another
process (a straggler of a preempted allocation, a user's own command) skips it. Slurm:
https://slurm.schedmd.com/sbatch.html, https://slurm.schedmd.com/job_array.html. This module
imports TensorFlow only through the validation it runs (runner.cli), so `status` can use its
constants cheaply.
"""
import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys

from runner import rundir
from runner.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from runner.rundir import SLURM_OUTPUT, SUMMARY, RunDir

# Seconds before the time limit at which the batch shell is told to stop (at most half the
# limit): time for the step under way, a checkpoint and the requeue, with room for Slurm
# sending the signal up to 60 s early (sbatch(1), --signal).
SIGNAL_LEAD_SECONDS = 180
STOP_SIGNAL = 'USR1'
# Exit status 0 when the run's summary.json says it has not ended (absent, or interrupted).
NOT_ENDED = ('import json, sys\n'
             'try:\n    status = json.load(open(sys.argv[1])).get("status")\n'
             'except (OSError, ValueError):\n    status = None\n'
             'sys.exit(status in ("finished", "failed", "diverged"))')


def build_parser():
    from runner.cli import positive_int
    p = argparse.ArgumentParser(
        prog='python -m runner submit slurm',
        description='Validate and smoke-test the experiments here, then submit one Slurm job '
                    'array with one task per run not finished yet (run_experiments.py --index K). '
                    'Tasks stopped by Slurm checkpoint and requeue; the next allocation resumes.')
    p.add_argument('files', nargs='*', metavar='FILE', default=['experiments.yaml'],
                   help='experiment files (default: experiments.yaml)')
    p.add_argument('--only', metavar='NAME[,NAME]', action='append', default=[],
                   help='submit only these run names')
    p.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], dest='overrides',
                   help='override a key in every selected experiment (VALUE is YAML)')
    p.add_argument('--logdir', help='write runs under this directory (train_parameters.logdir)')
    p.add_argument('--partition', help='sbatch --partition')
    p.add_argument('--account', help='sbatch --account')
    p.add_argument('--qos', help='sbatch --qos')
    p.add_argument('--gpus-per-run', type=int, metavar='N', help='GPUs of each task (--gres=gpu:N)')
    p.add_argument('--cpus-per-run', type=int, metavar='N', help='CPUs of each task (--cpus-per-task)')
    p.add_argument('--mem-per-run', metavar='SIZE', help='memory of each task, e.g. 16G (--mem)')
    p.add_argument('--time', metavar='HH:MM:SS',
                   help="each allocation's time limit; a run longer than it is checkpointed and "
                        'requeued, and continues in the next allocation')
    p.add_argument('--signal-lead', type=int, metavar='SECONDS',
                   help=f'stop and requeue this long before the time limit (default '
                        f'{SIGNAL_LEAD_SECONDS}, at most half the limit); Slurm may signal up to '
                        f'60 s earlier')
    p.add_argument('--max-parallel', type=int, metavar='N', help='at most N tasks at once (--array=...%%N)')
    p.add_argument('--sbatch', metavar='KEY=VALUE', action='append', default=[],
                   help='any other sbatch option, e.g. --sbatch constraint=a100 (as #SBATCH --KEY=VALUE)')
    p.add_argument('--no-smoke', action='store_true', help='skip the smoke test')
    p.add_argument('--smoke-jobs', metavar='N', type=positive_int, default=None,
                   help='smoke-test in N worker processes (default: one per CPU core)')
    p.add_argument('--dry-run', action='store_true',
                   help='validate, print the job script, submit nothing (no smoke test)')
    p.add_argument('--wait', action='store_true',
                   help='wait for the array to end (sbatch --wait), print the results; exit 0 '
                        'only if every run finished')
    return p


def time_seconds(text):
    """Seconds of a Slurm time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (sbatch(1), --time)."""
    m = re.fullmatch(r'(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?', text.strip())
    if not m:
        return None
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        return ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
    if c is not None:     # H:M:S
        return (a * 60 + b) * 60 + c
    if b is not None:     # M:S
        return a * 60 + b
    return a * 60         # M


def sbatch_options(args):
    """The #SBATCH options from the command line (the array and signal aside); ConfigError
    names the option that is wrong."""
    from runner.config.errors import ConfigError
    opts = [('ntasks', '1')]
    for name, flag in (('gpus_per_run', 'gres'), ('cpus_per_run', 'cpus-per-task'),
                       ('max_parallel', None), ('signal_lead', None)):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: {value} is not a positive number")
        if value is not None and flag:
            opts.append((flag, f'gpu:{value}' if flag == 'gres' else str(value)))
    if args.mem_per_run is not None:
        if not re.fullmatch(r'\d+[KMGT]?', args.mem_per_run):
            raise ConfigError(f"--mem-per-run: '{args.mem_per_run}' is not a size such as 16G or 16000M")
        opts.append(('mem', args.mem_per_run))
    if args.time is not None:
        if not time_seconds(args.time):
            raise ConfigError(f"--time: '{args.time}' is not a time limit such as 04:00:00 or 1-00:00:00")
        opts.append(('time', args.time))
        if args.signal_lead is not None and args.signal_lead >= time_seconds(args.time):
            raise ConfigError(f'--signal-lead: {args.signal_lead} s is not shorter than --time {args.time}')
    for name in ('partition', 'account', 'qos'):
        if getattr(args, name):
            opts.append((name, getattr(args, name)))
    for item in args.sbatch:
        key, eq, value = item.partition('=')
        key = key.strip().lstrip('-')
        if not re.fullmatch(r'[A-Za-z][A-Za-z0-9-]*', key):
            raise ConfigError(f"--sbatch: '{item}' is not KEY=VALUE (e.g. --sbatch constraint=a100)")
        if key in ('array', 'signal', 'requeue', 'no-requeue', 'open-mode', 'output', 'error',
                   'chdir', 'wait', 'parsable'):
            raise ConfigError(f"--sbatch: '{key}' is set by submit itself and cannot be changed")
        opts.append((key, value) if eq else (key, None))
    return opts


def signal_lead(args):
    """Seconds before the time limit to ask for the stop signal."""
    if args.signal_lead is not None:
        return args.signal_lead
    seconds = time_seconds(args.time) if args.time else None
    return min(SIGNAL_LEAD_SECONDS, seconds // 2) if seconds else SIGNAL_LEAD_SECONDS


def array_spec(indices, max_parallel=None):
    """[0, 1, 2, 5] -> '0-2,5' (and '%N'): sbatch --array."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(str(start) if start == k else f'{start}-{k}')
            start = None
    return ','.join(parts) + (f'%{max_parallel}' if max_parallel else '')


def train_command(args):
    """What each task runs, its --index added in the script."""
    cmd = [sys.executable, '-m', 'runner', 'train', *args.files]
    for only in args.only:
        cmd += ['--only', only]
    for item in args.overrides:
        cmd += ['--set', item]
    if args.logdir:
        cmd += ['--logdir', args.logdir]
    return cmd + ['--no-smoke']


def job_script(args, pending, options, jobs_dir, index_of=None):
    """The batch script: `pending` is [(task, run_name, run_dir)]; a task trains run `task` of
    the queue, or run index_of[task] when given (a search's further tasks: search_tasks)."""
    lead = signal_lead(args)
    header = [('job-name', 'convnet-runner'),
              ('array', array_spec([k for k, _, _ in pending], args.max_parallel)),
              ('requeue', None), ('open-mode', 'append'),
              ('signal', f'B:{STOP_SIGNAL}@{lead}'),
              ('output', os.path.join(jobs_dir, '%A_%a.out')),
              ('chdir', os.getcwd())] + options
    lines = ['#!/bin/bash',
             '# Made by `python -m runner submit slurm` (convnet-runner): array task K trains',
             '# run K of `run_experiments.py --list` with the same files, --only and --set.']
    lines += [f'#SBATCH --{k}' + (f'={v}' if v is not None else '') for k, v in header]
    dirs = ' '.join(f'[{k}]={shlex.quote(d)}' for k, _, d in pending)
    names = ' '.join(f'[{k}]={shlex.quote(n)}' for k, n, _ in pending)
    cmd = ' '.join(shlex.quote(c) for c in train_command(args))
    index = '"$SLURM_ARRAY_TASK_ID"'
    if index_of:
        lines.append('INDEX=(' + ' '.join(f'[{t}]={k}' for t, k in index_of.items()) + ')')
        index = '"${INDEX[$SLURM_ARRAY_TASK_ID]}"'
    lines += [
        'set -u',
        f'RUN_DIRS=({dirs})',
        f'RUN_NAMES=({names})',
        'run_dir=${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}',
        'mkdir -p "$run_dir"',
        f'exec >>"$run_dir/{SLURM_OUTPUT}" 2>&1',
        'echo "=== $(date \'+%F %T\') ${RUN_NAMES[$SLURM_ARRAY_TASK_ID]}: Slurm job '
        '${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname), allocation '
        '$((${SLURM_RESTART_COUNT:-0} + 1))"',
        'stop= child=',
        f'# Near the time limit Slurm signals this shell only ({STOP_SIGNAL}): pass it on as SIGTERM,',
        '# on which the runner saves a checkpoint at the end of the step and stops.',
        f'trap \'stop={STOP_SIGNAL}; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null\' {STOP_SIGNAL}',
        '# scontrol requeue, preemption, scancel: Slurm signals every process of the job, the',
        '# runner too, and requeues or ends the job itself; this shell waits for the checkpoint.',
        "trap 'stop=TERM' TERM",
        f'PYTHONUNBUFFERED=1 {cmd} --index {index} &',
        'child=$!',
        f'[ "$stop" = {STOP_SIGNAL} ] && kill -TERM "$child" 2>/dev/null',
        '# wait returns early when a trapped signal arrives; wait again until the runner is gone.',
        'while :; do wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null || break; done',
        '# Requeued unless the run has ended (finished, failed, diverged): stopped in its steps,',
        '# or before them (loading data), it continues from its checkpoint in the next allocation.',
        f'if [ "$stop" = {STOP_SIGNAL} ] && {shlex.quote(sys.executable)} -c {shlex.quote(NOT_ENDED)} '
        f'"$run_dir/{SUMMARY}"; then',
        '  echo "=== $(date \'+%F %T\') stopped before the time limit; requeued, the next '
        'allocation resumes from the checkpoint"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        'fi',
        'exit "$rc"',
    ]
    return '\n'.join(lines) + '\n'


def write_records(pending, job_id):
    """Each run directory notes the array task it was submitted as (for `status`)."""
    stamp = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    for k, _, run_dir in pending:
        os.makedirs(run_dir, exist_ok=True)
        rundir.write_atomic(RunDir(run_dir).submit_record, json.dumps(
            {'array_job_id': job_id, 'array_task_id': k, 'submitted': stamp}) + '\n')


def search_tasks(checked, pending):
    """A search is one run of the queue but as many tasks as it has trials (runner.search: each
    task trains trials of the shared study until none is left): ([(task, name, run_dir)] of
    the further tasks, numbered after the queue's runs, {task: the search's index}) or
    ([], None) when no search is pending."""
    more, index_of, task = [], {}, len(checked)
    for k, name, run_dir in pending:
        search = checked[k].exp.search
        if not search.space:
            continue
        for _ in range(search.trials - 1):
            more.append((task, name, run_dir))
            index_of[task] = k
            task += 1
    if not more:
        return [], None
    return more, {**{k: k for k, _, _ in pending}, **index_of}


class SbatchError(Exception):
    """sbatch could not be run, or refused the job (one-line message)."""


def validated(args):
    """The checked experiments (cli.Checked) to submit: they validate and their log
    directories can take them. ConfigError names the first problem."""
    from runner import cli, rundir
    from runner.training import distribute
    from runner.config.errors import ConfigError
    from runner.config.expand import parse_overrides
    overrides = parse_overrides(args.overrides)
    if args.logdir:
        overrides.append(('train_parameters.logdir', args.logdir))
    experiments = cli.load_all(args.files, overrides, args.only)
    distribute.quiet_tensorflow()
    from runner.training import checkpoints  # imports TensorFlow: after quiet_tensorflow
    checked = cli.validate(experiments)
    for c in checked:
        problem = rundir.check_writable(c.exp.train_parameters.logdir, checkpoints.checkpoint_bytes(c.params),
                                        RunDir.of(c.exp))
        if problem:
            raise ConfigError(f'{c.exp.label}: {problem}')
    return checked


def submit(args, script, jobs_dir):
    """Write the script into `jobs_dir` and start `sbatch` on it: (the sbatch process, the
    job id, the script's path). SbatchError when sbatch cannot run or refuses the job."""
    os.makedirs(jobs_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
    script_path = os.path.join(jobs_dir, f'array-{stamp}.sh')
    with open(script_path, 'w') as f:
        f.write(script)
    # --parsable: the job id alone on the first line; --wait: sbatch returns when the array ends.
    cmd = ['sbatch', '--parsable'] + (['--wait'] if args.wait else []) + [script_path]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise SbatchError(f'cannot run sbatch: {e.strerror} (is Slurm installed here?)') from None
    first = proc.stdout.readline().strip()
    job_id = re.match(r'\d+', first)
    if not job_id:
        err = (first + '\n' + proc.communicate()[1]).strip()
        line = next((l for l in err.splitlines() if l.strip()), 'sbatch failed')
        raise SbatchError(f"sbatch: {line.removeprefix('sbatch: ').removeprefix('error: ')}")
    return proc, job_id.group(0), script_path


def results_of(checked, run_dirs):
    """The summaries of the runs (a stand-in for a run not started; a search's trials), and
    whether all finished (a search: every trial of its budget finished or pruned)."""
    from runner import rundir
    from runner.search.run import is_search, trial_summaries
    results, done = [], True
    for c, d in zip(checked, run_dirs):
        if is_search(c.exp):
            trials, ended = trial_summaries(c.exp)
            results += trials
            done = done and ended
            continue
        s = rundir.read_summary(d) or {'run_name': c.exp.run_name, 'status': 'not started'}
        results.append(s)
        done = done and rundir.is_finished(s, c.exp.total_steps)
    return results, done


def wait_for(proc, job_id, checked, run_dirs):
    """`--wait`: until sbatch returns (every task has ended), then the results table."""
    from runner import cli
    sys.stdout.flush()
    try:
        proc.communicate()  # sbatch --wait returns when every task has ended
    except KeyboardInterrupt:
        print(f'\nstopped waiting; the job array goes on (scancel {job_id} stops it)', file=sys.stderr)
        return EXIT_FAILED
    results, done = results_of(checked, run_dirs)
    cli.print_results(results)
    return EXIT_OK if done else EXIT_FAILED


def engine_answer(argv):
    """For a command line that asks for help or names no engine, or another than slurm: the
    exit status, after printing the help or why; None for `slurm ...`."""
    if argv and argv[0] in ('-h', '--help'):
        print('usage: python -m runner submit slurm FILE ... [options]\n\n'
              '`python -m runner submit slurm --help` lists the options.')
        return EXIT_OK
    if not argv or argv[0] != 'slurm':
        engine = argv[0] if argv else ''
        print(f"error: submit: unknown engine '{engine}'; the one there is: "
              f"python -m runner submit slurm FILE ...", file=sys.stderr)
        return EXIT_CONFIG
    return None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    answer = engine_answer(argv)
    if answer is not None:
        return answer
    args = build_parser().parse_args(argv[1:])
    from runner import cli, rundir
    from runner.config.errors import ConfigError
    try:
        options = sbatch_options(args)
        checked = validated(args)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG

    run_dirs = [os.path.abspath(RunDir.of(c.exp)) for c in checked]
    pending = [(k, c.exp.run_name, run_dirs[k]) for k, c in enumerate(checked)
               if not rundir.is_finished(rundir.read_summary(run_dirs[k]), c.exp.total_steps)]
    if not pending:
        print(f'all {len(checked)} run(s) are finished; nothing to submit')
        if args.wait:
            cli.print_results(results_of(checked, run_dirs)[0])
        return EXIT_OK
    jobs_dir = os.path.join(os.path.abspath(checked[pending[0][0]].exp.train_parameters.logdir),
                            rundir.SLURM_JOBS_DIR)
    more, index_of = search_tasks(checked, pending)
    script = job_script(args, pending + more, options, jobs_dir, index_of)
    if args.dry_run:
        print(script, end='')
        return EXIT_OK
    if not args.no_smoke and cli.smoke_failed([checked[k] for k, _, _ in pending],
                                              jobs=args.smoke_jobs, nothing='submitted'):
        return EXIT_FAILED

    try:
        proc, job_id, script_path = submit(args, script, jobs_dir)
    except SbatchError as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG
    write_records(pending, job_id)
    print(f'submitted Slurm job array {job_id}: {len(pending) + len(more)} task(s), script {script_path}')
    for k, name, run_dir in pending + more:
        print(f'  {job_id}_{k}  {name}  -> {RunDir(run_dir).slurm_output}')
    if not args.wait:
        proc.communicate()
        print(f'follow them with: python -m runner status {shlex.quote(os.path.dirname(jobs_dir))}')
        return EXIT_OK
    return wait_for(proc, job_id, checked, run_dirs)
