"""Experiment files: the schema, its defaults, strict validation and `--set` overrides.

An experiment file is multi-document YAML, one experiment per document, in the
format of the seed runner (module / model / model_parameters / train_parameters /
skip_error_test) plus the `dataset` and `paper` sections. Every key is declared
once below, with its type, default and meaning, and in its field's metadata the choices or
range of numbers it allows and whether it may change when a run is resumed. Validation,
the resume check of runner.cli, the YAML reference in docs/configuration.md and
`python -m runner keys` all read these declarations.

Errors are `ConfigError`s: one line naming the file, the experiment and the key,
never a traceback.
"""
import copy
import dataclasses
import itertools
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml

from runner.common import did_you_mean
from runner.rundir import RunDir


DISTRIBUTIONS = ('auto', 'none', 'mirrored', 'multi_worker', 'tpu')
PRECISIONS = ('auto', 'fastest', 'float32', 'mixed_bfloat16', 'mixed_float16')
LR_SCHEDULES = ('piecewise', 'linear', 'cosine', 'piecewise_linear')
from runner.tta import DURING_TRAINING as EVAL_TTA  # without 10crop; runner.tta says why
CROP_PADDING_MODES = ('zeros', 'reflect')
PREPROCESSING = ('auto', 'cifar', 'imagenet')
MEAN_STD_PRESETS = ('imagenet', 'cifar10', 'cifar100')  # runner.data.MEAN_STD holds their values
OPTIMIZERS = ('sgd', 'adamw', 'lion', 'lamb', 'muon')
MUON_OTHER = ('adamw', 'sgd')
# The keys of train_parameters that only some optimizers read: for each, the optimizers that
# read it and its value when null (Keras 3's defaults; see docs/optimizers.md). With muon,
# beta_1, beta_2 and epsilon are those of its AdamW part (muon_other: adamw).
OPTIMIZER_DEFAULTS = {
    'beta_1': {'adamw': 0.9, 'lion': 0.9, 'lamb': 0.9, 'muon': 0.9},
    'beta_2': {'adamw': 0.999, 'lion': 0.99, 'lamb': 0.999, 'muon': 0.999},
    'epsilon': {'adamw': 1e-7, 'lamb': 1e-6, 'muon': 1e-7},
    'muon_momentum': {'muon': 0.95},
    'muon_ns_steps': {'muon': 5},
    'muon_rms_rate': {'muon': 0.2},
    'muon_other': {'muon': 'adamw'},
    'muon_other_lr_ratio': {'muon': 1.0},
    'muon_normalize_weights': {'muon': False},
}
# Decoupled weight decay (w -= lr * weight_decay * w) when weight_decay is null: Keras's default.
DECOUPLED_WEIGHT_DECAY = {'adamw': 0.004, 'lion': 0.0, 'lamb': 0.0, 'muon': 0.004}


class ConfigError(Exception):
    """A problem in an experiment file, reported as one line (or several problems, one a
    line: see collect_errors)."""


# Validation reports every problem of every experiment at once, up to this many lines.
MAX_ERRORS = 20


def collect_errors(items, check):
    """check(item) for each item; every ConfigError is kept and, at the end, raised as one
    ConfigError of one line per problem (at most MAX_ERRORS, then how many more). Returns
    the results of the items that passed."""
    results, problems, passed = [], [], []
    for item in items:
        try:
            results.append(check(item))
        except ConfigError as e:
            problems += getattr(e, 'problems', None) or str(e).splitlines()
            passed += getattr(e, 'passed', [])
    if problems:
        error = join_errors(*problems)
        # What did pass (flattened), so that a caller can check it further and report its
        # problems in the same round.
        error.passed = [x for r in results for x in (r if isinstance(r, list) else [r])] + passed
        raise error
    return results


def join_errors(*errors):
    """One ConfigError of the lines of every error or message given (None skipped), at most
    MAX_ERRORS of them, then how many more."""
    lines = [line for e in errors if e is not None
             for line in getattr(e, 'problems', None) or str(e).splitlines()]
    more = len(lines) - MAX_ERRORS
    error = ConfigError('\n'.join(lines[:MAX_ERRORS] + ([f'... and {more} more problems'] if more > 0 else [])))
    error.problems = lines  # all of them, for a caller that adds more
    return error


