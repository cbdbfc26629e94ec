"""The schema of an experiment file: every key once, with its type, default and meaning.

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
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union




DISTRIBUTIONS = ('auto', 'none', 'mirrored', 'multi_worker', 'tpu')
PRECISIONS = ('auto', 'fastest', 'float32', 'mixed_bfloat16', 'mixed_float16')
LR_SCHEDULES = ('piecewise', 'linear', 'cosine', 'piecewise_linear')
# Test-time augmentation modes (runner.training.tta holds their views).
TTA_MODES = ('none', 'flip', 'flip_translate', '10crop')
# The modes training's periodic and final evaluations may use. Not 10crop: those
# evaluations read model-size batches from the training's input pipeline, while 10crop of an
# imagenet-style run crops the image resized whole (which only `evaluate` reads), and its
# ten views would make every evaluation during training ten times as long.
EVAL_TTA = tuple(m for m in TTA_MODES if m != '10crop')
CROP_PADDING_MODES = ('zeros', 'reflect')
PREPROCESSING = ('auto', 'cifar', 'imagenet')
AUTOAUGMENT_POLICIES = ('cifar10', 'imagenet')  # runner.data.autoaugment.POLICIES holds them
MEAN_STD_PRESETS = ('imagenet', 'cifar10', 'cifar100')  # runner.data.loader.MEAN_STD holds their values
OPTIMIZERS = ('sgd', 'adamw', 'lion', 'lamb', 'muon')
MUON_OTHER = ('adamw', 'sgd')
SEARCH_SAMPLERS = ('tpe', 'random', 'cmaes')  # Optuna's; runner.search.study builds them
SEARCH_PRUNERS = ('none', 'median', 'successive_halving', 'hyperband')
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

# Limits, refused at validation instead of failing hours later (docs/runs.md, "Limits"):
# a step count or step number (a billion steps is years of training; a larger number is a
# typo), any other integer key (TensorFlow sizes are int32), and the runs one document may
# expand into through grid x repeats.
MAX_STEPS = 10**9
STEP_RANGE = f'[1, {MAX_STEPS}]'     # an interval or a step count
STEP_NUMBER = f'[0, {MAX_STEPS}]'    # a step number, 0 the start
MAX_INTEGER = 2**31 - 1
MAX_RUNS_PER_DOCUMENT = 1000


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
            return f"be {'greater than' if self.low_open else 'at least'} {_number(self.low)}"
        return (f"be in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")

    def __str__(self):
        """As the reference shows it: '> 0', '>= 1', '[0, 1)'."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return self.rule().removeprefix('be in ')


