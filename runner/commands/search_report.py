"""The searches of a report: for every `<name>/trial<k>` group of runs (runner.search), the best
trial with its values and its validation and test error, a table of the trials, and Optuna's
optimisation-history and parameter-importance plots (optuna.visualization.matplotlib;
importances by PED-ANOVA, Watanabe et al. 2023, which needs no scikit-learn).

The study is rebuilt in memory from the trials' run directories (summary.json, metrics.jsonl),
so a report reads a search stored in a journal file or in a database alike, and reads nothing
but the log directory.
"""
import math
import re
import warnings

TRIAL = re.compile(r'^(?P<group>.+)/trial(?P<number>\d+)$')


def group_trials(runs):
    """{search name: [run record, ...] by trial number} of the report's runs that are trials."""
    groups = {}
    for r in runs:
        m = TRIAL.match(r['name'])
        if m and isinstance(r['summary'].get('trial_values'), dict):
            groups.setdefault(m['group'], []).append((int(m['number']), r))
    return {g: [r for _, r in sorted(members, key=lambda x: x[0])] for g, members in groups.items()}


def _val_error(r):
    best = r['summary'].get('best_val_top1_accuracy')
    return None if best is None else 1.0 - float(best)


def _number(r):
    return int(TRIAL.match(r['name'])['number'])


def _distribution(values):
    from optuna import distributions
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return distributions.IntDistribution(min(values), max(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        low, high = float(min(values)), float(max(values))
        return distributions.FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    return distributions.CategoricalDistribution(sorted(set(values), key=str))


def rebuilt_study(trials):
    """An in-memory Optuna study of the finished and pruned trials (their values, objective
    and the validation error of each evaluation), for Optuna's plots."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [r for r in trials if r['status'] in ('finished', 'pruned') and _val_error(r) is not None
            or r['status'] == 'pruned']
    keys = sorted({k for r in done for k in r['summary']['trial_values']})
    dists = {k: _distribution([r['summary']['trial_values'][k] for r in done if k in r['summary']['trial_values']])
             for k in keys}
    study = optuna.create_study(direction='minimize')
    for r in done:
        curve = {m['step']: m['top1_error'] for m in r['metrics'] if m.get('kind') == 'val'}
        finished = r['status'] == 'finished'
        value = _val_error(r) if finished else (min(curve.values()) if curve else None)
        state = optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.PRUNED
        params = r['summary']['trial_values']
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if finished else None, params=params,
            distributions={k: dists[k] for k in params}, intermediate_values=curve,
            user_attrs={'trial': _number(r)}))
    return study


def plots(study, stem):
    """The optimisation-history and parameter-importance PNGs (paths) of a study; a plot that
    the study cannot make yet (too few trials) is left out."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm
    out = []
    makers = (('history', ovm.plot_optimization_history, {}),
              ('importance', ovm.plot_param_importances,
               {'evaluator': optuna.importance.PedAnovaImportanceEvaluator()}))
    for name, make, kw in makers:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # Optuna's ExperimentalWarning for its matplotlib plots
            try:
                ax = make(study, **kw)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances of fewer than two complete trials
        path = f'{stem}-{name}.png'
        ax.figure.set_size_inches(8, 5)
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=100)
        plt.close(ax.figure)
        out.append(path)
    return out


def _fmt(value):
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)


def _pct(x):
    return '—' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{100 * x:.2f}%'


def section(name, trials, pic_dir, rel):
    """(Markdown lines of the search `name`, its picture paths)."""
    keys = sorted({k for r in trials for k in r['summary']['trial_values']})
    finished = [r for r in trials if r['status'] == 'finished' and _val_error(r) is not None]
    lines = [f'## Search `{name}`', '']
    if finished:
        best = min(finished, key=_val_error)
        values = ', '.join(f'`{k}` = {_fmt(v)}' for k, v in best['summary']['trial_values'].items())
        test = best['summary'].get('best_test_top1_accuracy')
        lines += [f"Best trial: **{_number(best)}** ({values}): validation top-1 error "
                  f"{_pct(_val_error(best))}, test top-1 error {_pct(None if test is None else 1 - test)} "
                  f"(its weights chosen on validation; the test split never chose anything).", '']
    else:
        lines += ['No trial has finished yet.', '']
    rows = [['trial', 'status', 'steps'] + [f'`{k}`' for k in keys] + ['val top-1 err', 'test top-1 err']]
    for r in trials:
        s, test = r['summary'], r['summary'].get('best_test_top1_accuracy')
        rows.append([str(_number(r)), r['status'], f"{s.get('steps', '—')}/{r['total_steps'] or '—'}"]
                    + [_fmt(s['trial_values'].get(k, '—')) for k in keys]
                    + [_pct(_val_error(r)), _pct(None if test is None else 1 - test)])
    lines += ['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows[1:]]
    stem = f"{pic_dir}/search-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"
    pictures = plots(rebuilt_study(trials), stem)
    for path in pictures:
        what = 'Optimisation history' if path.endswith('history.png') else 'Parameter importance'
        lines += ['', f'![{what} of {name}]({rel}/{path.rsplit("/", 1)[-1]})']
    return lines + [''], pictures
