"""The optimizers of `train_parameters.optimizer`, all from keras.optimizers.

- sgd: keras.optimizers.SGD with momentum (Nesterov optional); weight decay is L2 in the
  loss, through the regularisers the model function puts on its weights (the papers' SGD).
- adamw: keras.optimizers.AdamW, Loshchilov & Hutter 2019, "Decoupled Weight Decay
  Regularization" (arXiv:1711.05101).
- lion: keras.optimizers.Lion, Chen et al. 2023, "Symbolic Discovery of Optimization
  Algorithms" (arXiv:2302.06675).
- lamb: keras.optimizers.Lamb, You et al. 2020, "Large Batch Optimization for Deep
  Learning" (arXiv:1904.00962).
- muon: keras.optimizers.Muon (Jordan et al. 2024, github.com/KellerJordan/Muon; Liu et al.
  2025, arXiv:2502.16982), which orthogonalises only 2-D variables, extended as
  airbench94_muon.py (github.com/KellerJordan/cifar10-airbench) does to convolution
  kernels, each flattened to a (kh*kw*in, out) matrix, with airbench's optional weight
  normalisation and an SGD part for the rest.

Weight decay of the decoupled optimizers (adamw, lion, lamb, and muon's Muon and AdamW
parts) is the optimizer's own, w -= lr * weight_decay * w each step with lr the scheduled
rate, on exactly the weights the model function regularises (its kernels; every weight of
a model whose decay_all is on); those regularisers are taken off the model, so nothing of
the decay is in the loss. docs/optimizers.md has the whole story.
"""
import math

import keras
import tensorflow as tf

from runner import compat
from runner.config.schema import DECOUPLED_WEIGHT_DECAY, optimizer_setting, uses_sgd
from runner.training.schedule import PerUpdate


