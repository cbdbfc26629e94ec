"""Input pipelines: TFDS, an image folder, list files or TFRecords, into tf.data; the one
module the rest of the runner reads data through.

Where the images come from is runner.sources (a listing of items, nothing decoded). The
data modules, bottom up:

- runner.data_source: which source, TFDS builders (prepared, downloaded, manual archives),
  the listing of a split of any source.
- runner.data_transforms: decoding, the `cifar` and `imagenet` preprocessing styles,
  normalisation and augmentation (graph functions).
- runner.data_info: describing a dataset without reading it (DataInfo, Prep) and the size
  mistakes caught before step 1.
- runner.data_splits: splits held in memory when they fit `dataset.cache_budget_mb`, else
  streamed from disk; the held-out validation split; unreadable files skipped and named.
- runner.data_stats: per-channel mean and standard deviation.
- runner.data_pipeline: resumable training batches (a function of the seed alone, so
  `start_batch` resumes them exactly) and evaluation batches.

Here: `load` (everything one experiment reads, with its statistics), `train_input` and
`eval_input`, and the names of those modules that other modules use, so that they read
`from runner import data as data_lib; data_lib.describe(...)`.
"""
import dataclasses
import sys
from typing import Any, List, Optional

from runner.config import ConfigError
# The public face of the data modules: other modules use these as `data_lib.<name>`.
from runner.data_info import (DataInfo, Prep, check_sizes, describe, prep_for,
                              reflect_padding_problem, validation_count)
from runner.data_pipeline import eval_dataset, train_dataset
from runner.data_source import (DataUnavailable, data_ready, listing, not_prepared_message,
                                source_kind, tfds_builder)
from runner.data_splits import (Ragged, Split, Stream, Unreadable, cached, estimate_bytes,
                                hold_out, read_split, read_splits, size, synthetic)
from runner.data_stats import DEFAULT_STATS_SAMPLE, channel_stats, split_stats, stream_stats
from runner.data_transforms import (augment_batch, center_crop, decode, fit, normalize,
                                    pad_images, prepare_eval_image, random_resized_crop,
                                    resize_short_side, ten_crop)

__all__ = [
    'Data', 'load', 'unreadable_report', 'train_input', 'eval_input', 'MEAN_STD',
    'DataInfo', 'Prep', 'check_sizes', 'describe', 'prep_for', 'reflect_padding_problem',
    'validation_count', 'eval_dataset', 'train_dataset', 'DataUnavailable', 'data_ready',
    'listing', 'not_prepared_message', 'source_kind', 'tfds_builder', 'Ragged', 'Split',
    'Stream', 'Unreadable', 'cached', 'estimate_bytes', 'hold_out', 'read_split',
    'read_splits', 'size', 'synthetic', 'DEFAULT_STATS_SAMPLE', 'channel_stats',
    'split_stats', 'stream_stats', 'augment_batch', 'center_crop', 'decode', 'fit',
    'normalize', 'pad_images', 'prepare_eval_image', 'random_resized_crop',
    'resize_short_side', 'ten_crop']

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
                         prep.crop_padding, start_batch=start_batch, prep=prep)


def eval_input(data, split, batch_size):
    """The evaluation batches of one split of a loaded experiment (Trainer.evaluate)."""
    prep = data.prep or Prep('cifar', tuple(data.info.image_shape[:2]))
    return eval_dataset(split, batch_size, data.mean, data.std, prep)