@dataclass(frozen=True)
class Interval:
    """The numbers a key allows, written in interval notation: '[0, 1)', '(0, inf)'."""
    low: float
    high: float
    low_open: bool
    high_open: bool

    @classmethod
    def parse(cls, text):
        m = re.fullmatch(r'([\[(])([^,]+),([^\])]+)([\])])', text.replace(' ', ''))
        return cls(float(m[2]), float(m[3]), m[1] == '(', m[4] == ')')

    def __contains__(self, value):
        return ((value > self.low if self.low_open else value >= self.low)
                and (value < self.high if self.high_open else value <= self.high))

    def rule(self):
        """What a value must do, as an error message says it: 'be at least 1', 'be in [0, 1)'."""
        if self.high == math.inf:
            if self.low == 0:
                return 'be positive' if self.low_open else 'not be negative'
            return f"be {'greater than' if self.low_open else 'at least'} {self.low:g}"
        return f"be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def __str__(self):
        """As the reference shows it: '> 0', '>= 1', '[0, 1)'."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return self.rule().removeprefix('be in ')


def _doc(text, *, choices=None, within=None, resumable=False, null_is_default=False, **kw):
    """A key of the schema: its meaning and default, and what validation, the reference and a
    resume read from it. `choices`: the strings allowed. `within`: the numbers allowed (an
    Interval's notation; for a list, each item's). `resumable`: the key may change when a run
    is resumed without making its checkpoint meaningless (logging, evaluation, how long to
    train, where the data is: moved data is still the same data, and validation checks its
    labels and classes again). `null_is_default`: a null reads as the default, as files
    written when the default was spelled null (older runs' config.yaml) say."""
    return field(metadata={'doc': text, 'choices': tuple(choices) if choices else None,
                           'within': Interval.parse(within) if within else None,
                           'resumable': resumable, 'null_is_default': null_is_default}, **kw)


@dataclass
class DatasetConfig:
    name: Optional[str] = _doc(
        'TensorFlow Datasets name (cifar10, cifar100, imagenette, imagenet2012, ...). Ignored when '
        'image_folder, list files or TFRecords are given.',
        default='cifar10')
    image_folder: Optional[str] = _doc(
        'Root of an image-folder dataset: <root>/<split>/<class>/<image>, listed as tfds.ImageFolder '
        'lists it (.jpg, .jpeg, .png).',
        resumable=True, default=None)
    data_dir: Optional[str] = _doc(
        'Where TFDS keeps prepared datasets (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).',
        resumable=True, default=None)
    download: bool = _doc('Let TFDS download and prepare the dataset if it is not in data_dir.',
                          resumable=True, default=False)
    train_split: str = _doc('Split to train on (TFDS split syntax, e.g. "train[:90%]").',
                            default='train')
    test_split: str = _doc('Split the reported test error comes from.', default='test')
    validation_fraction: float = _doc(
        'Fraction of train_split held out as a validation split (0 = none). When set, periodic '
        'evaluation and best-checkpoint selection use it, and the test split is only read at the end.',
        within='[0, 1)', default=0.0)
    manual_dir: Optional[str] = _doc(
        'Where TFDS finds manually downloaded archives (imagenet2012: ILSVRC2012_img_train.tar and '
        'ILSVRC2012_img_val.tar), prepared once with download: true; null = <data_dir>/downloads/manual.',
        resumable=True, default=None)
    list_root: Optional[str] = _doc(
        'Image root of a list-file dataset (train_list, test_list); null = the folder of each list file.',
        resumable=True, default=None)
    train_list: Optional[str] = _doc(
        'List file of the training split: one `relative/path label` line per image (paths relative '
        'to list_root; a relative list path may also be relative to list_root).', resumable=True, default=None)
    test_list: Optional[str] = _doc('List file of the test split (as train_list).', resumable=True, default=None)
    tfrecord_train: Optional[str] = _doc(
        'Glob pattern of the training TFRecord shards (tf.train.Examples with an encoded image and '
        'an int64 label), e.g. /data/imagenet/train-*.', resumable=True, default=None)
    tfrecord_test: Optional[str] = _doc('Glob pattern of the test TFRecord shards.', resumable=True, default=None)
    tfrecord_image_key: str = _doc('Feature of the TFRecords holding the encoded image.',
                                   null_is_default=True, default='image/encoded')
    tfrecord_label_key: str = _doc('Feature of the TFRecords holding the label.',
                                   null_is_default=True, default='image/class/label')
    class_names_file: Optional[str] = _doc(
        'Class names, one a line in label order (a leading "<label> " is dropped); for list files '
        'and TFRecords, or to name the classes of any source.', default=None)
    num_classes: Optional[int] = _doc(
        'Number of classes of list files or TFRecords; null = the lines of class_names_file, else '
        '(list files) the largest label + 1. TFRecords need this or class_names_file.', within='[1, inf)', default=None)
    label_offset: int = _doc(
        'Added to every label of list files and TFRecords, e.g. -1 for TFRecords labelled 1..1000. '
        'Labels outside [0, num_classes) are an error before training.', null_is_default=True, default=0)
    image_size: Optional[List[int]] = _doc(
        '[height, width] of the model input. cifar style: images are resized to it; imagenet style: '
        'the size of the crops. null = the images\' own size, or 224x224 for imagenet-style images '
        'of varying size (judged from 32 images spread over the training split).', default=None)
    preprocessing: str = _doc(
        'cifar (resize to image_size, flips and pad-and-crop), imagenet (random resized crop and '
        'flip; evaluation: short side to image_size/0.875, centre crop) or auto: imagenet when the '
        'images are larger than 64 px or of unknown size.', choices=PREPROCESSING, null_is_default=True,
        default='auto')
    cache_budget_mb: int = _doc(
        'A split whose decoded images fit in this many MB (image count x decoded size of a sample) is '
        'held in memory; a larger one is streamed from disk; 0 streams every split.',
        within='[0, inf)', null_is_default=True, default=2048)
    flip: bool = _doc('Random horizontal flips in training.', default=True)
    alternate_flips: bool = _doc(
        'With flip: mirror each image in every other epoch instead of at random, the first '
        'epoch\'s choice drawn per image from the seed, so each image is seen both ways round in '
        'any two consecutive epochs (airbench94\'s alternating flip, Jordan 2024).', default=False)
    crop_padding: int = _doc(
        'Pad each side by this many pixels, then random-crop back to size (0 = off).', within='[0, inf)', default=4)
    crop_padding_mode: str = _doc(
        'What the padding holds: zeros (after normalisation, i.e. the mean colour, as in '
        'fb.resnet.torch) or reflect (the image mirrored at its edges, as airbench).', choices=CROP_PADDING_MODES, default='zeros')
    normalize: bool = _doc('Subtract the per-channel mean and divide by the standard deviation.',
                           default=True)
    mean: Optional[List[float]] = _doc(
        'Per-channel mean in [0, 1] pixel units; null computes it from the training split.',
        default=None)
    std: Optional[List[float]] = _doc(
        'Per-channel standard deviation in [0, 1] pixel units; null computes it from the training split.',
        within='(0, inf)', default=None)
    mean_std: Optional[str] = _doc(
        'Known mean and std instead of computing them: imagenet ([0.485, 0.456, 0.406], [0.229, 0.224, '
        '0.225]), cifar10 or cifar100; mean and std, when given, win.', choices=MEAN_STD_PRESETS, default=None)
    stats_sample: int = _doc(
        'Mean and std of a streamed training split come from this many of its images (a fixed sample); '
        '0 = all. A split held in memory always uses all.', within='[0, inf)', null_is_default=True,
        default=10000)


@dataclass
class TrainConfig:
    logdir: str = _doc('Directory that holds one sub-directory per run.', resumable=True, default='logs')
    run_name: Optional[str] = _doc(
        'Name of the run directory and TensorBoard run (default: the model name).', default=None)
    log_interval: int = _doc('Steps between training-metric logs.', within='[1, inf)', resumable=True, default=400)
    val_interval: int = _doc('Steps between evaluations (and checkpoints).', within='[1, inf)', resumable=True, default=4000)
    checkpoint_interval: int = _doc(
        'Steps between checkpoints (also saved at every evaluation and at the end).', within='[1, inf)', resumable=True, default=1000)
    keep_checkpoints: int = _doc('How many recent checkpoints to keep.', within='[1, inf)', resumable=True, default=3)
    batch_size: int = _doc('Global training batch size.', within='[1, inf)', default=128)
    eval_batch_size: int = _doc('Batch size for evaluation.', within='[1, inf)', resumable=True, default=500)
    lr_values: List[float] = _doc(
        'Learning rate for each piece of the schedule.', within='[0, inf)', default_factory=lambda: [0.01, 0.1, 0.01, 0.001])
    lr_boundaries: List[int] = _doc(
        'End step of each piece (steps; same length as lr_values); the last one is the total '
        'number of training steps. For piecewise_linear, the step of each knot, the first 0.',
        default_factory=lambda: [400, 32000, 48000, 64000])
    lr_schedule: str = _doc(
        'piecewise (lr_values between lr_boundaries), linear or cosine (warm-up, then from '
        'lr_values[0] down to 0 at the last boundary; give one value and one boundary), or '
        'piecewise_linear (lr_values[i] at step lr_boundaries[i], straight lines between).',
        choices=LR_SCHEDULES, default='piecewise')
    warmup_steps: int = _doc(
        'Linear warm-up from 0 to the scheduled rate over this many steps (0 = none).', within='[0, inf)', default=0)
    optimizer: str = _doc(
        'sgd (momentum SGD, weight decay as L2 in the loss), adamw, lion, lamb (decoupled weight '
        'decay) or muon (orthogonalised momentum on the convolution and hidden dense kernels, '
        'AdamW or SGD on the rest): keras.optimizers; see docs/optimizers.md.', choices=OPTIMIZERS, default='sgd')
    momentum: float = _doc('SGD momentum (sgd, and muon\'s SGD part with muon_other: sgd).',
                           within='[0, 1)', default=0.9)
    nesterov: bool = _doc('Nesterov momentum (as momentum).', default=False)
    beta_1: Optional[float] = _doc(
        'adamw, lamb, lion, muon (its AdamW part): decay of the first moment (lion: of the '
        'interpolation); null = 0.9.', within='[0, 1)', default=None)
    beta_2: Optional[float] = _doc(
        'adamw, lamb, muon (its AdamW part): decay of the second moment; lion: of the momentum; '
        'null = 0.999 (lion 0.99).', within='[0, 1)', default=None)
    epsilon: Optional[float] = _doc('adamw, lamb, muon (its AdamW part): added to the root of the '
                                    'second moment; null = 1e-7 (lamb 1e-6).', within='(0, inf)', default=None)
    muon_momentum: Optional[float] = _doc('muon: momentum of the Muon step (Nesterov); null = 0.95.',
                                          within='[0, 1)', default=None)
    muon_ns_steps: Optional[int] = _doc('muon: Newton-Schulz iterations; null = 5 (airbench 3).',
                                        within='[1, inf)', default=None)
    muon_rms_rate: Optional[float] = _doc(
        'muon: the update of an m x n kernel is scaled by rms_rate * sqrt(max(m, n)) (Moonlight, '
        'arXiv:2502.16982); 0 = unscaled, as airbench; null = 0.2.', within='[0, inf)', default=None)
    muon_other: Optional[str] = _doc(
        'muon: what updates the variables Muon does not (biases, batch norm, the output layer): '
        'adamw or sgd (momentum, nesterov, bn_bias_lr_multiplier and L2 weight decay as for sgd); '
        'null = adamw.', choices=MUON_OTHER, default=None)
    muon_other_lr_ratio: Optional[float] = _doc(
        'muon: learning rate of that other part / the scheduled rate (the Muon rate); null = 1.',
        within='(0, inf)', default=None)
    muon_normalize_weights: Optional[bool] = _doc(
        'muon: before each Muon step, scale each kernel to a Frobenius norm of sqrt(output '
        'channels) (airbench94_muon); null = false.', default=None)
    weight_decay: Optional[float] = _doc(
        'sgd: weight decay passed to the model function (gradient += weight_decay * w on kernels; '
        'on every weight in models whose decay_all is on: WRN, ResNeXt, DenseNet, cifar_airbench94, '
        'cifar_resnet9); null keeps the model\'s own default (1e-4 for most models). adamw, lion, '
        'lamb, muon: decoupled, w -= lr * weight_decay * w each step on the same weights, nothing '
        'in the loss; null = 0.004 (adamw, muon) or 0 (lion, lamb). See docs/optimizers.md.',
        within='[0, inf)', default=None)
    label_smoothing: float = _doc('Label smoothing of the cross-entropy.', within='[0, 1)', default=0.0)
    bn_bias_lr_multiplier: float = _doc(
        'Learning-rate multiplier for the offsets (beta) of batch normalisation: the gradient of '
        'the loss with respect to them is scaled by it before the SGD step, the gradient of their '
        'weight decay is not (airbench uses 64; 1 = off).', within='(0, inf)', default=1.0)
    freeze_after: Dict[str, Any] = _doc(
        'Stop training layers after a step: {layer name: step}. From that step on the layer\'s '
        'trainable weights get no gradient, momentum or weight decay, and the backward pass skips '
        'what only they needed. airbench freezes its whitening bias after 3 epochs '
        '({stem_whiten: 147} at batch 1024).', default_factory=dict)
    adapt_examples: int = _doc(
        'Layers with an adapt(images) method (keras.layers.Normalization, models.fast.PatchWhitening) '
        'are fitted to this many un-augmented, normalised training images, as that layer receives '
        'them, before the first step of a fresh run (not on resume or with init_weights).',
        within='[1, inf)', default=5000)
    ema_decay: Optional[float] = _doc(
        'Keep an exponential moving average of the weights and batch-norm statistics, updated '
        'every step with decay min(ema_decay, (1 + step) / (10 + step)) (the num_updates rule of '
        'tf.train.ExponentialMovingAverage, so early averages forget the initialisation), e.g. '
        '0.99; null = off. Evaluations, best/ and final.weights.h5 use the averaged weights; '
        'checkpoints hold both, so a resume is exact.', within='(0, 1)', default=None)
    lookahead_interval: Optional[int] = _doc(
        'Lookahead (airbench94): every this many steps the slow weights (and batch-norm statistics) '
        'move towards the trained ones, slow += (1 - alpha) * (trained - slow), and the trained ones '
        'are set to them; alpha = lookahead_decay**interval * (step / last lr_boundary)**3, and at '
        'the last lr_boundary the run ends on the slow weights. null = off; airbench uses 5.',
        within='[1, inf)', default=None)
    lookahead_decay: float = _doc(
        'Per-step decay of Lookahead at the end of training (see lookahead_interval); airbench 0.95.',
        within='(0, 1]', default=0.95)
    eval_tta: str = _doc(
        'Test-time augmentation of the periodic and final evaluations during training: none, '
        'flip (softmax of each image and of its mirror averaged; the loss is -log of the averaged '
        'probability of the true class) or flip_translate (six views: the image, the image shifted '
        'one pixel up-left and one down-right with reflected edges, and their mirrors; airbench\'s '
        'TTA level 2: the logits averaged, the unshifted pair weighted 1/4 each and the shifted '
        'views 1/8).', choices=EVAL_TTA, default='none')
    steps: Optional[int] = _doc(
        'Stop after this many steps whatever the schedule says (null = last lr_boundary).',
        within='[1, inf)', resumable=True, default=None)
    seed: int = _doc('Seed for weights, shuffling and augmentation.', default=0)
    init_weights: Optional[str] = _doc(
        'Start from these weights (fine-tuning): a run directory (its final.weights.h5, else its '
        'latest checkpoint) or a .weights.h5 file. Only for a fresh run, not on resume.', resumable=True, default=None)
    init_skip_mismatch: bool = _doc(
        'With init_weights, leave layers whose shapes differ (e.g. a new classifier) at their '
        'fresh initialisation instead of failing.', resumable=True, default=False)
    distribution: str = _doc(
        'auto: MirroredStrategy when more than one GPU '
        'is visible, MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else none. '
        'batch_size is the global batch over all replicas.', choices=DISTRIBUTIONS, default='auto')
    precision: str = _doc(
        'mixed_float16 is with loss scaling. auto: '
        'mixed_float16 on GPUs, float32 on CPUs. fastest: as auto, except on a single machine '
        'whose CPU has bfloat16 instructions, where a few train steps of the model are timed in '
        'float32 and mixed_bfloat16 before step 1 and the run trains in mixed_bfloat16 if it is '
        'at least 1.1x as fast (a resumed run keeps its choice).', choices=PRECISIONS, default='auto')
    jit_compile: bool = _doc('Compile the train step with XLA.', default=False)
    deterministic: bool = _doc(
        'Make every op deterministic (tf.config.experimental.enable_op_determinism): bit-exact '
        'reruns and resumes on the CPU, somewhat slower. For this experiment only: the next one '
        'in the file runs with its own setting.', default=False)


@dataclass
class PaperConfig:
    top1_error: Optional[float] = _doc('Top-1 test error (%) the paper reports.', resumable=True, default=None)
    top5_error: Optional[float] = _doc('Top-5 test error (%) the paper reports.', resumable=True, default=None)
    source: Optional[str] = _doc('Where that number comes from (paper, table).', resumable=True, default=None)


@dataclass
class Experiment:
    model: str = _doc('Name of the function that builds the Keras model (required).')
    module: Optional[str] = _doc(
        'Module that defines `model`; may be left out for this project\'s models. Any importable '
        'module works, e.g. a file of your own on the Python path.', default=None)
    model_parameters: Dict[str, Any] = _doc('Keyword arguments for the model function.',
                                            default_factory=dict)
    dataset: DatasetConfig = _doc('Where the data comes from and how it is prepared.',
                                  default_factory=DatasetConfig)
    train_parameters: TrainConfig = _doc('Optimisation, schedule and logging.',
                                         default_factory=TrainConfig)
    paper: PaperConfig = _doc('The paper\'s reported result, for comparison in reports.',
                              default_factory=PaperConfig)
    skip_error_test: bool = _doc('Leave this experiment out of the smoke run before training.',
                                 resumable=True, default=False)
    repeats: int = _doc(
        'Train the experiment this many times with seeds seed, seed+1, ... as runs '
        '<run_name>/seed<k>; reports show mean and standard deviation.', default=1)
    grid: Dict[str, Any] = _doc(
        'Sweep: {dotted key: [values]}; the document stands for the cross product, each run named '
        '<run_name>_<key>-<value>..., e.g. {model_parameters.depth: [20, 56], '
        'train_parameters.batch_size: [64, 128]}.', default_factory=dict)

    # Set by the loader, not by the file.
    source: str = field(default='<string>', metadata={'internal': True})
    index: int = field(default=0, metadata={'internal': True})

    @property
    def run_name(self):
        return self.train_parameters.run_name or self.model

    @property
    def label(self):
        """How errors name this experiment: file, position and run name."""
        return f"{self.source}: experiment {self.index + 1} ({self.run_name})"

    @property
    def total_steps(self):
        tp = self.train_parameters
        return tp.steps if tp.steps is not None else tp.lr_boundaries[-1]

    def to_dict(self):
        d = dataclasses.asdict(self)
        for key in ('source', 'index', 'repeats', 'grid'):  # expanded before the run exists
            d.pop(key)
        return d


# ---------------------------------------------------------------------------
# YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 as a float (YAML 1.1 wants 1.0e-4) and refuses a key
    given twice in one mapping, which PyYAML would let the second silently replace (a
    forgotten `---` between two experiments would merge them into one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':  # `<<:`, overridable by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"'{key}' is given twice in one mapping (first at line "
                        f"{first.line + 1}); a missing '---' between two experiments?",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def parse_yaml(text, source='<string>'):
    try:
        return list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f'{source}:{mark.line + 1}:{mark.column + 1}' if mark else source
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        kind = 'YAML error' if isinstance(e, yaml.constructor.ConstructorError) else 'YAML syntax error'
        raise ConfigError(f'{where}: {kind}: {problem}') from None


def yaml_value(text):
    """A YAML scalar or flow value from the command line (`--set key=VALUE`)."""
    return parse_yaml(text, '--set')[0] if text.strip() else None


def dump_yaml(data):
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------
# Validation

def _fields(cls):
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get('internal')}


def _default(f):
    """The default of a schema field, or dataclasses.MISSING for a required one."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _nullable(tp):
    return typing.get_origin(tp) is Union and type(None) in typing.get_args(tp)


def _type_name(tp):
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return ' or '.join(_type_name(a) for a in args) + ' or null'
    if origin in (list, List):
        return f'list of {_type_name(typing.get_args(tp)[0])}'
    if origin in (dict, Dict):
        return 'mapping'
    return {int: 'integer', float: 'number', bool: 'true/false', str: 'string'}.get(tp, tp.__name__)


def _describe(value):
    if value is None:
        return 'null'
    return f'{type(value).__name__} {value!r}'


def _convert(value, tp, key):
    """Check `value` against the type annotation `tp`; returns the value to store."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin in (list, List):
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f'{key}: expected {_type_name(tp)}, got {_describe(value)}')
        return [_convert(v, item, f'{key}[{i}]') for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping, got {_describe(value)}')
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f'{key}: expected a mapping of {tp.__name__} keys, got {_describe(value)}')
        return _build(tp, value, key + '.')
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                # .nan or .inf would train (or pass as a "last good" checkpoint) to no end.
                raise ConfigError(f'{key}: must be a finite number, got {value}')
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f'{key}: expected {_type_name(tp)}, got {_describe(value)}')


