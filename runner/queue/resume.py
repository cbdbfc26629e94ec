"""May a run directory be resumed with the experiment as it is now? A run started with other
settings cannot be, unless only keys the schema marks resumable changed (logging,
evaluation, how long to train, where the data is: runner.config.reference.resumable).
"""
import os

from runner import rundir
from runner.rundir import RunDir


def changed_keys(old, new, prefix=''):
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f'{prefix}{key}.')
        elif a != b:
            out.append(prefix + key)
    return out


_ABSENT = object()


def _get(d, dotted):
    """The value at a dotted key of nested dicts, or _ABSENT."""
    for part in dotted.split('.'):
        d = d.get(part, _ABSENT) if isinstance(d, dict) else _ABSENT
    return d


def check_resumable(exp):
    """A run directory started with different settings cannot be resumed from. True when
    it changed but has no checkpoint yet (a run that failed or diverged before its first
    save): nothing would be lost by starting it over, so it is."""
    import yaml
    from runner.training import checkpoints
    from runner.config.errors import ConfigError
    from runner.config.reference import recorded_value, resumable
    from runner.config.schema import Experiment
    run_dir = RunDir.of(exp)
    path = run_dir.config
    if not os.path.exists(path) or rundir.damaged(run_dir):
        return False  # a damaged run is refused on its own when its turn comes (train_all)
    with open(path) as f:
        old = yaml.safe_load(f) or {}
    new = exp.to_dict()
    new['train_parameters']['run_name'] = exp.run_name
    if old.get('model') == exp.model and old.get('module') == exp.module:
        # Both sides with the model function's defaults as they are now: a default that
        # changed since the run started shows as a change of the value its file records
        # (a file from before the runner recorded defaults gets today's, as it always did).
        from runner.registry import resolve_model_fn, resolved_model_parameters
        fn = resolve_model_fn(exp)
        new['model_parameters'] = resolved_model_parameters(fn, exp.model_parameters)
        old['model_parameters'] = resolved_model_parameters(fn, old.get('model_parameters') or {})
    for key in ('mean', 'std'):  # filled in from the data when the file left them null
        if new['dataset'][key] is None:
            new['dataset'][key] = old.get('dataset', {}).get(key)
    # A key that an earlier version of the runner did not write is unchanged if the run
    # now has that key's default, which is what the earlier version did; so is a null it
    # wrote for a default the schema now spells out (config.recorded_value). Which keys may
    # change on a resume is the schema's to say (config.resumable).
    defaults = Experiment(model=exp.model).to_dict()
    diff = [k for k in changed_keys(old, new) if not resumable(k)
            and not (_get(old, k) is _ABSENT and _get(new, k) == _get(defaults, k))
            and recorded_value(k, _get(old, k)) != _get(new, k)]
    if not diff:
        return False
    if not checkpoints.present(run_dir.checkpoints):
        return True
    raise ConfigError(f"{', '.join(diff)}: changed since run '{exp.run_name}' started; use "
                      f"--restart {exp.run_name} to start it over, or give it a new run_name")
