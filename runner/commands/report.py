"""`python -m runner report LOGDIR`: every run under a log directory in one Markdown file.

A table (run, model, parameters, steps, final and best test error with the split the best
weights were chosen on, the paper's error, images per second, wall time, status), one
learning-curve picture per run (train and test/validation error against the step, with
the learning-rate changes marked) and one picture comparing the runs' test error; when
any run has one, the regularisers of each run (runner.config.regularisers).
Runs are named by their path relative to LOGDIR. Repeats (`<name>/seed<k>`, the seeds of one
directory) get a mean ± standard deviation row over their finished runs after them. A search's
trials (`<name>/trial<k>`) get a section of their own (runner.commands.search_report).

Default output: LOGDIR/report.md and pictures in LOGDIR/report/; with --out FILE.md the
pictures go to FILE/ beside it. Only reads the runs: safe while they train.
"""
import argparse
import datetime
import math
import os
import re
import statistics
import sys

import yaml

from runner import common, rundir
from runner.commands import search_report
from runner.config.regularisers import describe as describe_regularisers
from runner.queue import runlock
from runner.common import EXIT_CONFIG, EXIT_OK
from runner.rundir import SUMMARY, RunDir

SKIP_DIRS = rundir.NOT_RUNS | {'__pycache__'}
CURVE_INCHES, COMPARE_INCHES, DPI = (9.0, 5.5), (11.0, 6.0), 110
REPEAT = re.compile(r'^(?P<group>.+)/seed(?P<seed>\d+)$')


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m runner report',
        description='A Markdown table of every run under LOGDIR (any directory with a summary.json), '
                    'a learning-curve PNG per run and one PNG comparing the runs. Runs named '
                    '<name>/seed<k> are summarised with a mean ± std row of the finished ones.')
    p.add_argument('logdir', metavar='LOGDIR', help='the directory that holds the runs (searched recursively)')
    p.add_argument('--out', metavar='FILE',
                   help='the Markdown file (default LOGDIR/report.md); pictures go to a directory of '
                        'the same name without .md beside it')
    return p


# ---------------------------------------------------------------------------
# Reading runs

def _read_yaml(path):
    try:
        with open(path) as f:
            d = yaml.safe_load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def natural_key(text):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', text)]


def find_runs(logdir):
    """[(run directory, name)] of every directory with a summary.json under logdir, and how
    many old runs moved aside by --restart were left out.

    A run is named by its path relative to logdir (`<name>` or `<name>/seed<k>` in the
    default layout), not by summary.run_name: two copies of a log tree under one logdir
    (logs/ and archive/) would otherwise give runs of the same name. SKIP_DIRS are skipped
    only inside a run directory, so a run named `best` directly under logdir is found."""
    found, superseded = [], 0
    for root, dirs, files in os.walk(logdir):
        in_run = SUMMARY in files
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and not (in_run and d in SKIP_DIRS))
        if rundir.moved_aside(root):
            superseded += SUMMARY in files
            dirs[:] = []
            continue
        if in_run:
            found.append(root)
    runs = []
    for d in found:
        summary = rundir.read_summary(d) or {}
        rel = os.path.relpath(d, logdir).replace(os.sep, '/')
        name = rel if rel != '.' else (summary.get('run_name') or os.path.basename(os.path.abspath(d)))
        if re.fullmatch(r'seed\d+', name):
            # logdir is a repeat group's own directory: its name keeps the seeds a group.
            name = f'{os.path.basename(os.path.abspath(logdir))}/{name}'
        runs.append(load_run_record(d, name, summary))
    runs.sort(key=lambda r: natural_key(r['name']))
    return runs, superseded