def _unknown_key(key, prefix, known):
    # A key that belongs in another section is the commonest slip: say where it goes.
    elsewhere = [f'{sec}.{key}' for sec, cls in _SECTIONS.items()
                 if key in _fields(cls) and sec + '.' != prefix]
    hint = (did_you_mean(key, known, prefix)
            or (f"; it belongs in '{elsewhere[0]}'" if elsewhere else '')
            or f"; valid keys: {', '.join(sorted(known))}")
    return ConfigError(f'{prefix}{key}: unknown key{hint}')


def _build(cls, data, prefix=''):
    known = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in known:
            raise _unknown_key(str(key), prefix, list(known))
        if value is None and known[key].metadata.get('null_is_default'):
            continue  # the default, which older files spelled null
        kwargs[key] = _convert(value, known[key].type, prefix + key)
    missing = [n for n, f in known.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f'{prefix}{missing[0]}: required key is missing')
    return cls(**kwargs)


_SECTIONS = {'dataset': DatasetConfig, 'train_parameters': TrainConfig, 'paper': PaperConfig}


def _check_values(exp):
    """Checks of values that a type alone cannot express: each key against its schema
    metadata (choices, range), then the rules that span several keys."""
    _check_fields(exp)
    tp, ds = exp.train_parameters, exp.dataset
    _check_schedule(tp)
    for name, step in tp.freeze_after.items():
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ConfigError(f'train_parameters.freeze_after.{name}: expected a step (an integer '
                              f'from 0), got {step!r}')
    _check_optimizer(tp)
    _check_dataset(ds)
    problem = run_name_problem(exp.run_name)
    if problem:
        raise ConfigError(f"train_parameters.run_name: '{exp.run_name}' {problem}")
    bad = _non_finite(exp.model_parameters)
    if bad is not None:
        raise ConfigError(f'model_parameters.{bad[0]}: must be a finite number, got {bad[1]}')


