"""Everything one experiment reads (`load`: its splits and statistics), and its training and
evaluation batches (`train_input`, `eval_input`)."""
import dataclasses
import sys
from typing import Any, List, Optional

from runner.config.errors import ConfigError
from runner.config.regularisers import Regularisers
from runner.data.info import DataInfo, Prep, describe, prep_for, reflect_padding_problem
from runner.data.pipeline import eval_dataset, train_dataset
from runner.data.source import DataUnavailable
from runner.data.splits import Stream, hold_out, read_splits, size, synthetic
from runner.data.stats import DEFAULT_STATS_SAMPLE, split_stats


# Known statistics, in [0, 1] pixel units (`dataset.mean_std`).
MEAN_STD = {
    'imagenet': ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    'cifar10': ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    'cifar100': ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


@dataclasses.dataclass
class Data:
    """Everything one experiment reads (`load`)."""
    info: DataInfo
    train: Any           # Split, Ragged or Stream
    eval: Any            # validation split if configured, else the test split
    test: Any
    mean: List[float]
    std: List[float]
    prep: Optional[Prep] = None
    reported_unreadable: int = 0


def _say(text):
    print(text, file=sys.stderr, flush=True)


def load(cfg, info=None, limit=None, allow_synthetic=False):
    """Everything one experiment reads. `limit` caps each split (smoke runs).

    With `allow_synthetic`, data that is not on this machine is replaced by random
    images of the right shape and class count, so a smoke run needs no data.
    """
    if allow_synthetic:  # a smoke run never downloads: random images stand in
        cfg = dataclasses.replace(cfg, download=False)
    info = info or describe(cfg)
    prep = prep_for(cfg, info)
    try:
        train, test = read_splits(cfg, info, prep, limit)
    except DataUnavailable:
        if not allow_synthetic:
            raise
        train = synthetic(info, limit or 256, 1)
        test = synthetic(info, limit or 256, 2)
        info = dataclasses.replace(info, description=info.description + ' (synthetic stand-in)')
    if cfg.validation_fraction:
        train, val = hold_out(train, cfg.validation_fraction)
    else:
        val = test
    preset = MEAN_STD.get(getattr(cfg, 'mean_std', None) or '')
    mean, std = preset if preset else (None, None)
    # normalize: false needs no statistics: on a streamed split they cost a decoding pass.
    if cfg.normalize and ((cfg.mean is None and mean is None) or (cfg.std is None and std is None)):
        sample = getattr(cfg, 'stats_sample', None)
        sample = DEFAULT_STATS_SAMPLE if sample is None else sample
        if isinstance(train, Stream) and (not sample or sample < size(train)):
            _say(f'data: computing mean and std from {min(sample or size(train), size(train))} of '
                 f'{size(train)} training images (give dataset.mean and std, or mean_std, to skip this)')
        mean, std = split_stats(train, sample, prep)
    mean = cfg.mean if cfg.mean is not None else mean
    std = cfg.std if cfg.std is not None else std
    if not cfg.normalize:
        mean, std = [0.0], [1.0]
    data = Data(info, train, val, test, list(mean), list(std), prep)
    line = unreadable_report(data)
    if line:
        _say(line)
    return data


class LastRead:
    """`load`, remembering the last dataset it read: runs one after another in one process that
    read the same dataset (a search's trials) read it once. Every dataset key counts, so a
    search over an augmentation key reads again (rarely worth a finer key)."""

    def __init__(self):
        self.cfg, self.data = None, None

    def __call__(self, cfg):
        if self.data is None or cfg != self.cfg:
            self.cfg, self.data = None, None  # the old copy's memory back before reading the new
            self.data = load(cfg)
            self.cfg = cfg
        return self.data


def unreadable_report(data, new_only=True):
    """One warning line about the files skipped so far, or None (nothing new)."""
    counts = {}
    for split in (data.train, data.eval, data.test):
        u = getattr(split, 'unreadable', None)
        if u is not None and id(u) not in counts:
            counts[id(u)] = (split.name, u)
    total = sum(len(u) for _, u in counts.values())
    if not total or (new_only and total == data.reported_unreadable):
        return None
    data.reported_unreadable = total
    names = [k for _, u in counts.values() for k in u.first(3)][:3]
    per = ', '.join(f'{name} {len(u)}' for name, u in counts.values() if len(u))
    more = ', ...' if total > len(names) else ''
    return (f"warning: data: {total} unreadable image file(s) skipped ({per}): "
            f"{', '.join(names)}{more}")


def train_input(data, cfg, batch_size, seed, start_batch=0):
    """The training batches of a loaded experiment (Trainer.start_input); `cfg` is its
    dataset section."""
    prep = dataclasses.replace(data.prep or prep_for(cfg, data.info), flip=cfg.flip,
                               crop_padding=cfg.crop_padding, alternate_flips=cfg.alternate_flips,
                               crop_padding_mode=cfg.crop_padding_mode)
    problem = reflect_padding_problem(prep.crop_padding, prep.crop_padding_mode, data.info.image_shape)
    if problem:
        raise ConfigError(problem)
    return train_dataset(data.train, batch_size, seed, data.mean, data.std, prep.flip,
                         prep.crop_padding, start_batch=start_batch, prep=prep,
                         regularisers=Regularisers.of(cfg), num_classes=data.info.num_classes)


def eval_input(data, split, batch_size):
    """The evaluation batches of one split of a loaded experiment (Trainer.evaluate)."""
    prep = data.prep or Prep('cifar', tuple(data.info.image_shape[:2]))
    return eval_dataset(split, batch_size, data.mean, data.std, prep)