def load_run_record(run_dir, name, summary=None):
    summary = summary if summary is not None else (rundir.read_summary(run_dir) or {})
    config = _read_yaml(RunDir(run_dir).config)
    metrics = rundir.read_metrics(run_dir)
    paper = dict(config.get('paper') or {})
    paper.update({k: v for k, v in (summary.get('paper') or {}).items() if v is not None})

    def err(key):
        v = summary.get(key)
        return None if v is None else 1.0 - float(v)
    tp = config.get('train_parameters') or {}
    return {
        'dir': run_dir, 'name': name, 'summary': summary, 'config': config, 'metrics': metrics,
        'model': summary.get('model') or config.get('model') or '?',
        'params': summary.get('params'),
        'steps': summary.get('steps'),
        'total_steps': summary.get('total_steps') or tp.get('steps') or (tp.get('lr_boundaries') or [None])[-1],
        'final_error': err('test_top1_accuracy'),
        'best_error': err('best_test_top1_accuracy'),
        'selection_split': summary.get('selection_split') or summary.get('eval_split') or 'test',
        'paper_error': paper.get('top1_error'),
        'paper_source': paper.get('source'),
        'images_per_second': summary.get('train_images_per_second'),
        'wall_seconds': summary.get('wall_seconds'),
        # A run whose lock a live process holds is training now, whatever its summary says.
        'status': 'running' if runlock.holder(run_dir) is not None else summary.get('status') or '?',
        'error': summary.get('error'),
    }


# ---------------------------------------------------------------------------
# The table

def fmt_pct(x, digits=2):
    return '—' if x is None else f'{100 * x:.{digits}f}%'


def fmt_params(p):
    if p is None:
        return '—'
    if p >= 1e6:
        return f'{p / 1e6:.2f}M'
    if p >= 1e3:
        return f'{p / 1e3:.1f}K'
    return str(p)


def fmt_time(s):
    if s is None:
        return '—'
    s = float(s)
    if s < 60:
        return f'{s:.0f}s'
    if s < 3600:
        return f'{int(s // 60)}m {int(s % 60):02d}s'
    return f'{int(s // 3600)}h {int(s % 3600 // 60):02d}m'


def fmt_rate(r):
    return '—' if r is None else common.rate_text(r)


def _split_label(split):
    return 'val' if split == 'validation' else split