def _check_fields(obj, prefix=''):
    """Every value of a schema object (sections too) against its field's choices and range
    (of each item, for a list); null, where the type allows it, passes."""
    for name, f in _fields(type(obj)).items():
        value, key = getattr(obj, name), prefix + name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + '.')
            continue
        if value is None:
            continue
        choices, within = f.metadata.get('choices'), f.metadata.get('within')
        if choices and value not in choices:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}"
                              f"{did_you_mean(value, choices)}")
        if within and isinstance(value, list):  # each item
            bad = next((i for i, v in enumerate(value) if v not in within), None)
            if bad is not None:
                raise ConfigError(f'{key}[{bad}]: must {within.rule()}, got {value[bad]}')
        elif within and value not in within:
            raise ConfigError(f"{key}: must {within.rule()}{' or null' if _nullable(f.type) else ''}, "
                              f"got {value}")


def _check_schedule(tp):
    """lr_values and lr_boundaries against each other and the lr_schedule named."""
    values, bounds = tp.lr_values, tp.lr_boundaries
    if len(values) != len(bounds):
        raise ConfigError(f'train_parameters.lr_values: has {len(values)} values but lr_boundaries '
                          f'has {len(bounds)}; give one end step per learning rate')
    if not bounds:
        raise ConfigError('train_parameters.lr_boundaries: needs at least one step')
    if tp.lr_schedule == 'piecewise_linear':
        # Knots: the rate at step 0 is one of them.
        if len(bounds) < 2 or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])):
            raise ConfigError(f'train_parameters.lr_boundaries: lr_schedule piecewise_linear needs the '
                              f'steps of two or more knots, strictly increasing from 0 (the rate at '
                              f'the start) to the last step, got {bounds}')
    elif any(b <= a for a, b in zip([0] + bounds, bounds)):
        raise ConfigError(f'train_parameters.lr_boundaries: must be positive and strictly '
                          f'increasing, got {bounds}')
    if tp.lr_schedule in ('linear', 'cosine') and len(values) != 1:
        raise ConfigError(f'train_parameters.lr_values: lr_schedule {tp.lr_schedule} decays from one '
                          f'peak rate; give one value and one boundary (the last step), got {values}')


