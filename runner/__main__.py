"""`python -m runner COMMAND`: train (the same as run_experiments.py) and keys (the YAML reference)."""
import sys


def keys_main(argv):
    """The YAML reference; `--markdown` prints the table that README.md holds."""
    from runner.config import reference
    rows = reference()
    if '--markdown' in argv:
        print('| key | type | default | meaning |\n| --- | --- | --- | --- |')
        for key, type_name, default, doc in rows:
            if type_name != 'section':
                print(f'| `{key}` | {type_name} | `{default}` | {doc} |')
        return 0
    for key, type_name, default, doc in rows:
        if type_name == 'section':
            print(f'\n{key}:  {doc}')
        else:
            print(f'  {key}  ({type_name}, default {default})\n      {doc}')
    return 0


COMMANDS = {
    'train': ('train the experiments of YAML files (run_experiments.py)', None),
    'keys': ('print every experiment-file key with its type, default and meaning', keys_main),
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
    return COMMANDS[name][1](rest)


if __name__ == '__main__':
    sys.exit(main())