def _mean_std(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return '—'
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f'{fmt(mean)} (n=1)'
    return f'{fmt(mean)} ± {fmt(statistics.stdev(values))}'


def _pct_pm(values):
    values = [v for v in values if v is not None]
    if not values:
        return '—'
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f'{mean:.2f}% (n=1)'
    return f'{mean:.2f} ± {100 * statistics.stdev(values):.2f}%'


COLUMNS = ['run', 'model', 'params', 'steps', 'test err (final)', 'best test err (chosen on)',
           'paper', 'img/s', 'wall time', 'status']


def run_row(r):
    steps = '—' if r['steps'] is None else (f"{r['steps']:,} / {r['total_steps']:,}"
                                             if r['total_steps'] else f"{r['steps']:,}")
    best = '—' if r['best_error'] is None else f"{fmt_pct(r['best_error'])} ({_split_label(r['selection_split'])})"
    return [r['name'], r['model'], fmt_params(r['params']), steps, fmt_pct(r['final_error']), best,
            fmt_pct(None if r['paper_error'] is None else r['paper_error'] / 100),
            fmt_rate(r['images_per_second']), fmt_time(r['wall_seconds']), r['status']]


def group_row(name, members):
    """The repeats' mean ± std, over the finished members only: a running seed's error is
    not yet its result, and a diverged or failed one has none; the status column says what
    the others are."""
    def same(key, fmt=str):
        values = {m[key] for m in members}
        return fmt(values.pop()) if len(values) == 1 else 'mixed'
    done = [m for m in members if m['status'] == 'finished']
    splits = {_split_label(m['selection_split']) for m in done}
    best = _pct_pm([m['best_error'] for m in done])
    if best != '—':
        best += f" ({'/'.join(sorted(splits))})"
    statuses = {}
    for m in members:
        statuses[m['status']] = statuses.get(m['status'], 0) + 1
    steps = [m['steps'] for m in members if m['steps'] is not None]
    label = (f'mean ± std of {len(members)}' if len(done) == len(members)
             else f'mean ± std, n={len(done)} finished of {len(members)}')
    return [f'**{name}** ({label})', same('model'), same('params', fmt_params),
            '—' if not steps else (f'{min(steps):,}' if min(steps) == max(steps) else f'{min(steps):,}–{max(steps):,}'),
            _pct_pm([m['final_error'] for m in done]), best,
            fmt_pct(None if members[0]['paper_error'] is None else members[0]['paper_error'] / 100),
            _mean_std([m['images_per_second'] for m in done], common.rate_text),
            _mean_std([m['wall_seconds'] for m in done], fmt_time),
            ', '.join(f'{n} {s}' for s, n in statuses.items())]


def table_rows(runs):
    """Rows in run order; after the last run of a `<dir>/seed<k>` group of two or more (the
    seeds of one parent directory, named relative to LOGDIR), its mean ± std row."""
    groups = {}
    for r in runs:
        m = REPEAT.match(r['name'])
        if m:
            groups.setdefault(m['group'], []).append(r)
    rows = []
    for i, r in enumerate(runs):
        rows.append(run_row(r))
        m = REPEAT.match(r['name'])
        if m and groups[m['group']][-1] is r and len(groups[m['group']]) > 1:
            rows.append(group_row(m['group'], groups[m['group']]))
    return rows


def markdown_table(rows):
    esc = lambda s: str(s).replace('|', '\\|')
    return common.markdown_table(COLUMNS, [[esc(c) for c in row] for row in rows])


def text_table(rows):
    rows = [[re.sub(r'\*\*', '', c) for c in row] for row in rows]
    return common.text_table([COLUMNS] + rows)


# ---------------------------------------------------------------------------
# Pictures

def picture_name(run_name, taken=()):
    """curve-<run path, '/' as '__'>.png, with -2, -3 ... if another run's name maps to the
    same file (names are paths relative to LOGDIR, so they differ, but their file-safe
    forms need not)."""
    stem = 'curve-' + re.sub(r'[^\w.+=-]+', '__', run_name)
    name, k = stem + '.png', 1
    while name in taken:
        k += 1
        name = f'{stem}-{k}.png'
    return name


def lr_changes(r):
    """[(step, new learning rate, label)] from the run's schedule, else from its logs."""
    tp = r['config'].get('train_parameters') or {}
    values, bounds = tp.get('lr_values'), tp.get('lr_boundaries')
    out = []
    if values and bounds and len(values) == len(bounds):
        if tp.get('warmup_steps'):
            out.append((tp['warmup_steps'], values[0], f"warm-up ends, lr {values[0]:g}"))
        schedule = tp.get('lr_schedule', 'piecewise')
        if schedule == 'piecewise_linear':  # the knots between the first and the last
            return out + [(b, v, f'lr {v:g}') for b, v in zip(bounds[1:-1], values[1:-1])]
        if schedule != 'piecewise':
            return out  # linear or cosine decay: no steps to mark
        for b, new, old in zip(bounds[:-1], values[1:], values[:-1]):
            if new != old:
                out.append((b, new, f'lr {new:g}'))
        return out
    last = None
    for m in r['metrics']:
        if m.get('kind') == 'train' and m.get('lr') is not None:
            if last is not None and not math.isclose(m['lr'], last, rel_tol=1e-6):
                out.append((m['step'], m['lr'], f"lr {m['lr']:g}"))
            last = m['lr']
    return out


def lr_description(r):
    """'starting lr 0.1', 'cosine decay from lr 0.1', or '' for the title of a curve."""
    tp = r['config'].get('train_parameters') or {}
    schedule = tp.get('lr_schedule', 'piecewise')
    if tp.get('lr_values'):
        if schedule == 'piecewise_linear':
            return 'lr ' + ' / '.join(f'{v:g}' for v in tp['lr_values']) + ' (piecewise linear)'
        if schedule != 'piecewise':
            return f"{schedule} decay from lr {tp['lr_values'][0]:g}"
        return f"starting lr {tp['lr_values'][0]:g}"
    lrs = [m['lr'] for m in r['metrics'] if m.get('kind') == 'train' and m.get('lr') is not None]
    return f'starting lr {lrs[0]:g}' if lrs else ''


def _series(metrics, kind, key):
    pts = [(m['step'], 100 * m[key]) for m in metrics
           if m.get('kind') == kind and m.get(key) is not None and m.get('step') is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _ylim_top(values, steps, last_step, floor):
    """Leave out the first 5% of the steps when scaling, so the late, small errors that
    matter are not squashed by the start of training."""
    late = [v for s, v in zip(steps, values) if s >= 0.05 * last_step] or values
    top = max(late + [floor]) * 1.12 if late else 100
    return min(100.0, max(top, 1.0))


def _step_axis(ax, last_step):
    """Whole steps, and 32k rather than 32000 on long runs."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=2))
    thousands = last_step >= 10000
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f'{v / 1000:g}k' if thousands and v else f'{v:,.0f}'))


def plot_learning_curve(r, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=CURVE_INCHES, dpi=DPI, layout='constrained')
    ax = fig.add_subplot()
    tx, ty = _series(r['metrics'], 'train', 'error')
    ax.plot(tx, ty, color='tab:blue', linewidth=1.4, label='train error (mean over each log interval)')
    all_steps, all_values = list(tx), list(ty)
    for kind, label, color in (('test', 'test error', 'tab:red'), ('val', 'validation error', 'tab:orange')):
        ex, ey = _series(r['metrics'], kind, 'top1_error')
        if ex:
            ax.plot(ex, ey, color=color, linewidth=1.8, marker='o', markersize=3.5, label=label)
            all_steps += ex
            all_values += ey
    last_step = max(all_steps + [r['steps'] or 0, 1])
    if r['selection_split'] == 'validation' and r['final_error'] is not None:
        ax.plot([r['steps'] or last_step], [100 * r['final_error']], marker='*', markersize=13,
                color='tab:red', linestyle='none', label=f"final test error {fmt_pct(r['final_error'])}")
        all_values.append(100 * r['final_error'])
    paper = r['paper_error']
    if paper is not None:
        src = f" ({r['paper_source']})" if r['paper_source'] else ''
        ax.axhline(paper, color='black', linestyle=':', linewidth=1.2, label=f'paper: {paper:g}%{src}')
    changes = [c for c in lr_changes(r) if c[0] <= last_step]
    for i, (step, lr, text) in enumerate(changes):
        ax.axvline(step, color='grey', linestyle='--', linewidth=1.0,
                   label='learning-rate change' if i == 0 else None)
    if changes:  # the new rates, above the plot where no curve can hide them
        top = ax.secondary_xaxis('top')
        top.set_xticks([c[0] for c in changes], [c[2] for c in changes], fontsize=8, color='dimgrey')
        top.tick_params(length=3, color='grey')
    ax.set_xlim(0, last_step * 1.02)
    _step_axis(ax, last_step)
    ax.set_ylim(0, _ylim_top(all_values, all_steps, last_step, paper or 0))
    ax.set_xlabel('training step')
    ax.set_ylabel('top-1 error (%)')
    status = '' if r['status'] == 'finished' else f" [{r['status']}]"
    lr0 = lr_description(r)
    lr0 = f', {lr0}' if lr0 else ''
    ax.set_title(f"{r['name']} ({r['model']}): learning curves{lr0}{status}")
    ax.grid(True, alpha=0.35)
    if not all_steps:
        ax.text(0.5, 0.5, 'no metrics logged yet', transform=ax.transAxes, ha='center', va='center')
    else:
        ax.legend(loc='upper right', fontsize=9, framealpha=0.9)
    fig.savefig(path)
    return path


def plot_comparison(runs, path):
    from matplotlib.figure import Figure
    import matplotlib
    fig = Figure(figsize=COMPARE_INCHES, dpi=DPI, layout='constrained')
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps['tab10' if len(runs) <= 10 else 'tab20']
    all_steps, all_values, any_val, plotted = [], [], False, 0
    for i, r in enumerate(runs):
        color = cmap(i % cmap.N)
        for kind, style in (('test', '-'), ('val', '--')):
            x, y = _series(r['metrics'], kind, 'top1_error')
            if not x:
                continue
            any_val |= kind == 'val'
            label = r['name'] + (' (validation)' if kind == 'val' else '')
            ax.plot(x, y, style, color=color, linewidth=1.6, marker='o', markersize=2.5, label=label)
            all_steps += x
            all_values += y
            plotted += 1
        if r['selection_split'] == 'validation' and r['final_error'] is not None and r['steps']:
            ax.plot([r['steps']], [100 * r['final_error']], marker='*', markersize=11, color=color,
                    linestyle='none')
            all_values.append(100 * r['final_error'])
    papers = sorted({(r['paper_error'], r['model']) for r in runs if r['paper_error'] is not None})
    for j, (err, model) in enumerate(papers[:4]):
        ax.axhline(err, color='black', linestyle=[':', '-.', (0, (1, 3)), (0, (5, 5))][j],
                   linewidth=1.1, alpha=0.8, label=f'paper, {model}: {err:g}%')
        plotted += 1
    last = max(all_steps + [1])
    ax.set_xlim(0, last * 1.02)
    _step_axis(ax, last)
    ax.set_ylim(0, _ylim_top(all_values, all_steps, last, max([p[0] for p in papers] or [0])))
    ax.set_xlabel('training step')
    ax.set_ylabel('top-1 error (%)')
    title = 'Test error of every run'
    if any_val:
        title += ' (dashed: validation error; stars: final test error)'
    ax.set_title(title)
    ax.grid(True, alpha=0.35)
    if plotted:
        ncol = 1 if plotted <= 16 else 2
        fig.legend(loc='outside right upper', fontsize=8 if plotted > 8 else 9, ncol=ncol)
    else:
        ax.text(0.5, 0.5, 'no evaluations logged yet', transform=ax.transAxes, ha='center', va='center')
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------------

def write_report(logdir, out=None):
    """Write the report; returns (path of the Markdown file, [picture paths], runs)."""
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f'{logdir}: no such directory')
    out = out or os.path.join(logdir, 'report.md')
    stem = out[:-3] if out.endswith('.md') else out + '-pictures'
    pic_dir = stem
    runs, superseded = find_runs(logdir)
    if not runs:
        raise FileNotFoundError(f'{logdir}: no runs (no directory with a {SUMMARY}) under it')
    os.makedirs(pic_dir, exist_ok=True)
    rel = os.path.relpath(pic_dir, os.path.dirname(os.path.abspath(out)) or '.').replace(os.sep, '/')
    pictures = [plot_comparison(runs, os.path.join(pic_dir, 'all-runs.png'))]
    rows = table_rows(runs)
    now = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    lines = [f'# Runs under `{logdir}`', '',
             f'{len(runs)} run(s); written by `python -m runner report` on {now}.', '',
             markdown_table(rows), '',
             'Errors are top-1 errors on each run\'s test split. *Final*: the weights at the end of '
             'training (the latest evaluation for a run still going). *Best*: the weights with the '
             'lowest error on the split in brackets; chosen on `test` flatters the model, chosen on '
             '`val` (a held-out part of the training data) does not. *Paper*: `paper.top1_error` of '
             'the experiment. Runs are named by their path under this directory. Repeats named '
             '`<name>/seed<k>` are summarised as mean ± sample standard deviation of their finished '
             'runs (n=K finished of N when some are not).']
    if superseded:
        lines += ['', f'{superseded} old run(s) moved aside by `--restart` (`*.restarted-*`) are left out.']
    regularised = [(r['name'], describe_regularisers(r['config'])) for r in runs]
    if any(names for _, names in regularised):
        lines += ['', '## Regularisers', '']
        lines += [f"- **{name}**: {', '.join(names) or 'none'}" for name, names in regularised]
    problems = [r for r in runs if r['error']]
    if problems:
        lines += ['', '## Problems', '']
        lines += [f"- **{r['name']}** ({r['status']}): {r['error']}" for r in problems]
    for name, trials in search_report.group_trials(runs).items():
        more, pics = search_report.section(name, trials, pic_dir, rel)
        lines += [''] + more
        pictures += pics
    lines += ['', '## Test error of every run', '', f'![Test error of every run]({rel}/all-runs.png)',
              '', '## Learning curves', '']
    taken = {'all-runs.png'}
    for r in runs:
        name = picture_name(r['name'], taken)
        taken.add(name)
        pictures.append(plot_learning_curve(r, os.path.join(pic_dir, name)))
        lines += [f"### {r['name']}", '', f"![Learning curves of {r['name']}]({rel}/{name})", '']
    text = '\n'.join(lines).rstrip() + '\n'
    rundir.write_atomic(out, text)
    return out, pictures, runs, rows


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        out, pictures, runs, rows = write_report(args.logdir, args.out)
    except (FileNotFoundError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG
    print(text_table(rows))
    print(f'\nwrote {out} and {len(pictures)} picture(s) in {os.path.dirname(pictures[0])}')
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