def _check_dataset(ds):
    """The dataset keys that go together: one source of images and what it needs, the
    shapes of image_size, mean and std, and flips."""
    if ds.alternate_flips and not ds.flip:
        raise ConfigError('dataset.alternate_flips: needs dataset.flip: true (it says how images are '
                          'flipped, not whether)')
    if ds.image_size is not None and (len(ds.image_size) != 2 or min(ds.image_size) < 1):
        raise ConfigError(f'dataset.image_size: expected [height, width], got {ds.image_size}')
    for key in ('mean', 'std'):
        v = getattr(ds, key)
        if v is not None and len(v) not in (1, 3):
            raise ConfigError(f'dataset.{key}: expected 1 or 3 values (one per channel), got {v}')
    given = [k for k, on in (('image_folder', ds.image_folder),
                             ('train_list', ds.train_list or ds.test_list or ds.list_root),
                             ('tfrecord_train', ds.tfrecord_train or ds.tfrecord_test)) if on]
    if len(given) > 1:
        raise ConfigError(f'dataset.{given[1]}: give one source of images; dataset.{given[0]} '
                          f'is set too')
    if not given and not ds.name:
        raise ConfigError('dataset.name: give a TensorFlow Datasets name, dataset.image_folder, list '
                          'files (train_list, test_list) or TFRecords (tfrecord_train, tfrecord_test)')
    for a, b in (('train_list', 'test_list'), ('tfrecord_train', 'tfrecord_test')):
        if bool(getattr(ds, a)) != bool(getattr(ds, b)):
            missing = b if getattr(ds, a) else a
            raise ConfigError(f'dataset.{missing}: needed with dataset.{a if missing == b else b}')
    if ds.list_root and not ds.train_list:
        raise ConfigError('dataset.train_list: list_root needs the list files train_list and test_list')
    if ds.tfrecord_train and not ds.num_classes and not ds.class_names_file:
        raise ConfigError('dataset.num_classes: TFRecords need the number of classes (or '
                          'dataset.class_names_file)')


