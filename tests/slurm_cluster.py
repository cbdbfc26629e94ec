"""A real single-node Slurm for the tests: munged, slurmctld and slurmd started from a
slurm.conf in a temporary directory, stopped by PID at the end.

Debian's `slurm-wlm` and `munge` packages (installed by .ci/run). Everything the cluster
writes (the munge key and socket, Slurm's state, spool, logs and PID files) is in the
temporary directory, and the ports are free ones picked here, so it neither needs nor touches
a system Slurm, and two test sessions on one machine do not meet. Needs root (slurmd starts
jobs as the submitting user, munged and slurmd run as root here: SlurmUser=root).

The configuration is the smallest that behaves like a real cluster for the runner's jobs:
proctrack/linuxproc and task/none (no cgroups in a container), select/cons_tres with CPUs
and memory consumable (two jobs may share a CPU), JobRequeue=1, and short timers so that tests do not wait for Slurm's defaults:
a requeued job waits `cred_expire` seconds (120 by default) before it may start again.
Slurm documents these in slurm.conf(5).
"""
import os
import shutil
import socket
import subprocess
import time

DAEMONS = ('munged', 'mungekey', 'slurmctld', 'slurmd', 'sbatch', 'scontrol', 'squeue', 'scancel',
           'sinfo')
START_TIMEOUT = 60  # seconds for the node to come up idle
REQUEUE_DELAY = 5   # seconds a requeued job waits before it may start again (cred_expire)


class SlurmUnavailable(Exception):
    """Slurm cannot start here; the message says why."""


def _free_port():
    with socket.socket() as s:
        s.bind(('', 0))
        return s.getsockname()[1]


def _which(name):
    # The daemons live in /usr/sbin, which a user's PATH may lack.
    return shutil.which(name) or shutil.which(name, path='/usr/sbin:/usr/bin:/sbin:/bin')


def node_line(name):
    """This machine as slurmd sees it (`slurmd -C`: CPUs, sockets, cores, memory), named `name`."""
    out = subprocess.run([_which('slurmd'), '-C'], capture_output=True, text=True, timeout=30).stdout
    first = out.splitlines()[0] if out else ''
    if not first.startswith('NodeName='):
        raise SlurmUnavailable(f'`slurmd -C` printed no node description: {out!r}')
    fields = first.split()[1:]
    return ' '.join([f'NodeName={name}'] + fields + ['State=UNKNOWN'])


