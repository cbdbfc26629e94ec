"""The model registry: every model of the zoo with its metadata, written once.

After timm's ``@register_model`` and ``default_cfgs`` (huggingface/pytorch-image-models,
timm/models/_registry.py): ``default_cfgs`` holds, per model name, its family module,
native input size, default weight decay, trainable parameter count, paper, paper error,
and the results this project's recipes reached; a family module registers the function
that builds each model, either a function of its own (``@register_model``) or one made
from a row of its ``SPECS`` table (:func:`variants`), whose defaults come from here.

This module imports neither Keras nor TensorFlow: ``--list``, the README's model table
(``python -m runner zoo``) and the seed runner's names read it without building a model.
"""
import dataclasses
import importlib
import inspect
import sys
from typing import Optional

CIFAR, IMAGENET = (32, 32, 3), (224, 224, 3)
# Options that change no trainable weight: dropout and stochastic depth's drop_path_rate have
# none, fused_norm computes the same batch norm, decay_all only adds regularisers (models/layers.py).
COUNT_NEUTRAL = ('dropout', 'drop_path_rate', 'fused_norm', 'decay_all')
_DROP_PATH = (('drop_path_rate', 0.0),)


@dataclasses.dataclass(frozen=True)
class Result:
    """A full run of a recipe in experiments/ and the commit of the recipe it ran."""
    error: float        # test top-1 error, %
    recipe: str         # the experiment file, e.g. 'experiments/cifar10_fast.yaml'
    run: str            # its run_name there
    commit: str         # `git log --oneline -- <recipe>`: the recipe as the run trained it
    note: str = ''      # what the reader needs besides (epochs, data)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A paper figure for the model with other parameters or another recipe than its own."""
    parameters: str     # what differs, as the table shows it: '`block_type: preactivated`', '+ Cutout'
    paper: str
    paper_error: float
    params: Optional[int] = None  # trainable weights at the native size, when they differ


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """One model's metadata (timm's default_cfg)."""
    family: str                          # its module in models/
    title: str                           # what it is, for its docstring
    input_size: tuple = CIFAR            # native (height, width, channels)
    weight_decay: float = 1e-4           # the paper's SGD coefficient, the function's default
    params: Optional[tuple] = None       # trainable weights at input_size for (10, 1000) classes;
                                         # None for a family function sized by its arguments
    options: tuple = ()                  # (keyword, default) of the family's other arguments
    paper: str = ''
    paper_error: Optional[float] = None  # top-1 test error (%) the paper gives for it
    paper_note: str = ''
    results: tuple = ()                  # Results of this project
    row: str = ''                        # the README table row it shares (family, paper)
    count_neutral: tuple = COUNT_NEUTRAL  # options that never change the trainable count
    size_free: bool = True               # the count does not depend on the input's height and width
    required: tuple = ()                 # a family function's arguments without default
    aliases: tuple = ()                  # the seed runner's names for it
    variants: tuple = ()                 # Variants

    @property
    def num_classes(self):
        return 1000 if self.input_size == IMAGENET else 10

    @property
    def native_params(self):
        """The trainable count at the native input size and class count."""
        return self.params[0 if self.num_classes == 10 else 1]


def _row(family, row, **common):
    """A cfg factory for the models of one README row (common fields given once)."""
    def cfg(title, **fields):
        return ModelCfg(family=family, title=title, row=row, **{**common, **fields})
    return cfg


_RESNET_OPTIONS = (('block_type', 'original'), ('shortcut_type', 'A')) + _DROP_PATH
_resnet = _row('resnet', 'cifar_resnet', paper='He et al. 2015', options=_RESNET_OPTIONS,
               # with option-A shortcuts the unit types have the same weights: v1's BNs follow the
               # stem and every conv, v2's precede every conv and follow the last: equal widths
               count_neutral=COUNT_NEUTRAL + ('block_type',))
_preact = _row('resnet', 'preact', paper='He et al. 2016',
               options=(('block_type', 'preactivated'), ('shortcut_type', 'B')) + _DROP_PATH)
_wrn = _row('resnet', 'wrn', paper='Zagoruyko & Komodakis 2016', weight_decay=5e-4,
            options=(('dropout', 0.0), ('decay_all', True)) + _DROP_PATH)
_resnext = _row('resnet', 'resnext', paper='Xie et al. 2017', weight_decay=5e-4,
                options=(('decay_all', True),) + _DROP_PATH)
_imagenet = _row('resnet', 'imagenet_resnet', input_size=IMAGENET, options=_DROP_PATH)
_densenet = _row('densenet', 'densenet', paper='Huang et al. 2017',
                 options=(('dropout', 0.0), ('decay_all', True)))
