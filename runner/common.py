"""What every command of the runner writes the same way: exit statuses, the one line of an
error, "did you mean" hints, the options of the commands that read a trained run, and tables.

No TensorFlow here, and no import of another runner module: any module may use it.
"""
import difflib
import gc
import os
import re
import sys

# Exit statuses of every command (run_experiments.py and `python -m runner ...`): 0 done;
# 1 the work failed (a run failed or diverged, some input files could not be read);
# 2 a user error, nothing done: a wrong file, option, directory or experiment (argparse's
# own usage errors are 2 as well).
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# How a run may end without failing: trained to the end, or stopped by a search's pruner.
DONE = ('finished', 'pruned')

WEIGHTS_HELP = ('best: the best/ checkpoint (default); last: final.weights.h5, or the latest '
                'checkpoint of an unfinished run')
MOVED_DATA_HELP = 'where the data is now (only needed for the class names if the data moved)'


def output_to(main, argv):
    """main(argv), stdout flushed; a reader of stdout that has gone (`--list | head -1`) ends
    the command quietly and successfully: it took what it wanted, which is no failure. The
    rest of the output goes to /dev/null, so that Python's flush at exit does not raise again
    (the recipe of Python's documentation, signal module, "Note on SIGPIPE")."""
    try:
        code = main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is met inside the try
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


# What TensorFlow wraps an op's message in: the function's node name and the op's name.
TF_DECORATIONS = re.compile(r'^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]$')
# Lines of a TensorFlow op error that are context, not the cause.
TF_CONTEXT = ('Graph execution error', 'Detected at node', 'File "', 'Stack trace')


def end_process(code):
    """Exit with `code` once a command's work is done and written. gc.freeze() first: the
    collection at interpreter exit would otherwise walk TensorFlow's objects, and an input
    pipeline abandoned by a stopped evaluation has its threads joined there one by one
    (20 s and more after a Ctrl-C on a busy machine) for nothing the command still needs."""
    gc.freeze()
    sys.exit(code)


def first_line(error):
    """The first non-blank line of an exception's message (TensorFlow's op errors and TFDS's
    split errors run to many lines), or its type's name when it has none."""
    text = getattr(error, 'message', None) or str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return TF_DECORATIONS.sub('', lines[0]) if lines else type(error).__name__


def is_op_error(error):
    """A TensorFlow op error (tf.errors.OpError), told without importing TensorFlow."""
    return any(c.__name__ == 'OpError' and c.__module__.startswith('tensorflow')
               for c in type(error).__mro__)


ANSI_CODE = re.compile(r'\x1b\[[0-9;]*m')
RAISED = re.compile(r'^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.*)$')
KERAS_CALL = re.compile(r'^Exception encountered when calling (.*?)\.?$')


def error_summary(error):
    """'Type: what went wrong' in one line, naming the error raised inside where a
    tf.function's trace ('in user code:' and its traceback) or Keras ('Exception encountered
    when calling layer ...' and its arguments) wrapped it."""
    name, lines = type(error).__name__, [ANSI_CODE.sub('', l).strip() for l in str(error).splitlines()]
    lines = [l for l in lines if l]
    if lines and lines[0] == 'in user code:':  # the error raised inside is the last one named
        for i in range(len(lines) - 1, 0, -1):
            m = RAISED.match(lines[i])
            if m:
                name, lines = m.group(1), [m.group(2)] + lines[i + 1:]
                break
    if lines and KERAS_CALL.match(lines[0]) and len(lines) > 1:
        return f'{name}: {lines[1]} (in {KERAS_CALL.match(lines[0]).group(1)})'
    if name != type(error).__name__:
        return f'{name}: {lines[0]}'
    return f'{name}: {error_line(error)}'


def error_line(error):
    """One line that says what went wrong. A TensorFlow op error raised in a tf.function
    begins 'Graph execution error:' and carries its cause in a later line, the last."""
    if not is_op_error(error):
        return first_line(error)
    lines = [l.strip() for l in error.message.splitlines() if l.strip() and not l.strip().startswith('[[')]
    lines = [l for l in lines if not l.startswith(TF_CONTEXT)] or lines
    return TF_DECORATIONS.sub('', lines[-1]) if lines else type(error).__name__


def did_you_mean(name, known, prefix=''):
    """The hint `; did you mean 'x'?` naming the closest of `known` to a misspelt `name`
    (difflib's similarity of 0.6 or more), else ''. `prefix` is put before the name shown
    (a section: 'train_parameters.'), not compared."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ''


def add_run_options(parser, weights, data_dir_help=MOVED_DATA_HELP):
    """The --weights (one of `weights`, runner.commands.inference.WEIGHTS; the first is the default) and
    --data-dir options of the commands that read a trained run (evaluate, predict, export)."""
    parser.add_argument('--weights', choices=weights, default=weights[0], help=WEIGHTS_HELP)
    parser.add_argument('--data-dir', metavar='DIR', help=data_dir_help)


def rate_text(images_per_second):
    """A training speed as tables and progress lines show it: whole images/s from 100 up,
    three significant digits below, so that a slow run (a big model on image files, on a
    CPU) reads 0.42, not 0."""
    if images_per_second is None:
        return '-'
    if images_per_second >= 100:
        return f'{images_per_second:,.0f}'
    return f'{images_per_second:.3g}'


def text_table(rows):
    """Rows of strings (the first may be the header) as aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def markdown_table(header, rows, padded=False):
    """A Markdown table; `padded` aligns the columns for reading as plain text too."""
    if not padded:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' --- ' for _ in header) + '|']
        return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    line = lambda cells: '| ' + ' | '.join(c.ljust(w) for c, w in zip(cells, widths)) + ' |'
    return '\n'.join([line(header), line(['-' * w for w in widths])] + [line(r) for r in rows])