def run_name_problem(name):
    """Why `name` cannot name a run directory under logdir, or None. A run name is a name,
    not a path: plain parts joined by '/', none empty, '.', '..' or hidden (a leading '.'
    is the runner's own: .lock, .workers), so every run directory is inside logdir."""
    if not re.fullmatch(r'[\w.+=-]+(/[\w.+=-]+)*', name):
        return ("is not a usable directory name (letters, digits, . _ - + = and / only, no "
                "empty part, not absolute)")
    if any(part.startswith('.') for part in name.split('/')):
        return "has a part that is '.', '..' or starts with '.'; a run name is a name, not a path"
    return None


def _non_finite(value, key=''):
    """(dotted key, value) of the first NaN or infinity in a nested mapping or list, or None."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        sub = f'{key}.{k}' if isinstance(k, str) else f'{key}[{k}]'
        if isinstance(v, float) and not math.isfinite(v):
            return sub.lstrip('.'), v
        found = _non_finite(v, sub)
        if found:
            return found
    return None


def optimizer_setting(tp, key):
    """The value of an optimizer-specific key for tp.optimizer: as given, else its default."""
    value = getattr(tp, key)
    return OPTIMIZER_DEFAULTS[key].get(tp.optimizer) if value is None else value


def uses_sgd(tp):
    """Whether SGD updates the non-Muon variables: momentum, nesterov, bn_bias_lr_multiplier
    and the L2 weight decay of the model apply."""
    return tp.optimizer == 'sgd' or (tp.optimizer == 'muon' and optimizer_setting(tp, 'muon_other') == 'sgd')


def _check_optimizer(tp):
    """No key the optimizer does not read (its name and its own keys' ranges are the
    schema's: _check_fields)."""
    for key, readers in OPTIMIZER_DEFAULTS.items():
        if getattr(tp, key) is not None and tp.optimizer not in readers:
            raise ConfigError(f'train_parameters.{key}: optimizer {tp.optimizer} does not read it '
                              f'(only {", ".join(readers)})')
    if tp.optimizer == 'muon' and uses_sgd(tp):
        for key in ('beta_1', 'beta_2', 'epsilon'):
            if getattr(tp, key) is not None:
                raise ConfigError(f'train_parameters.{key}: muon with muon_other: sgd does not read '
                                  f'it (its non-Muon part is SGD)')
    if not uses_sgd(tp):
        # momentum and nesterov have SGD's defaults; another value is a mistake.
        for key in ('momentum', 'nesterov', 'bn_bias_lr_multiplier'):
            if getattr(tp, key) != _default(_fields(TrainConfig)[key]):
                why = ('a larger gradient is not a larger step for an Adam-type update'
                       if key == 'bn_bias_lr_multiplier' else 'SGD\'s')
                raise ConfigError(f'train_parameters.{key}: optimizer {tp.optimizer}'
                                  f"{' (muon_other: adamw)' if tp.optimizer == 'muon' else ''} does "
                                  f'not read it ({why}); remove it')


def set_dotted(data, dotted, value):
    """Apply `--set a.b.c=value` to a raw experiment mapping."""
    keys = dotted.split('.')
    node = data
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:i + 1])}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(items):
    """['a.b=1', ...] -> [('a.b', 1), ...]."""
    out = []
    for item in items or []:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. train_parameters.batch_size=64")
        out.append((key.strip(), yaml_value(text)))
    return out