_vgg = _row('vgg', 'vgg', paper='seed 001', weight_decay=5e-4)
_alexnet = _row('alexnet', 'alexnet', input_size=IMAGENET, weight_decay=5e-4, size_free=False)
_fast = _row('fast', 'fast', weight_decay=5e-4)

_FAST_MUON = Result(9.32, 'experiments/cifar10_fast_muon.yaml', 'cifar10_fast_muon', '2294977',
                    '8 epochs, JPEG copy')
_FAST_90 = Result(9.36, 'experiments/cifar10_fast.yaml', 'cifar10_fast_90', '3fbe116',
                  '9.9 epochs, JPEG copy')

default_cfgs = {
    'cifar_resnet': _resnet('CIFAR ResNet of any depth', params=None, required=('depth',),
                            options=(('bottleneck', False),) + _RESNET_OPTIONS),
    'cifar_resnet20': _resnet('ResNet-20 for CIFAR', params=(269_722, 334_072), paper_error=8.75),
    'cifar_resnet32': _resnet('ResNet-32 for CIFAR', params=(464_154, 528_504), paper_error=7.51),
    'cifar_resnet44': _resnet('ResNet-44 for CIFAR', params=(658_586, 722_936), paper_error=7.17),
    'cifar_resnet56': _resnet('ResNet-56 for CIFAR', params=(853_018, 917_368), paper_error=6.97),
    'cifar_resnet110': _resnet(
        'ResNet-110 for CIFAR', params=(1_727_962, 1_792_312), paper_error=6.43,
        paper_note='best run; mean 6.61',
        variants=(Variant('`block_type: preactivated`', 'He et al. 2016', 6.37),
                  Variant('+ stochastic depth, `drop_path_rate: 0.5`', 'Huang et al. 2016', 5.25))),
    'cifar_resnet164': _preact('ResNet-164, pre-activation bottleneck units',
                               params=(1_703_258, 1_957_688), paper_error=5.46),
    'cifar_resnet1001': _preact('ResNet-1001, pre-activation bottleneck units',
                                params=(10_327_706, 10_582_136), paper_error=4.92),
    'cifar_wide_resnet': _wrn('Wide ResNet WRN-depth-width', params=None, required=('depth', 'width')),
    'cifar_WRN_16_4': _wrn('WRN-16-4', params=(2_748_890, 3_003_320), aliases=('WRN_16_4',)),
    'cifar_WRN_16_8': _wrn('WRN-16-8', params=(10_961_370, 11_469_240), paper_error=4.27,
                           aliases=('WRN_16_8',)),
    'cifar_WRN_28_10': _wrn('WRN-28-10', params=(36_479_194, 37_113_784), paper_error=3.89,
                            paper_note='dropout 0.3', aliases=('WRN_28_10',),
                            variants=(Variant('+ Cutout', 'DeVries & Taylor 2017', 3.08),
                                      Variant('+ AutoAugment', 'Cubuk et al. 2019', 2.6),
                                      Variant('+ RandAugment', 'Cubuk et al. 2020', 2.7))),
    'cifar_WRN_40_4': _wrn('WRN-40-4', params=(8_949_210, 9_203_640), paper_error=4.53,
                           aliases=('WRN_40_4',)),
    'cifar_preact_resnet18': ModelCfg(
        'resnet', "PreAct ResNet-18 of mixup's CIFAR code", params=(11_171_274, 11_679_144),
        options=(('decay_all', True),) + _DROP_PATH, paper='Zhang et al. 2018', paper_error=4.2,
        paper_note='with mixup, `mixup_alpha: 1`', row='preact_resnet18'),
    'cifar_resnext': _resnext('CIFAR ResNeXt-depth (cardinality x base_width d)', params=None,
                              required=('depth', 'cardinality', 'base_width')),
    'cifar_resnext29_8x64d': _resnext('ResNeXt-29 8x64d for CIFAR', params=(34_426_698, 35_441_448),
                                      paper_error=3.65),
    'cifar_resnext29_16x64d': _resnext('ResNeXt-29 16x64d for CIFAR',
                                       params=(68_155_210, 69_169_960), paper_error=3.58,
                                       paper_note='both pre-activation, batch 256: see the recipe'),
    'resnet50': _imagenet('ResNet-50 v1', params=(23_528_522, 25_557_032), paper='He et al. 2015',
                          paper_error=22.85, paper_note='10-crop'),
    'resnet50_v2': _imagenet('ResNet-50 v2, pre-activation units', params=(23_539_850, 25_568_360),
                             paper='He et al. 2016'),
    'se_resnet50': _imagenet('SE-ResNet-50, squeeze-excitation with reduction 16',
                             params=(26_059_514, 28_088_024), paper='Hu et al. 2018',
                             paper_error=23.29),
    'densenet': _densenet('DenseNet of depth and growth_rate; bottleneck and compression < 1 make it BC',
                          params=None, required=('depth', 'growth_rate')),
    'densenet40_k12': _densenet('DenseNet (L=40, k=12)', params=(1_019_722, 1_464_232),
                                paper_error=5.24),
    'densenet_bc100_k12': _densenet('DenseNet-BC (L=100, k=12)', params=(769_162, 1_108_732),
                                    paper_error=4.51),
    'densenet_bc250_k24': _densenet('DenseNet-BC (L=250, k=24)', params=(15_324_406, 17_042_056),
                                    paper_error=3.62),
    'densenet_bc190_k40': _densenet('DenseNet-BC (L=190, k=40)', params=(25_624_430, 27_793_520),
                                    paper_error=3.46),
    'cifar_vgg11': _vgg('VGG-11 (config A) with BN, global average pooling and one dense layer',
                        params=(9_228_362, 9_736_232), paper_error=7.81),
    'cifar_vgg13': _vgg('VGG-13 (config B) with BN, global average pooling and one dense layer',
                        params=(9_413_066, 9_920_936), paper_error=6.35),
    'cifar_vgg16': _vgg('VGG-16 (config D) with BN, global average pooling and one dense layer',
                        params=(14_724_042, 15_231_912), paper_error=6.49),
    'cifar_vgg19': _vgg('VGG-19 (config E) with BN, global average pooling and one dense layer',
                        params=(20_035_018, 20_542_888), paper_error=6.76),
    'cifar_vgg_bn': ModelCfg('vgg', "Zagoruyko's cifar.torch vgg_bn_drop: VGG-16 convs with BN and "
                             'dropout, 512-wide MLP head', weight_decay=5e-4,
                             params=(14_987_722, 15_495_592), paper='seed 000 (cifar.torch)',
                             paper_error=7.08, row='vgg_bn'),
    'nin_bn': ModelCfg('nin', 'Network in Network with BN after every conv (cifar.torch NiN-BN)',
                       weight_decay=5e-4, params=(968_404, 1_160_464), options=(('dropout', 0.5),),
                       paper='Lin et al. 2013 + BN (seed 000)', paper_error=7.54, row='nin'),
    'alexnet': _alexnet("AlexNet with LRN and the paper's grouped conv2/4/5",
                        params=(56_909_194, 60_965_224), paper='Krizhevsky et al. 2012',
                        paper_error=40.7, paper_note='10-crop'),
    'alexnet_bn': _alexnet('AlexNet with BN after every conv instead of LRN',
                           params=(56_910_570, 60_966_600), paper='Krizhevsky et al. 2012'),
    'zfnet_bn': _alexnet('ZFNet with BN after every conv', params=(58_302_954, 62_358_984),
                         paper='Zeiler & Fergus 2014'),
    'cifar_airbench94': _fast(
        "airbench94's network with its frozen patch-whitening first layer",
        params=(1_971_352, 2_224_792),
        options=(('widths', (64, 256, 256)), ('whiten', True), ('decay_all', True),
                 ('fused_norm', False)),
        paper='Jordan 2024', paper_error=5.99, paper_note='9.9 epochs',
        results=(_FAST_MUON, _FAST_90)),
    'cifar_resnet9': _fast("Page's DAWNBench ResNet-9 for CIFAR-10", params=(6_573_120, 7_080_000),
                           options=(('decay_all', True), ('fused_norm', False)),
                           paper='Page 2018', paper_error=6.0, paper_note='24 epochs'),
}

