"""`python -m runner stats DATASET_OR_YAML`: per-channel mean and standard deviation, image
count and size range of a dataset's training split, read as a stream (constant memory).

DATASET_OR_YAML is an experiment file (the dataset of each of its experiments, or of the one
`--experiment` names), an image folder (<root>/<split>/<class>/<image>) or a TensorFlow
Datasets name (prepared in --data-dir). The mean and std are in [0, 1] pixel units, printed
as `mean: [...]` and `std: [...]` lines to paste into the `dataset` section. For an
experiment they are computed as training computes them: after holding out the
validation_fraction images, cifar-style images resized to the model size first,
imagenet-style images whole. For a folder or TFDS name: the images as
they are. Unreadable files are skipped and named in a warning. Problems are one line on
stderr and exit status 2.
"""
import argparse
import dataclasses
import json
import os
import sys

from runner.config.schema import IMAGE_KEYS
from runner.common import EXIT_CONFIG, EXIT_OK, did_you_mean, first_line


class StatsError(Exception):
    """One-line message; exit status 2."""


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m runner stats',
        description='Per-channel mean and standard deviation (in [0, 1] pixel units, ready for '
                    'dataset.mean and dataset.std), image count and size range of the training '
                    'split of a dataset, read from disk as a stream.')
    p.add_argument('target', metavar='DATASET_OR_YAML',
                   help='an experiment file (.yaml), an image folder (<root>/<split>/<class>/<image>) '
                        'or a TensorFlow Datasets name')
    p.add_argument('--experiment', metavar='NAME',
                   help="only this experiment (run name) of the experiment file")
    p.add_argument('--data-dir', metavar='DIR',
                   help='TFDS data directory (replaces dataset.data_dir of an experiment file)')
    p.add_argument('--split', metavar='SPLIT',
                   help="the split to read (default: the dataset's train_split, 'train'; TFDS "
                        "slicing such as 'train[:10%%]' works)")
    p.add_argument('--sample', type=int, metavar='N',
                   help='only a fixed random sample of N images (faster for large datasets; '
                        'default: every image)')
    p.add_argument('--json', action='store_true', help='print one JSON object per dataset instead')
    return p


@dataclasses.dataclass
class Target:
    cfg: object               # runner.config.DatasetConfig
    experiments: list         # run names using it (experiment files)
    as_trained: bool          # resize cifar-style images to the model size, as training does
    split: str = None         # the split to read; None = cfg.train_split




def targets(arg, experiment=None, data_dir=None, split=None):
    """The datasets DATASET_OR_YAML stands for."""
    from runner.config.errors import ConfigError
    from runner.config.expand import load_experiments
    from runner.config.schema import DatasetConfig
    path = os.path.expanduser(arg)
    if os.path.isfile(path):
        try:
            exps = load_experiments(path)
        except ConfigError as e:
            raise StatsError(str(e)) from None
        if experiment:
            names = [e.run_name for e in exps]
            exps = [e for e in exps if experiment in (e.run_name, e.run_name.split('/')[0])]
            if not exps:
                hint = did_you_mean(experiment, names) or f"; run names: {', '.join(names)}"
                raise StatsError(f"--experiment: {path} has no experiment named '{experiment}'{hint}")
        out = {}
        for e in exps:
            cfg = e.dataset
            if data_dir:
                cfg = dataclasses.replace(cfg, data_dir=data_dir)
            key = json.dumps([getattr(cfg, k) for k in IMAGE_KEYS])  # the same pixels summed: one result
            if key not in out:
                out[key] = Target(cfg, [], True, split)
            out[key].experiments.append(e.run_name)
        return list(out.values())
    if experiment:
        raise StatsError('--experiment: only with an experiment file')
    if os.path.isdir(path):
        split = split or 'train'
        # Only the split read needs to be there (the runner wants a test split as well).
        cfg = DatasetConfig(image_folder=path, train_split=split, test_split=split)
        return [Target(cfg, [], False, split)]
    if os.sep in arg or arg.lower().endswith(('.yaml', '.yml')):
        raise StatsError(f"{arg}: no such file or directory")
    return [Target(DatasetConfig(name=arg, data_dir=data_dir), [], False, split)]


