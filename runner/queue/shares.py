"""A share of the queue: `--index K` (one task of a Slurm job array or a Kubernetes Indexed
Job) and `--shard I/N` (one of N processes). The index of a run is its position among the
selected runs (after `--only`, and after `repeats` and `grid` expand), in file order: the same
files, `--only` and `--set` give every process the same numbering, which `--list` prints.

Sharing out is all this module does; the per-run lock (runner.queue.runlock) keeps processes that
do overlap (two plain processes on one queue, a requeued task meeting a straggler) from
training one run twice. Job arrays: https://slurm.schedmd.com/job_array.html; Indexed Jobs:
https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode
"""
import re

from runner.config.errors import ConfigError


def parse_shard(text):
    """'I/N' -> (I, N) with 0 <= I < N; ConfigError otherwise."""
    m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text or '')
    if not m or int(m.group(2)) == 0 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard: '{text}' is not I/N with 0 <= I < N (e.g. --shard 0/4 "
                          f"trains runs 0, 4, 8, ...)")
    return int(m.group(1)), int(m.group(2))


def select_indices(count, index=None, shard=None):
    """The indices of the runs this process trains, of `count` selected runs."""
    if index is not None:
        if not 0 <= index < count:
            raise ConfigError(f'--index {index}: out of range; there are {count} runs '
                              f'(indices 0-{count - 1}; --list shows them)' if count else
                              f'--index {index}: out of range; no run is selected')
        return [index]
    if shard is not None:
        i, n = parse_shard(shard)
        return list(range(i, count, n))
    return list(range(count))