def experiment_from_dict(data, source='<string>', index=0):
    """Validate one raw document into an Experiment; errors name source, position and key."""
    name = None
    if isinstance(data, dict):
        tp = data.get('train_parameters')
        name = (tp or {}).get('run_name') if isinstance(tp, dict) else None
        name = name or data.get('model')
    label = f'{source}: experiment {index + 1}' + (f' ({name})' if name else '')
    if not isinstance(data, dict):
        raise ConfigError(f'{label}: expected a mapping of keys, got {_describe(data)}')
    data = copy.deepcopy(data)
    try:
        exp = _build(Experiment, data)
        exp.source, exp.index = source, index
        _check_values(exp)
    except ConfigError as e:
        raise ConfigError(f'{label}: {e}') from None
    return exp


def _format_value(value):
    if isinstance(value, list):
        return 'x'.join(_format_value(v) for v in value)
    if isinstance(value, float):
        return f'{value:g}'
    return re.sub(r'[^\w.+=-]', '', str(value))


def expand(data, overrides=()):
    """A document with `grid` and/or `repeats` -> the plain documents it stands for."""
    if not isinstance(data, dict):
        return [data]
    data = copy.deepcopy(data)
    # Before expanding: the seeds and names of the runs follow an overridden seed or
    # run_name, and --set may change the sweep itself.
    for key, value in overrides:
        set_dotted(data, key, value)
    grid = data.pop('grid', None) or {}
    repeats = data.pop('repeats', 1)
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError('grid: expected a mapping of dotted keys to non-empty lists of values, '
                          'e.g. {model_parameters.depth: [20, 56]}')
    swept = [key for key, _ in overrides if key in grid]
    if swept:
        raise ConfigError(f"--set {swept[0]}: the grid sweeps this key, so every run would get the "
                          f"same value under a name that says otherwise; change the grid instead "
                          f"(--set 'grid={{{swept[0]}: [...]}}')")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f'repeats: expected a whole number of at least 1, got {_describe(repeats)}')
    if not grid and repeats == 1:
        return [data]
    tp = data.get('train_parameters') if isinstance(data.get('train_parameters'), dict) else {}
    base = tp.get('run_name') or data.get('model') or 'run'
    base_seed = tp.get('seed', 0) if isinstance(tp.get('seed', 0), int) else 0
    docs = []
    for combo in itertools.product(*grid.values()):
        doc = copy.deepcopy(data)
        parts = [base]
        for key, value in zip(grid, combo):
            try:
                set_dotted(doc, key, value)
            except ConfigError as e:
                raise ConfigError(f'grid: {e}'.replace('--set ', '')) from None
            parts.append(f"{key.split('.')[-1]}-{_format_value(value)}")
        name = '_'.join(parts)
        for k in range(repeats):
            one = copy.deepcopy(doc)
            set_dotted(one, 'train_parameters.run_name', f'{name}/seed{k}' if repeats > 1 else name)
            if repeats > 1:
                set_dotted(one, 'train_parameters.seed', base_seed + k)
            docs.append(one)
    return docs


