"""The regularisers an experiment turns on, read from its dataset section (the input ones,
which runner.data.mixing applies) and named in words for logs, TensorBoard and reports.
Free of TensorFlow, so `python -m runner report` reads a run's config.yaml without it."""
import dataclasses
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Regularisers:
    """The input regularisers of a dataset section (runner.config.schema.DatasetConfig, whose
    keys these fields are; docs/techniques.md explains each)."""
    autoaugment: Optional[str] = None
    randaugment_ops: int = 0
    randaugment_magnitude: float = 9.0
    cutout_size: int = 0
    cutout_count: int = 1
    random_erasing_prob: float = 0.0
    random_erasing_area: Tuple[float, float] = (0.02, 0.4)
    random_erasing_ratio: float = 0.3
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5

    @classmethod
    def of(cls, dataset):
        """From a DatasetConfig or a config.yaml's dataset mapping (a key it lacks, as in a run
        from before these keys, is off)."""
        get = dataset.get if isinstance(dataset, dict) else lambda k, d=None: getattr(dataset, k, d)
        values = {f.name: get(f.name) for f in dataclasses.fields(cls) if get(f.name) is not None}
        if 'random_erasing_area' in values:
            values['random_erasing_area'] = tuple(values['random_erasing_area'])
        return cls(**values)

    @property
    def mixing(self):
        """Whether the labels become mixed (soft) targets: mixup or CutMix is on."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def policy(self):
        """Whether an AutoAugment or RandAugment policy is on."""
        return bool(self.autoaugment) or self.randaugment_ops > 0

    def __bool__(self):
        """Whether any is on (all off: the input is exactly what it was without them)."""
        return bool(self.names())

    def names(self):
        """The techniques on, in words, in the order they are applied."""
        out = []
        if self.autoaugment:
            out.append(f'AutoAugment ({self.autoaugment} policy)')
        if self.randaugment_ops:
            out.append(f'RandAugment N={self.randaugment_ops} M={self.randaugment_magnitude:g}')
        if self.cutout_size:
            count = f'{self.cutout_count} x ' if self.cutout_count > 1 else ''
            out.append(f'Cutout {count}{self.cutout_size}px')
        if self.random_erasing_prob:
            out.append(f'random erasing p={self.random_erasing_prob:g}')
        mixes = [f'{name} alpha={a:g}' for name, a in (('mixup', self.mixup_alpha),
                                                        ('CutMix', self.cutmix_alpha)) if a > 0]
        if len(mixes) == 2:
            mixes = [f'{mixes[0]} or {mixes[1]} (CutMix p={self.mix_switch_prob:g})']
        if mixes and self.mix_prob < 1:
            mixes = [f'{mixes[0]} on p={self.mix_prob:g} of batches']
        return out + mixes


def describe(config):
    """Every regulariser of a resolved experiment (a run's config.yaml as a mapping), in
    words: the input ones, then the model's and the optimisation's. [] when none is on."""
    model = config.get('model_parameters') or {}
    tp = config.get('train_parameters') or {}
    out = Regularisers.of(config.get('dataset') or {}).names()
    if model.get('drop_path_rate'):
        out.append(f"stochastic depth {model['drop_path_rate']:g}")
    if model.get('dropout'):
        out.append(f"dropout {model['dropout']:g}")
    if tp.get('label_smoothing'):
        out.append(f"label smoothing {tp['label_smoothing']:g}")
    if tp.get('clip_grad_norm'):
        out.append(f"gradient clipping at norm {tp['clip_grad_norm']:g}")
    if (tp.get('gradient_accumulation_steps') or 1) > 1:
        out.append(f"gradients of {tp['gradient_accumulation_steps']} batches per update")
    return out