class SlurmCluster:
    """`with SlurmCluster(root) as cluster:` a running single-node Slurm; `cluster.env()` is
    the environment for its clients (SLURM_CONF set)."""

    def __init__(self, root):
        self.root = str(root)
        self.conf = os.path.join(self.root, 'slurm.conf')
        self.munge_socket = os.path.join(self.root, 'munge', 'munge.socket')
        self.node = socket.gethostname().split('.')[0]
        self.procs = {}

    # -- configuration ------------------------------------------------------------------
    def write_conf(self):
        state, spool, log = (os.path.join(self.root, d) for d in ('state', 'spool', 'log'))
        for d in (state, spool, log):
            os.makedirs(d, exist_ok=True)
        plugstack = os.path.join(self.root, 'plugstack.conf')
        open(plugstack, 'w').close()
        lines = [
            'ClusterName=convnet-test',
            f'SlurmctldHost={self.node}',
            f'SlurmctldPort={_free_port()}',
            f'SlurmdPort={_free_port()}',
            'SlurmUser=root',
            'SlurmdUser=root',
            'AuthType=auth/munge',
            'CredType=cred/munge',
            f'AuthInfo=socket={self.munge_socket},cred_expire={REQUEUE_DELAY}',
            f'StateSaveLocation={state}',
            f'SlurmdSpoolDir={spool}',
            f'SlurmctldPidFile={os.path.join(self.root, "slurmctld.pid")}',
            f'SlurmdPidFile={os.path.join(self.root, "slurmd.pid")}',
            f'SlurmctldLogFile={os.path.join(log, "slurmctld.log")}',
            f'SlurmdLogFile={os.path.join(log, "slurmd.log")}',
            'SlurmctldDebug=info',
            'SlurmdDebug=info',
            'ProctrackType=proctrack/linuxproc',
            'TaskPlugin=task/none',
            'SelectType=select/cons_tres',
            'SelectTypeParameters=CR_CPU_Memory',
            'DefMemPerCPU=1024',
            'JobRequeue=1',
            'MpiDefault=none',
            'SwitchType=switch/none',
            'JobAcctGatherType=jobacct_gather/none',
            'AccountingStorageType=accounting_storage/none',
            'JobCompType=jobcomp/none',
            'SchedulerType=sched/backfill',
            'SchedulerParameters=sched_interval=2,bf_interval=2',
            'ReturnToService=2',
            # sbatch --wait polls every 2 s, growing fourfold while under MinJobAge/2 (up to
            # 32 s): 4 keeps it at 2 s.
            'MinJobAge=4',
            'KillWait=30',
            'InactiveLimit=0',
            'SlurmdTimeout=60',
            'MessageTimeout=20',
            f'PlugStackConfig={plugstack}',  # none: the system's SPANK plugins stay out
            node_line(self.node),
            # Up to two jobs share a CPU (OverSubscribe=FORCE:2), so the time-limit test's job,
            # which mostly waits for Slurm's signal and requeue delay, runs beside the others.
            f'PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP '
            f'OverSubscribe=FORCE:2',
        ]
        with open(self.conf, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def env(self, **extra):
        env = dict(os.environ)
        env['SLURM_CONF'] = self.conf
        env['PATH'] = env.get('PATH', '') + ':/usr/sbin:/sbin'
        env.update(extra)
        return env

    # -- daemons --------------------------------------------------------------------------
    def _start(self, name, args):
        log = open(os.path.join(self.root, 'log', f'{name}.out'), 'ab')
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env(),
                                            start_new_session=True)
        log.close()

    def _check_alive(self, name):
        proc = self.procs[name]
        if proc.poll() is not None:
            raise SlurmUnavailable(f'{name} exited with status {proc.returncode}:\n{self.logs(name)}')

    def logs(self, *names):
        out = []
        for name in names or ('munged', 'slurmctld', 'slurmd'):
            for path in (os.path.join(self.root, 'log', f'{name}.out'),
                         os.path.join(self.root, 'log', f'{name}.log')):
                if os.path.exists(path):
                    with open(path, errors='replace') as f:
                        out.append(f'--- {path} (last lines)\n' + ''.join(f.readlines()[-25:]))
        return '\n'.join(out)

    def start(self):
        missing = [d for d in DAEMONS if not _which(d)]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not found: install Debian's slurm-wlm "
                                   f'and munge (apt-get install slurm-wlm munge)')
        if os.geteuid() != 0:
            raise SlurmUnavailable('a test Slurm needs root (slurmd starts jobs as their user)')
        # The socket's directory must be open to every user (munged checks); the key is 0600.
        os.makedirs(os.path.join(self.root, 'munge'), mode=0o755, exist_ok=True)
        os.makedirs(os.path.join(self.root, 'log'), exist_ok=True)
        key = os.path.join(self.root, 'munge', 'munge.key')
        subprocess.run([_which('mungekey'), '--create', '--keyfile', key], check=True,
                       capture_output=True, timeout=30)
        self.write_conf()
        self._start('munged', [_which('munged'), '--foreground', '--force',
                               f'--socket={self.munge_socket}', f'--key-file={key}',
                               f'--pid-file={os.path.join(self.root, "munged.pid")}',
                               f'--seed-file={os.path.join(self.root, "munge", "seed")}',
                               f'--log-file={os.path.join(self.root, "log", "munged.log")}'])
        self._wait(lambda: os.path.exists(self.munge_socket), 'munged', 'its socket')
        # -i: ignore any state (there is none: a fresh directory); -D: foreground, our child.
        self._start('slurmctld', [_which('slurmctld'), '-D', '-i', '-f', self.conf])
        self._wait(lambda: self._run('scontrol', 'ping').returncode == 0 and
                   'UP' in self._run('scontrol', 'ping').stdout, 'slurmctld', 'answering scontrol ping')
        self._start('slurmd', [_which('slurmd'), '-D', '-f', self.conf])
        self._wait(lambda: self.node_state().startswith('idle'), 'slurmd', 'the node idle')
        return self

    def _run(self, cmd, *args, timeout=30):
        return subprocess.run([_which(cmd), *args], capture_output=True, text=True,
                              env=self.env(), timeout=timeout)

    def node_state(self):
        r = self._run('sinfo', '-h', '-N', '-o', '%T')
        return r.stdout.strip() if r.returncode == 0 else ''

    def _wait(self, ready, name, what):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                if ready():
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
        raise SlurmUnavailable(f'{name} started but not {what} within {START_TIMEOUT}s:\n'
                               f'{self.logs()}')

    def cancel_all(self, timeout=60):
        """Cancel every job and wait until none is left: a job's processes (slurmstepd and
        what it started) would outlive slurmd."""
        jobs = self.squeue('-o', '%A')
        if jobs:
            self._run('scancel', *jobs)
        deadline = time.monotonic() + timeout
        # squeue lists pending, running and completing jobs (not the finished ones).
        while self.squeue('-o', '%A') and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self):
        if 'slurmctld' in self.procs and self.procs['slurmctld'].poll() is None:
            try:
                self.cancel_all()
                # Stops slurmd too; the PIDs below make sure.
                self._run('scontrol', 'shutdown', timeout=15)
            except subprocess.TimeoutExpired:
                pass
        for name in ('slurmd', 'slurmctld', 'munged'):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # -- for tests ------------------------------------------------------------------------
    def squeue(self, *args):
        """squeue's lines for the given arguments (e.g. '-j', '12', '-o', '%i %T')."""
        r = self._run('squeue', '-h', *args)
        return r.stdout.splitlines()

    def scontrol(self, *args):
        r = self._run('scontrol', *args)
        if r.returncode != 0:
            raise RuntimeError(f'scontrol {" ".join(args)}: {r.stderr.strip()}')
        return r.stdout


if __name__ == '__main__':
    # By hand: `python tests/slurm_cluster.py DIR` keeps a test Slurm up until Ctrl-C or
    # SIGTERM; use it with `export SLURM_CONF=DIR/slurm.conf`.
    import signal
    import sys
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with SlurmCluster(os.path.abspath(sys.argv[1])) as cluster:
        print(f'export SLURM_CONF={cluster.conf}', flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