def _number(x):
    """A bound as written: 1000000000 rather than 1e+09, 0.5 and 1e-07 as %g writes them."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f'{x:g}'


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
    download: bool = _doc(
        'Let TFDS download and prepare the dataset once if it is not in data_dir (before the smoke run); '
        'false: only a prepared copy is read.', resumable=True, default=True)
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
    autoaugment: Optional[str] = _doc(
        'AutoAugment policy after flips and crops (Cubuk et al. 2019, arXiv:1805.09501): cifar10 '
        '(the paper\'s 25 CIFAR-10 sub-policies) or imagenet (its ImageNet policy); each image '
        'gets one sub-policy drawn at random. null = off. See docs/techniques.md.',
        choices=AUTOAUGMENT_POLICIES, default=None)
    randaugment_ops: int = _doc(
        'RandAugment (Cubuk et al. 2020, arXiv:1909.13719): N, the operations applied to each '
        'image after flips and crops, drawn uniformly from the paper\'s 14; 0 = off.',
        within='[0, inf)', default=0)
    randaugment_magnitude: float = _doc(
        'RandAugment\'s M, the strength of every operation on AutoAugment\'s scale of 0 to 10 '
        '(10: rotate 30 degrees, shear 0.3, translate 10/32 of the side, ...).',
        within='[0, 30]', default=9.0)
    cutout_size: int = _doc(
        'Cutout (DeVries & Taylor 2017, arXiv:1708.04552): side in pixels of the squares set to '
        'the mean colour, centred anywhere in the image and clipped at its border (the paper: 16 '
        'for CIFAR-10, 8 for CIFAR-100); 0 = off.', within='[0, inf)', default=0)
    cutout_count: int = _doc('Cutout: squares per image.', within='[1, inf)', default=1)
    random_erasing_prob: float = _doc(
        'Random erasing (Zhong et al. 2020, arXiv:1708.04896): the probability that an image gets '
        'a rectangle of random pixel values (the paper: 0.5); 0 = off.', within='[0, 1]', default=0.0)
    random_erasing_area: List[float] = _doc(
        'Random erasing: [smallest, largest] area of the rectangle as a fraction of the image.',
        within='(0, 1)', default_factory=lambda: [0.02, 0.4])
    random_erasing_ratio: float = _doc(
        'Random erasing: the rectangle\'s aspect ratio is uniform in [r, 1/r].', within='(0, 1]',
        default=0.3)
    mixup_alpha: float = _doc(
        'mixup (Zhang et al. 2018, arXiv:1710.09412): each batch becomes lambda x batch + (1 - '
        'lambda) x the batch shuffled, labels alike, lambda ~ Beta(alpha, alpha) (the paper: 1 on '
        'CIFAR); 0 = off. The loss takes the mixed labels.', within='[0, inf)', default=0.0)
    cutmix_alpha: float = _doc(
        'CutMix (Yun et al. 2019, arXiv:1905.04899): a box of area 1 - lambda from the batch '
        'shuffled is pasted into each image, labels mixed by area, lambda ~ Beta(alpha, alpha) '
        '(the paper: 1); 0 = off.', within='[0, inf)', default=0.0)
    mix_prob: float = _doc(
        'With mixup or CutMix: the probability that a batch is mixed (CutMix\'s CIFAR runs: 0.5).',
        within='[0, 1]', default=1.0)
    mix_switch_prob: float = _doc(
        'With both mixup and CutMix: the probability that a mixed batch gets CutMix rather than '
        'mixup (timm\'s switch_prob).', within='[0, 1]', default=0.5)
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


# The dataset keys that decide which images, labels and pixels a split read has (not where
# the data is stored once read, nor training's augmentation or normalisation): runs equal in
# these read the same split, so `evaluate` shares one copy of it and `stats` one result.
IMAGE_KEYS = ('name', 'image_folder', 'data_dir', 'train_split', 'test_split', 'validation_fraction',
              'list_root', 'train_list', 'test_list', 'tfrecord_train', 'tfrecord_test',
              'tfrecord_image_key', 'tfrecord_label_key', 'label_offset', 'image_size', 'preprocessing')


@dataclass
class TrainConfig:
    logdir: str = _doc('Directory that holds one sub-directory per run.', resumable=True, default='logs')
    run_name: Optional[str] = _doc(
        'Name of the run directory and TensorBoard run (default: the model name).', default=None)
    log_interval: int = _doc('Steps between training-metric logs.', within=STEP_RANGE, resumable=True, default=400)
    val_interval: int = _doc('Steps between evaluations (and checkpoints).', within=STEP_RANGE, resumable=True, default=4000)
    checkpoint_interval: int = _doc(
        'Steps between checkpoints (also saved at every evaluation and at the end).', within=STEP_RANGE, resumable=True, default=1000)
    keep_checkpoints: int = _doc('How many recent checkpoints to keep.', within='[1, inf)', resumable=True, default=3)
    batch_size: int = _doc('Global training batch size.', within='[1, inf)', default=128)
    eval_batch_size: int = _doc('Batch size for evaluation.', within='[1, inf)', resumable=True, default=500)
    lr_values: List[float] = _doc(
        'Learning rate for each piece of the schedule.', within='[0, inf)', default_factory=lambda: [0.01, 0.1, 0.01, 0.001])
    lr_boundaries: List[int] = _doc(
        'End step of each piece (steps; same length as lr_values); the last one is the total '
        'number of training steps. For piecewise_linear, the step of each knot, the first 0.',
        within=STEP_NUMBER, default_factory=lambda: [400, 32000, 48000, 64000])
    lr_schedule: str = _doc(
        'piecewise (lr_values between lr_boundaries), linear or cosine (warm-up, then from '
        'lr_values[0] down to 0 at the last boundary; give one value and one boundary), or '
        'piecewise_linear (lr_values[i] at step lr_boundaries[i], straight lines between).',
        choices=LR_SCHEDULES, default='piecewise')
    warmup_steps: int = _doc(
        'Linear warm-up from 0 to the scheduled rate over this many steps (0 = none).', within=STEP_NUMBER,
        default=0)
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
        'cifar_resnet9); null keeps the model\'s own default, its paper\'s (1e-4 or 5e-4: `python -m runner zoo`). adamw, lion, '
        'lamb, muon: decoupled, w -= lr * weight_decay * w each step on the same weights, nothing '
        'in the loss; null = 0.004 (adamw, muon) or 0 (lion, lamb). See docs/optimizers.md.',
        within='[0, inf)', default=None)
    label_smoothing: float = _doc('Label smoothing of the cross-entropy.', within='[0, 1)', default=0.0)
    clip_grad_norm: Optional[float] = _doc(
        'Clip the gradient to this global norm before each update (Keras\' global_clipnorm; '
        'Pascanu et al. 2013); null = off.', within='(0, inf)', default=None)
    gradient_accumulation_steps: int = _doc(
        'Each step averages the gradients of this many batches of batch_size before one update '
        '(Keras\' gradient_accumulation_steps): the effective batch is their product, and steps, '
        'lr_boundaries and every interval count updates. 1 = off.', within='[1, inf)', default=1)
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
        within=STEP_RANGE, default=None)
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
        within=STEP_RANGE, resumable=True, default=None)
    seed: int = _doc('Seed for weights, shuffling and augmentation.',
                     within=f'[0, {MAX_INTEGER}]', default=0)
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
class SearchConfig:
    trials: int = _doc('Trials of the whole study, across every process that shares it.',
                       within='[1, inf)', default=20)
    sampler: str = _doc(
        "Optuna's sampler, seeded from train_parameters.seed: tpe (Bergstra et al. 2011), random "
        'or cmaes (Hansen 2016; {choices} keys sampled at random). Every point of a grid: `grid`.',
        choices=SEARCH_SAMPLERS, default='tpe')
    pruner: str = _doc(
        'What stops a trial whose validation error lags, at its evaluations: median (the median '
        'stopping rule), successive_halving, hyperband (both from val_interval steps up), or none.',
        choices=SEARCH_PRUNERS, default='median')
    startup_trials: int = _doc(
        'Trials that are never pruned and, with tpe and cmaes, sampled at random, before the '
        "pruner and the sampler use what the earlier trials found (Optuna's n_startup_trials).",
        within='[0, inf)', default=5)
    storage: Optional[str] = _doc(
        "Where the study is: null = Optuna's journal file <logdir>/<run_name>/study.journal (safe "
        'on NFS and Lustre); or a database URL, e.g. postgresql://user@host:5432/db (pip install '
        '"convnet-runner[postgres]"). See docs/search.md.', default=None)
    space: Dict[str, Any] = _doc(
        'What to search: {dotted key: {low, high, log, step} or {choices: [..]}}, keys as --set '
        'names them, an item of a list by its index (train_parameters.lr_values[0]). Integers '
        'when the key is an integer one or low, high and step are whole numbers. Empty = no search.',
        default_factory=dict)


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
    search: SearchConfig = _doc(
        'Hyperparameter search over a shared Optuna study: trial k is the run <run_name>/trial<k>, '
        'tuned on the validation split (dataset.validation_fraction), pruned as it goes. With '
        'grid, each point of the grid is a search of its own; not with repeats. docs/search.md.',
        default_factory=SearchConfig)

    # Set by the loader, not by the file.
    source: str = field(default='<string>', metadata={'internal': True})
    index: int = field(default=0, metadata={'internal': True})
    # A trial of a search: the values sampled for it ({dotted key: value}; runner.search).
    trial_values: Dict[str, Any] = field(default_factory=dict, metadata={'internal': True})

    @property
    def run_name(self):
        return self.train_parameters.run_name or self.model

    @property
    def position(self):
        """Its file and place in it: what every label of it, and of its trials, begins with."""
        return f"{self.source}: experiment {self.index + 1}"

    @property
    def label(self):
        """How errors name this experiment: file, position and run name."""
        return f"{self.position} ({self.run_name})"

    @property
    def total_steps(self):
        tp = self.train_parameters
        return tp.steps if tp.steps is not None else tp.lr_boundaries[-1]

    def to_dict(self):
        d = dataclasses.asdict(self)
        for key in ('source', 'index', 'repeats', 'grid', 'search', 'trial_values'):  # not the run's own
            d.pop(key)
        return d



def schema_fields(cls):
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get('internal')}


def default_of(f):
    """The default of a schema field, or dataclasses.MISSING for a required one."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def nullable(tp):
    return typing.get_origin(tp) is Union and type(None) in typing.get_args(tp)


def type_name(tp):
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return ' or '.join(type_name(a) for a in args) + ' or null'
    if origin in (list, List):
        return f'list of {type_name(typing.get_args(tp)[0])}'
    if origin in (dict, Dict):
        return 'mapping'
    return {int: 'integer', float: 'number', bool: 'true/false', str: 'string'}.get(tp, tp.__name__)


def optimizer_setting(tp, key):
    """The value of an optimizer-specific key for tp.optimizer: as given, else its default."""
    value = getattr(tp, key)
    return OPTIMIZER_DEFAULTS[key].get(tp.optimizer) if value is None else value


def uses_sgd(tp):
    """Whether SGD updates the non-Muon variables: momentum, nesterov, bn_bias_lr_multiplier
    and the L2 weight decay of the model apply."""
    return tp.optimizer == 'sgd' or (tp.optimizer == 'muon' and optimizer_setting(tp, 'muon_other') == 'sgd')