_ALIASES = {alias: name for name, cfg in default_cfgs.items() for alias in cfg.aliases}
# The seed runner's spelling of a model_parameters key (001_bba23ab2ea219f51.txt), accepted
# where the function takes this project's name instead.
SEED_OPTION_NAMES = {'shortcut_mode': 'shortcut_type'}
_ENTRYPOINTS = {}


def canonical_name(name):
    """The zoo's name for `name` (the seed runner's WRN_16_4 is cifar_WRN_16_4), else `name`."""
    return _ALIASES.get(name, name)


def register_model(fn):
    """Decorator: `fn` builds the zoo's model of its name (timm's @register_model)."""
    if fn.__name__ not in default_cfgs:
        raise KeyError(f'{fn.__name__}: no entry in models.zoo.default_cfgs')
    _ENTRYPOINTS[fn.__name__] = fn
    return fn


def variants(specs):
    """{name: model function} for each row of a family's SPECS table, registered: keyword
    arguments input_shape, num_classes, weight_decay and the cfg's options, with the cfg's
    defaults; a call builds ``spec.build(name, input_shape, num_classes, weight_decay, **options)``."""
    return {name: register_model(_variant(name, spec)) for name, spec in specs.items()}


def _variant(name, spec):
    cfg = default_cfgs[name]
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = (('input_shape', cfg.input_size), ('num_classes', cfg.num_classes),
                ('weight_decay', cfg.weight_decay)) + cfg.options
    signature = inspect.Signature([inspect.Parameter(k, keyword, default=v) for k, v in defaults])

    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return spec.build(name, **bound.arguments)
    build.__name__ = build.__qualname__ = name
    build.__module__ = type(spec).__module__
    build.__doc__ = f'{cfg.title} ({cfg.paper or "this project"}, {cfg.native_params / 1e6:.2f}M).'
    build.__signature__ = signature
    return build