class KernelMuon(keras.optimizers.Muon):
    """Muon on the variables named in `muon_paths` (kernels of any rank >= 2, flattened to
    (prod(shape[:-1]), shape[-1]) for the Newton-Schulz iteration, as airbench flattens a
    conv filter to (out, in*kh*kw): the same matrix up to a transpose and a permutation of
    rows, which orthogonalisation commutes with); the rest by Keras Muon's AdamW step
    (`other='adamw'`) or by the keras.optimizers.SGD momentum step (`other='sgd'`,
    airbench94_muon's Nesterov SGD), at learning_rate * adam_lr_ratio either way."""

    def __init__(self, muon_paths=(), other='adamw', sgd_momentum=0.9, sgd_nesterov=False,
                 normalize_weights=False, **kwargs):
        super().__init__(**kwargs)
        self.muon_paths = frozenset(muon_paths)
        self.other = other
        self.sgd_momentum = sgd_momentum
        self.sgd_nesterov = sgd_nesterov
        self.normalize_weights = normalize_weights

    def _should_use_adamw(self, variable):
        # Keras Muon builds an AdamW velocity for these, and its weight decay of them is
        # adam_weight_decay; SGD variables get neither.
        return self.other == 'adamw' and variable.path not in self.muon_paths

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # update_step gets the backend's variable, without the Keras path: go by index.
        self.uses_muon = [v.path in self.muon_paths for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        if self.uses_muon[compat.variable_index(self, variable)]:
            self._kernel_muon_step(gradient, variable, learning_rate)
        elif self.other == 'adamw':
            super().update_step(gradient, variable, learning_rate)
        else:
            self._sgd_step(gradient, variable, learning_rate * self.adam_lr_ratio)

    def _kernel_muon_step(self, gradient, variable, lr):
        m = self.momentums[compat.variable_index(self, variable)]
        gradient = tf.cast(gradient, variable.dtype)
        # m = momentum * m + g, Nesterov: g + momentum * m (Keras Muon's and airbench's).
        self.assign_add(m, gradient + m * (self.momentum - 1))
        g = gradient + self.momentum * m if self.nesterov else m
        shape = variable.shape
        if self.normalize_weights:
            # airbench94_muon: p *= sqrt(out channels) / ||p||_F before the step.
            self.assign(variable, variable * (math.sqrt(shape[-1]) / tf.norm(variable)))
        matrix = tf.reshape(g, (-1, shape[-1]))
        update = self.lr_adjust(tf.cast(lr, variable.dtype) * self.zeropower_via_newtonschulz5(matrix, self.ns_steps))
        self.assign_sub(variable, tf.reshape(update, shape))

    def _sgd_step(self, gradient, variable, lr):
        # keras.optimizers.SGD's update, momentum and Nesterov as there.
        m = self.momentums[compat.variable_index(self, variable)]
        lr = tf.cast(lr, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        self.assign(m, m * self.sgd_momentum - gradient * lr)
        if self.sgd_nesterov:
            self.assign_add(variable, m * self.sgd_momentum - gradient * lr)
        else:
            self.assign_add(variable, m)

    def get_config(self):
        config = super().get_config()
        config.update({'muon_paths': sorted(self.muon_paths), 'other': self.other,
                       'sgd_momentum': self.sgd_momentum, 'sgd_nesterov': self.sgd_nesterov,
                       'normalize_weights': self.normalize_weights})
        return config


def muon_variables(model):
    """The trainable variables Muon updates: every kernel of rank >= 2 (convolutions, dense
    layers) but the last one, the classifier's (Keras's Muon docs and airbench leave the
    output layer to the other optimizer)."""
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2]
    return kernels[:-1]


def _take_decay_off_the_loss(variables):
    """Remove the L2 regularisers of `variables` (the optimizer decays them instead);
    return those that had one."""
    decayed = [v for v in variables if v.regularizer is not None]
    for v in decayed:
        v.regularizer = None
    return decayed


def build_optimizer(tp, model, schedule):
    """The optimizer of train_parameters `tp` for `model`, not yet built. For the decoupled
    optimizers, the model's weight-decay regularisers are moved into the optimizer.
    Gradient clipping by global norm and gradient accumulation are every Keras optimizer's
    own (`global_clipnorm`, `gradient_accumulation_steps`); with accumulation the schedule
    counts updates (schedule.PerUpdate)."""
    accumulation = tp.gradient_accumulation_steps
    if accumulation > 1:
        schedule = PerUpdate(schedule, accumulation)
    optimizer = _build_optimizer(tp, model, schedule)
    # Set before the optimizer is built, which creates the accumulators.
    optimizer.global_clipnorm = tp.clip_grad_norm
    optimizer.gradient_accumulation_steps = accumulation if accumulation > 1 else None
    return optimizer


def _build_optimizer(tp, model, schedule):
    name = tp.optimizer
    if name == 'sgd':
        return keras.optimizers.SGD(learning_rate=schedule, momentum=tp.momentum, nesterov=tp.nesterov)
    trainable = list(model.trainable_variables)
    decay = DECOUPLED_WEIGHT_DECAY[name] if tp.weight_decay is None else tp.weight_decay

    def setting(key):
        return optimizer_setting(tp, key)
    if name == 'muon':
        muon = muon_variables(model)
        # SGD keeps its L2 in the loss; Muon's and AdamW's decay is the optimizer's.
        own = muon if uses_sgd(tp) else trainable
        decayed = _take_decay_off_the_loss(own)
        rms_rate = setting('muon_rms_rate')
        optimizer = KernelMuon(
            muon_paths=[v.path for v in muon], other=setting('muon_other'),
            sgd_momentum=tp.momentum, sgd_nesterov=tp.nesterov,
            normalize_weights=setting('muon_normalize_weights'),
            learning_rate=schedule, momentum=setting('muon_momentum'), nesterov=True,
            ns_steps=setting('muon_ns_steps'), rms_rate=rms_rate or None,
            adam_lr_ratio=setting('muon_other_lr_ratio'), adam_beta_1=setting('beta_1'),
            adam_beta_2=setting('beta_2'), epsilon=setting('epsilon'),
            weight_decay=decay or None, adam_weight_decay=decay or None)
    else:
        decayed = _take_decay_off_the_loss(trainable)
        kwargs = {'beta_1': setting('beta_1'), 'beta_2': setting('beta_2')}
        if name != 'lion':
            kwargs['epsilon'] = setting('epsilon')
        cls = {'adamw': keras.optimizers.AdamW, 'lion': keras.optimizers.Lion,
               'lamb': keras.optimizers.Lamb}[name]
        optimizer = cls(learning_rate=schedule, weight_decay=decay or None, **kwargs)
    if decay:
        decayed_ids = {id(v) for v in decayed}
        optimizer.exclude_from_weight_decay(var_list=[v for v in trainable if id(v) not in decayed_ids])
    return optimizer