def compute(target, sample=None, progress=None):
    """The statistics of one target's training split, as a dict."""
    from runner.data import (info as data_info,
                             source as data_source,
                             splits as data_splits,
                             stats as data_stats,
                             transforms as data_transforms)
    cfg = target.cfg
    transform, note = None, 'the whole images'
    if target.as_trained:
        info = data_info.describe(cfg)
        prep = data_info.prep_for(cfg, info)
        if prep.style == 'cifar':
            size = prep.size
            transform = lambda x: data_transforms.fit(x, size)
            note = f'the images resized to {size[0]}x{size[1]}, as training reads them (cifar style)'
        else:
            note = 'the whole images, as training reads them (imagenet style)'
    split = target.split or cfg.train_split
    items = data_source.listing(cfg, split)
    stream = data_splits.Stream(split, items)
    held_out = 0
    if target.as_trained and cfg.validation_fraction and split == cfg.train_split:
        # Training takes its statistics after holding out the validation images; the same
        # hold_out (over the listing, as for a cached split) gives the same images here.
        stream, val = data_splits.hold_out(stream, cfg.validation_fraction)
        held_out = data_splits.size(val)
    mean, std, count, lo, hi = data_stats.stream_stats(stream, sample, transform, progress)
    if not count:
        raise data_source.DataUnavailable(f"dataset: no readable image in split '{split}' of {items.origin}")
    listed = data_splits.size(stream)
    return {
        'dataset': items.origin, 'split': split, 'experiments': target.experiments,
        'images': count, 'listed': listed, 'held_out': held_out,
        'sampled': min(sample, listed) if sample else None,
        'unreadable': len(stream.unreadable), 'unreadable_files': stream.unreadable.first(5),
        'min_height': lo[0], 'max_height': hi[0], 'min_width': lo[1], 'max_width': hi[1],
        'mean': mean, 'std': std, 'pixels': note,
    }


def _numbers(values):
    return '[' + ', '.join(f'{v:.6f}' for v in values) + ']'


def report(r):
    """The lines printed for one result; mean and std lines are YAML for the dataset section."""
    of = f"{r['images']} images" + (f" (a fixed random sample of {r['sampled']} of {r['listed']})"
                                   if r['sampled'] and r['sampled'] < r['listed'] else '')
    if r.get('held_out'):
        of += f" ({r['held_out']} more held out for validation, as training does)"
    head = f"{r['dataset']}, split '{r['split']}'"
    if r['experiments']:
        head += f" (experiments: {', '.join(r['experiments'])})"
    if (r['min_height'], r['min_width']) == (r['max_height'], r['max_width']):
        sizes = f"all {r['min_height']}x{r['min_width']} px"
    else:
        sizes = (f"height {r['min_height']}-{r['max_height']} px, width "
                 f"{r['min_width']}-{r['max_width']} px")
    return [head + ':',
            f"  {of}, {sizes}; statistics of {r['pixels']}",
            f"  mean: {_numbers(r['mean'])}",
            f"  std: {_numbers(r['std'])}"]


def _progress_printer():
    if not sys.stderr.isatty():
        return None

    def show(done, total):
        print(f'\r  {done}/{total} images', end='' if done < total else '\n', file=sys.stderr, flush=True)
    return show


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.sample is not None and args.sample < 1:
        print('error: --sample: must be at least 1', file=sys.stderr)
        return EXIT_CONFIG
    from runner.training.distribute import quiet_tensorflow
    quiet_tensorflow()
    import tensorflow as tf
    from runner.data import source as data_source
    results = []
    try:
        for t in targets(args.target, args.experiment, args.data_dir, args.split):
            r = compute(t, args.sample, _progress_printer())
            results.append(r)
            if r['unreadable']:
                more = ', ...' if r['unreadable'] > len(r['unreadable_files']) else ''
                print(f"warning: data: {r['unreadable']} unreadable image file(s) skipped: "
                      f"{', '.join(r['unreadable_files'])}{more}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print('\n'.join(report(r)), flush=True)
    except (StatsError, data_source.DataUnavailable) as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_CONFIG
    except (tf.errors.OpError, OSError) as e:  # a file that vanished, a TFDS copy cut short
        print(f'error: {args.target}: {first_line(e)}', file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