def model_function(name):
    """The function that builds the zoo's model `name` (or its seed name), or None."""
    name = canonical_name(name)
    cfg = default_cfgs.get(name)
    if cfg is None:
        return None
    family = importlib.import_module(f'{__package__}.{cfg.family}')
    package = sys.modules[__package__]
    if vars(package).get(name) is family:
        # `alexnet` and `densenet` name a family and its model: importing the family made
        # `models.alexnet` the module; the package's name is the model function, as always.
        setattr(package, name, _ENTRYPOINTS[name])
    return _ENTRYPOINTS[name]


def model_functions():
    """{name: function} of every model of the zoo (imports every family)."""
    return {name: model_function(name) for name in default_cfgs}


def trainable_params(name, num_classes, input_shape=None, model_parameters=None):
    """The model's trainable weight count from its cfg, without building it, or None when
    the cfg cannot tell: an option that changes the weights set to other than its default,
    another number of channels, or another size for a model whose count depends on it.
    The count is affine in the number of classes (the classifier's rows), so the cfg's
    two counts give it for any number."""
    cfg = default_cfgs.get(canonical_name(name))
    if cfg is None or cfg.params is None or not isinstance(num_classes, int):
        return None
    defaults = dict(cfg.options)
    for key, value in (model_parameters or {}).items():
        key = SEED_OPTION_NAMES.get(key, key)
        if key not in defaults:
            return None
        if key not in cfg.count_neutral and _plain(value) != _plain(defaults[key]):
            return None
    if input_shape is not None and tuple(input_shape) != cfg.input_size:
        if input_shape[-1] != cfg.input_size[-1] or not cfg.size_free:
            return None
    p10, p1000 = cfg.params
    per_class, rest = divmod(p1000 - p10, 990)
    return p10 + (num_classes - 10) * per_class if not rest else None


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _millions(n):
    return f'{n / 1e6:.2f}M'


def _decay(value):
    return f'{value:.0e}'.replace('e-0', 'e-')


def _error(value, note=''):
    if value is None:
        return '—'
    return f'{value:g}' + (f' ({note})' if note else '')


def _joined(values):
    """One cell for several models: ' / ' between the values, or the value they share."""
    return values[0] if len(set(values)) == 1 else ' / '.join(values)


def _result_cell(cfg):
    return '; '.join(f'{r.error:g} (`{r.run}`, recipe {r.commit}, {r.note})' for r in cfg.results) or '—'


def table_rows():
    """The README's model table: one row per `row` of default_cfgs (its models' cells joined),
    plus one per Variant; a family function appears as its call in its row's first cell."""
    groups = {}
    for name, cfg in default_cfgs.items():
        groups.setdefault(cfg.row or name, []).append((name, cfg))
    rows = []
    for members in groups.values():
        named = [(n, c) for n, c in members if c.params is not None]
        family_fns = [f'`{n}({", ".join(c.required)})`' for n, c in members if c.params is None]
        rows.append((
            ' / '.join(f'`{n}`' for n, _ in named) + (f' ({", ".join(family_fns)})' if family_fns else ''),
            named[0][1].family,
            _joined(['x'.join(map(str, c.input_size[:2])) for _, c in named]),
            _joined([_millions(c.native_params) for _, c in named]),
            _joined([_decay(c.weight_decay) for _, c in named]),
            _joined([c.paper or '—' for _, c in named]),
            _joined([_error(c.paper_error, c.paper_note) for _, c in named]),
            _joined([_result_cell(c) for _, c in named])))
        for name, cfg in named:
            for v in cfg.variants:
                rows.append((f'`{name}` ({v.parameters})', cfg.family,
                             'x'.join(map(str, cfg.input_size[:2])), _millions(v.params or cfg.native_params),
                             _decay(cfg.weight_decay), v.paper, _error(v.paper_error), '—'))
    return rows


def markdown_table():
    head = ('model', 'module', 'input', 'params', 'weight decay', 'paper', 'paper error (%)',
            'this project (%)')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in table_rows()]
    return '\n'.join(lines) + '\n'
