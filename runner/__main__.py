"""`python -m runner COMMAND`: train (the same as run_experiments.py), keys (the YAML reference),
zoo (the README's model table, from models.zoo), the after-training commands, stats (a dataset's mean and std), submit (a Slurm job array) and
status (the runs under a log directory)."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def update_between_markers(path, marker, text):
    """Replace what lies between `<!-- marker:start -->` and `<!-- marker:end -->` in the file
    at `path` (relative to the repository) by `text`: the generated parts of the docs."""
    path = os.path.join(ROOT, path)
    old = open(path).read()
    new = re.sub(rf'(<!-- {marker}:start -->\n).*(<!-- {marker}:end -->)',
                 lambda m: m.group(1) + text + m.group(2), old, flags=re.S)
    with open(path, 'w') as f:
        f.write(new)


def between_markers(path, marker):
    """What the file at `path` holds between its markers (see update_between_markers)."""
    text = open(os.path.join(ROOT, path)).read()
    return re.search(rf'<!-- {marker}:start -->\n(.*)<!-- {marker}:end -->', text, re.S).group(1)


def zoo_main(argv):
    """The README's model table from the registry (models.zoo); `--update-docs` writes it
    into README.md between its markers."""
    from models.zoo import markdown_table
    if '--update-docs' in argv:
        update_between_markers('README.md', 'zoo', markdown_table())
    else:
        print(markdown_table(), end='')
    return 0


def keys_main(argv):
    """The YAML reference; `--markdown` prints the table docs/configuration.md holds,
    `--update-docs` (or its old name `--update-readme`) writes it there."""
    from runner.config.reference import reference
    rows = reference()
    table = ('| key | type | default | allowed | on resume | meaning |\n'
             '| --- | --- | --- | --- | --- | --- |\n') + ''.join(
        f"| `{r.key}` | {r.type} | `{r.default}` | {r.allowed} | {'may change' if r.resumable else ''} "
        f"| {r.doc} |\n" for r in rows if r.type != 'section')
    if '--markdown' in argv:
        print(table, end='')
        return 0
    if '--update-docs' in argv or '--update-readme' in argv:  # rewrite the reference between its markers
        update_between_markers(os.path.join('docs', 'configuration.md'), 'reference', table)
        return 0
    # The top-level keys first: printed after a section, they would read as its keys.
    top = [r for r in rows if r.type != 'section' and '.' not in r.key]
    for r in top + [r for r in rows if r not in top]:
        if r.type == 'section':
            print(f'\n{r.key}:  {r.doc}')
        else:
            extra = (f', allowed: {r.allowed}' if r.allowed else '') + \
                (', may change on resume' if r.resumable else '')
            print(f'  {r.key}  ({r.type}, default {r.default}{extra})\n      {r.doc}')
    return 0


def _command(module):
    """The main(argv) of an after-training module, imported when the command runs."""
    def run(argv):
        import importlib
        return importlib.import_module(module).main(argv)
    return run


COMMANDS = {
    'train': ('train the experiments of YAML files (run_experiments.py)', None),
    'keys': ('print every experiment-file key with its type, default and meaning', keys_main),
    'zoo': ("print the model zoo's table (README.md's, --update-docs writes it there)", zoo_main),
    'evaluate': ('error, per-class accuracy and confusion matrix of runs (TTA, ensembles)',
                 _command('runner.commands.evaluate')),
    'predict': ('the top classes of image files by a trained run', _command('runner.commands.predict')),
    'export': ('write a TensorFlow SavedModel (preprocessing inside) of a run', _command('runner.commands.export')),
    'report': ('a Markdown table and learning-curve pictures of every run under a log directory',
               _command('runner.commands.report')),
    'stats': ('per-channel mean and std, image count and size range of a training split',
              _command('runner.commands.stats')),
    'submit': ('submit the experiments as one Slurm job array (submit slurm FILE ...)',
               _command('runner.queue.slurm')),
    'status': ('one line per run under a log directory: running, finished, step, error, host, job',
               _command('runner.queue.status')),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in COMMANDS:
        print('usage: python -m runner COMMAND [ARGS]\n\ncommands:')
        for name, (doc, _) in COMMANDS.items():
            print(f'  {name:10s} {doc}')
        return 0 if argv and argv[0] in ('-h', '--help') else 2
    name, rest = argv[0], argv[1:]
    if name == 'train':
        from runner.cli import main as train_main
        return train_main(rest)
    from runner.common import output_to
    return output_to(COMMANDS[name][1], rest)


if __name__ == '__main__':
    from runner.common import end_process
    end_process(main())