# An experiment file is a few kilobytes (the largest shipped one is 6 KB); a file far larger
# is a mistake (a data file named by accident), and PyYAML's pure-Python parser would take
# minutes and gigabytes over it before any key could be checked.
MAX_FILE_BYTES = 1 << 20


def read_text(path):
    """The text of an experiment file: ConfigError for a file that is unreadable, too large or
    not UTF-8 (with the byte's position, line and column)."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f'{path}: cannot read: {e.strerror}') from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f'{path}: larger than {MAX_FILE_BYTES // 1024} KiB; an experiment file '
                          f'is a few kilobytes of YAML')
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        column = e.start - (raw.rfind(b'\n', 0, e.start) + 1) + 1
        raise ConfigError(f'{path}:{line}:{column}: not UTF-8 text: byte 0x{raw[e.start]:02x} at byte '
                          f'position {e.start}; save the file as UTF-8') from None


def check_keys(data):
    """Unknown keys of a raw experiment, at the top and in each section, refused by their names
    alone: before expand copies the document or any value is walked."""
    if not isinstance(data, dict):
        return
    known = list(_fields(Experiment)) + ['grid', 'repeats']
    for key, value in data.items():
        if not isinstance(key, str) or key not in known:
            raise _unknown_key(str(key), '', list(_fields(Experiment)))
        if key in _SECTIONS and isinstance(value, dict):
            fields = list(_fields(_SECTIONS[key]))
            for sub in value:
                if not isinstance(sub, str) or sub not in fields:
                    raise _unknown_key(str(sub), key + '.', fields)


def load_experiments(path, overrides=(), docs=None):
    """All experiments of one file (of its documents numbered in `docs`, from 0, when given),
    validated (schema only; see runner.registry for models)."""
    text = read_text(path)
    wanted = docs
    parsed = [d for d in parse_yaml(text, path) if d is not None]
    if not parsed:
        raise ConfigError(f'{path}: no experiments in this file')

    def one(i):
        try:
            check_keys(parsed[i])
            expanded = expand(parsed[i], overrides)
        except ConfigError as e:
            raise ConfigError(f'{path}: experiment {i + 1}: {e}') from None
        return collect_errors(expanded, lambda d: experiment_from_dict(d, path, i))
    numbers = [i for i in range(len(parsed)) if wanted is None or i in wanted]
    return [e for exps in collect_errors(numbers, one) for e in exps]


def check_unique_run_names(experiments):
    """Two experiments may not share a run directory, by whatever spelling of logdir or
    symbolic link they reach it, nor may one run's directory hold another's (a --restart
    of the outer one would carry the inner one away)."""
    seen = {}
    for exp in experiments:
        key = os.path.realpath(RunDir.of(exp))
        if key in seen:
            same = '' if seen[key].run_name == exp.run_name else f' (both are {key})'
            raise ConfigError(f"{exp.label}: train_parameters.run_name: '{exp.run_name}' is also "
                              f"the run name of {seen[key].label}{same}; run names must be unique")
        for other, first in seen.items():
            outer, inner = (other, key) if len(other) < len(key) else (key, other)
            if inner.startswith(outer + os.sep):
                raise ConfigError(f"{exp.label}: train_parameters.run_name: '{exp.run_name}' and "
                                  f"'{first.run_name}' of {first.label}: one run directory would "
                                  f"hold the other ({inner})")
        seen[key] = exp


class KeyInfo(typing.NamedTuple):
    """One row of the YAML reference."""
    key: str            # dotted: dataset.name
    type: str           # 'section' for a section
    default: str        # as YAML
    doc: str
    allowed: str = ''   # the choices or the range of numbers
    resumable: bool = False  # may change when a run is resumed


def reference():
    """The YAML reference: a KeyInfo for every key and section, in the schema's order."""
    rows = []

    def walk(cls, prefix):
        for name, f in _fields(cls).items():
            meta = f.metadata
            if dataclasses.is_dataclass(f.type):
                rows.append(KeyInfo(prefix + name, 'section', '', meta.get('doc', ''),
                                    resumable=resumable(prefix + name)))
                walk(f.type, prefix + name + '.')
                continue
            default = _default(f)
            default = '(required)' if default is dataclasses.MISSING else default
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()
            within = meta.get('within')
            allowed = (', '.join(meta['choices']) if meta.get('choices') else
                       ('each ' if _type_name(f.type).startswith('list') else '') + str(within)
                       if within else '')
            rows.append(KeyInfo(prefix + name, _type_name(f.type), shown, meta.get('doc', ''),
                                allowed, bool(meta.get('resumable'))))
    walk(Experiment, '')
    return rows


def schema_field(dotted):
    """The schema field of a dotted key (of a key inside a mapping such as model_parameters:
    that mapping's field; of a section: its field), or None for a key the schema lacks."""
    cls, f = Experiment, None
    for part in dotted.split('.'):
        if not dataclasses.is_dataclass(cls):
            return f  # a key inside a mapping
        if part not in _fields(cls):
            return None
        f = _fields(cls)[part]
        cls = f.type
    return f


def resumable(dotted):
    """May this key (a section: each of its keys) change when a run is resumed?"""
    f = schema_field(dotted)
    if f is None:
        return False
    if dataclasses.is_dataclass(f.type):
        return all(resumable(f'{dotted}.{name}') for name in _fields(f.type))
    return bool(f.metadata.get('resumable'))


def recorded_value(dotted, value):
    """A value of a run's config.yaml as the schema reads it now: a null where the default
    has since been written into the schema is that default."""
    f = schema_field(dotted)
    if value is None and f is not None and f.metadata.get('null_is_default'):
        return _default(f)
    return value
