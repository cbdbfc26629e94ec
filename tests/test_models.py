"""Tests of the model zoo, after timm's tests/test_models.py and TF Model Garden's resnet_test.py.

Every public model function is discovered by scanning the ``models`` package and must be
the registry's (models.zoo, which the runner reads): named models with their parameter
counts in ``default_cfgs``, family functions in GENERIC_BUILDERS with an example call, so a
new model cannot escape these tests.  Each named model is built once at its native input size (a
module-scoped fixture, so pytest runs all its tests together) for the parameter
counts, the weight-decay check and the forward/gradient check (the SGD check builds a
few small models of its own); the largest ones run forward/backward with batch 1, and
the ImageNet-size ones at a smaller input.
"""

import importlib
import inspect
import math
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import layers as L
from models import zoo

CIFAR_SHAPE, IMAGENET_SHAPE = (32, 32, 3), (224, 224, 3)


def discover_model_functions():
    """{name: function} for every public function of every family module of ``models``."""
    found = {}
    for info in pkgutil.iter_modules(models.__path__):
        if info.name.startswith("_") or info.name in ("layers", "zoo"):
            continue
        module = importlib.import_module(f"models.{info.name}")
        for name, fn in vars(module).items():
            if (inspect.isfunction(fn) and not name.startswith("_")
                    and fn.__module__ == module.__name__):
                found[name] = fn
    return found


MODEL_FNS = discover_model_functions()

# Trainable parameters (BN moving statistics excluded) at the native input size with
# default arguments, as the registry records them.  Cross-checks: WRN-28-10 equals
# Zagoruyko's PyTorch count, DenseNet-BC-190 Huang's, ResNet-50 torchvision's, ResNet-50 v2
# Keras applications'.
CFGS = zoo.default_cfgs
EXACT_PARAMS = {n: c.native_params for n, c in CFGS.items() if c.params}

# Functions that need family arguments: an example call and its exact count.
GENERIC_BUILDERS = {
    "cifar_resnet": (dict(depth=20), 269_722),
    "cifar_wide_resnet": (dict(depth=16, width=4), 2_748_890),
    "cifar_resnext": (dict(depth=11, cardinality=2, base_width=4), 761_290),
    "densenet": (dict(depth=22, growth_rate=4, bottleneck=True, compression=0.5), 8_714),
}

# Non-default configurations of named models, with exact counts.
VARIANT_PARAMS = [
    ("cifar_resnet20", dict(block_type="preactivated"), 269_722),
    ("cifar_resnet20", dict(shortcut_type="B"), 272_474),
    ("cifar_resnet20", dict(block_type="preactivated", shortcut_type="B"), 272_282),
    ("cifar_resnet", dict(depth=11, bottleneck=True, block_type="original", shortcut_type="B"),
     127_642),
    ("cifar_resnet", dict(depth=11, bottleneck=True, block_type="preactivated", shortcut_type="A"),
     84_762),
    ("cifar_WRN_16_4", dict(dropout=0.3), 2_748_890),
    ("cifar_airbench94", dict(widths=[32, 64, 128]), 294_360),
    ("cifar_airbench94", dict(fused_norm=True, decay_all=False), 1_971_352),
    ("nin_bn", dict(dropout=0.2), 968_404),
]

# Published figures: (millions, decimals the paper gives, what it counts).  'all' is
# every trainable weight; 'weights' leaves out BN's gamma and beta, as He et al. and
# Xie et al. do (see models/resnet.py: ResNet-1001 and ResNeXt-29 16x64d only match
# that way).  None: no published figure for this exact model.
PAPER_PARAMS = {
    "cifar_vgg11": (9.2, 1, "all"),
    "cifar_vgg13": (9.4, 1, "all"),
    "cifar_vgg16": (14.7, 1, "all"),
    "cifar_vgg19": (20.0, 1, "all"),
    "cifar_vgg_bn": None,
    "cifar_resnet20": (0.27, 2, "weights"),
    "cifar_resnet32": (0.46, 2, "weights"),
    "cifar_resnet44": (0.66, 2, "weights"),
    "cifar_resnet56": (0.85, 2, "weights"),
    "cifar_resnet110": (1.7, 1, "weights"),
    "cifar_resnet164": (1.7, 1, "weights"),
    "cifar_resnet1001": (10.2, 1, "weights"),
    "cifar_preact_resnet18": None,
    "cifar_WRN_16_4": None,
    "cifar_WRN_16_8": (11.0, 1, "all"),
    "cifar_WRN_28_10": (36.5, 1, "all"),
    "cifar_WRN_40_4": (8.9, 1, "all"),
    "cifar_resnext29_8x64d": (34.4, 1, "weights"),
    "cifar_resnext29_16x64d": (68.1, 1, "weights"),
    "resnet50": (25.6, 1, "all"),
    "resnet50_v2": (25.6, 1, "all"),
    "se_resnet50": (28.1, 1, "all"),
    "densenet40_k12": (1.0, 1, "all"),
    "densenet_bc100_k12": (0.8, 1, "all"),
    "densenet_bc250_k24": (15.3, 1, "all"),
    "densenet_bc190_k40": (25.6, 1, "all"),
    "nin_bn": None,
    "alexnet": (61, 0, "all"),
    "alexnet_bn": None,
    "zfnet_bn": None,
    "cifar_airbench94": (1.97, 2, "all"),
    "cifar_resnet9": None,
}

IMAGENET_MODELS = {n for n, c in CFGS.items() if c.input_size == zoo.IMAGENET}
# Too costly for batch 2 at native size on 2 CPU cores: forward/backward with batch 1.
LARGE_CIFAR_MODELS = {"cifar_resnet164", "cifar_resnet1001", "cifar_resnext29_8x64d",
                      "cifar_resnext29_16x64d", "cifar_WRN_28_10", "densenet_bc190_k40",
                      "densenet_bc250_k24"}
# Input side for the forward/gradient check of the ImageNet-size models: 64, or the
# smallest input the AlexNet family accepts (the size their ValueError names).
SMALL_SIDE = {"resnet50": 64, "resnet50_v2": 64, "se_resnet50": 64,
              "alexnet": 63, "alexnet_bn": 63, "zfnet_bn": 63}
# Small and medium models, one or two per family, that must reduce the loss on a fixed
# batch within a few SGD steps (eager steps of the deeper ones cost seconds each here;
# tracing a tf.function for them costs close to a minute).
SGD_MODELS = {"cifar_vgg11", "cifar_vgg_bn", "cifar_resnet20", "cifar_resnet56",
              "cifar_WRN_16_4", "densenet40_k12", "nin_bn", "cifar_airbench94"}
SLOW = LARGE_CIFAR_MODELS | {"resnet50", "resnet50_v2", "se_resnet50"}
NAMED = sorted(EXACT_PARAMS)
CIFAR_NAMED = [n for n in NAMED if n not in IMAGENET_MODELS]


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def bn_count(model):
    return int(sum(np.prod(v.shape) for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)
                   for v in layer.trainable_weights))


def batch(model, size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size,) + tuple(model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], size=size)
    return tf.constant(x), tf.constant(y)


CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def loss_fn(model, x, y):
    logits = model(x, training=True)
    return CE(y, logits) + tf.add_n(model.losses), logits


@pytest.fixture(scope="module", params=params(NAMED))
def native_model(request):
    """(name, model) built with default arguments at the native input size, once per module run."""
    keras.backend.clear_session()
    yield request.param, MODEL_FNS[request.param]()
    keras.backend.clear_session()


# --- discovery and conventions ---------------------------------------------------------


def test_every_model_function_is_registered_and_tested():
    assert MODEL_FNS, "no model functions discovered"
    assert set(MODEL_FNS) == set(CFGS), "register each model function in models.zoo"
    assert zoo.model_functions() == MODEL_FNS
    untested = set(MODEL_FNS) - set(EXACT_PARAMS) - set(GENERIC_BUILDERS)
    assert not untested, f"give a count in models.zoo or add to GENERIC_BUILDERS: {sorted(untested)}"
    assert set(EXACT_PARAMS) | set(GENERIC_BUILDERS) == set(MODEL_FNS)
    assert set(PAPER_PARAMS) == set(EXACT_PARAMS)
    assert set(models.__all__) == set(MODEL_FNS)
    assert all(getattr(models, n) is fn for n, fn in MODEL_FNS.items())


@pytest.mark.parametrize("name", sorted(MODEL_FNS))
def test_function_defaults_are_the_registry_metadata(name):
    """Native input size, classes, weight decay and the other options' defaults: the
    function's defaults are its cfg's; its docstring is one line; a family function's
    arguments without default are those the README table names."""
    fn, cfg = MODEL_FNS[name], CFGS[name]
    sig = inspect.signature(fn).parameters
    native = (IMAGENET_SHAPE, 1000) if name in IMAGENET_MODELS else (CIFAR_SHAPE, 10)
    assert (sig["input_shape"].default, sig["num_classes"].default) == native
    assert (cfg.input_size, cfg.num_classes) == native
    assert sig["weight_decay"].default == cfg.weight_decay
    for key, default in cfg.options:
        assert sig[key].default == default, f"{name}: {key}"
    assert tuple(k for k, p in sig.items() if p.default is p.empty) == cfg.required
    doc = inspect.getdoc(fn)
    assert doc and len(doc.splitlines()) == 1, f"{name}: docstring must be one line"


@pytest.mark.parametrize("module", sorted({fn.__module__ for fn in MODEL_FNS.values()}))
def test_family_module_docstring_cites_papers(module):
    doc = importlib.import_module(module).__doc__
    assert "Paper" in doc and "arXiv:" in doc


@pytest.mark.parametrize("module", sorted({fn.__module__ for fn in MODEL_FNS.values()}))
def test_a_family_writes_its_variants_one_way(module):
    """Fixed variants are rows of the family's read-only SPECS table (frozen dataclasses with
    a build method) keyed by their model functions; no other table (tuple rows, dicts,
    mapping proxies)."""
    import dataclasses
    import types
    mod = importlib.import_module(module)
    tables = {k for k, v in vars(mod).items()
              if isinstance(v, (dict, types.MappingProxyType)) and not k.startswith("__")}
    assert tables <= {"SPECS"}, f"{module}: tables other than SPECS: {sorted(tables - {'SPECS'})}"
    for name, spec in getattr(mod, "SPECS", {}).items():
        assert isinstance(mod.SPECS, types.MappingProxyType)
        assert dataclasses.is_dataclass(spec) and type(spec).__dataclass_params__.frozen, name
        assert callable(getattr(spec, "build", None)), name
        assert name in MODEL_FNS and MODEL_FNS[name].__module__ == module, name
        assert CFGS[name].family == module.rsplit(".", 1)[-1], name


# --- per named model, at native size ------------------------------------------------------


def test_exact_trainable_param_count(native_model):
    """The exact count, and the paper's where it publishes one (at the paper's precision)."""
    name, model = native_model
    assert trainable_count(model) == EXACT_PARAMS[name]
    if PAPER_PARAMS[name] is not None:
        millions, decimals, counting = PAPER_PARAMS[name]
        count = trainable_count(model) - (bn_count(model) if counting == "weights" else 0)
        assert round(count / 1e6, decimals) == millions, f"{name}: {count:,} vs paper {millions}M"


def test_registry_counts_any_number_of_classes(native_model):
    """The registry's count at the other number of classes (10 or 1000) is the native count
    plus what the class-sized weights (classifier, NiN's class maps and their BN) add."""
    name, model = native_model
    classes = model.output_shape[-1]
    per_class = sum(math.prod(v.shape) for v in model.trainable_weights if v.shape[-1] == classes)
    p10, p1000 = CFGS[name].params
    assert p1000 - p10 == 990 * per_class // classes
    assert zoo.trainable_params(name, 100) == p10 + 90 * per_class // classes


def test_model_name_and_logits_output(native_model):
    name, model = native_model
    assert model.name == name
    last = model.layers[-1]
    assert last.name == "logits"
    # Logits: no softmax or other activation on the output layer.
    assert getattr(last, "activation", keras.activations.linear) is keras.activations.linear


def test_weight_decay_regularises_what_the_papers_decay(native_model):
    """Conv and dense kernels; every trainable weight in the speed-record networks, whose
    released codes hand all parameters to the weight decay (their decay_all)."""
    name, model = native_model
    params = inspect.signature(MODEL_FNS[name]).parameters
    wd = CFGS[name].weight_decay
    decayed = [layer.kernel for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    if "decay_all" in params and params["decay_all"].default:
        decayed = model.trainable_variables
    assert len(model.losses) == len(decayed)
    expected = wd / 2 * sum(float(tf.reduce_sum(tf.square(k))) for k in decayed)
    np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-4)


def test_forward_and_gradients(native_model):
    name, model = native_model
    num_classes = model.output_shape[-1]
    if name in SMALL_SIDE:
        side = SMALL_SIDE[name]
        model = MODEL_FNS[name](input_shape=(side, side, 3))
    x, y = batch(model, 1 if name in LARGE_CIFAR_MODELS else 2)
    with tf.GradientTape() as tape:
        loss, logits = loss_fn(model, x, y)
    assert logits.shape == (x.shape[0], num_classes)
    assert np.isfinite(logits.numpy()).all() and np.isfinite(float(loss))
    grads = tape.gradient(loss, model.trainable_weights)
    for var, grad in zip(model.trainable_weights, grads):
        assert grad is not None, f"{name}: no gradient for {var.path}"
        g = grad.numpy()
        assert np.isfinite(g).all(), f"{name}: non-finite gradient for {var.path}"
        assert np.any(g != 0), f"{name}: all-zero gradient for {var.path}"


@pytest.mark.parametrize("name", sorted(SGD_MODELS))
def test_sgd_steps_lower_loss(name):
    """A few SGD steps on one fixed batch lower the loss (a few models per family keep this
    file near 3 minutes)."""
    keras.backend.clear_session()
    model = MODEL_FNS[name]()
    # Dropout off so the loss on the fixed batch is deterministic; BN stays in training mode.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    x, y = batch(model, 4, seed=1)
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    losses = []
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss, _ = loss_fn(model, x, y)
        losses.append(float(loss))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights),
                                      model.trainable_weights))
    losses.append(float(loss_fn(model, x, y)[0]))
    assert losses[-1] < losses[0], f"{name}: losses {losses}"


# --- other sizes and arguments ------------------------------------------------------------


# The largest CIFAR models are thin variants of builders checked here at small depth
# (cifar_resnet164 and the bottleneck config cover ResNet-1001; the small ResNeXt and
# DenseNet-BC configs cover ResNeXt-29 and DenseNet-BC-190/250; WRN-16-4/16-8/40-4
# cover WRN-28-10); building them again would cost about a minute on 2 CPU cores.
SIZE_CHECKS = [(n, {}) for n in CIFAR_NAMED
               if n == "cifar_resnet164" or n not in LARGE_CIFAR_MODELS] + [
    ("cifar_resnet", dict(depth=11, bottleneck=True, block_type="preactivated", shortcut_type="B")),
    ("cifar_resnext", GENERIC_BUILDERS["cifar_resnext"][0]),
    ("densenet", GENERIC_BUILDERS["densenet"][0]),
]


@pytest.mark.parametrize("name, kwargs", SIZE_CHECKS)
def test_cifar_model_works_at_64px_with_100_classes(name, kwargs):
    keras.backend.clear_session()
    model = MODEL_FNS[name](input_shape=(64, 64, 3), num_classes=100, **kwargs)
    assert model.output_shape == (None, 100)
    x, _ = batch(model, 2)
    logits = model(x, training=False)
    assert logits.shape == (2, 100) and np.isfinite(logits.numpy()).all()


@pytest.mark.parametrize("name, kwargs, count", VARIANT_PARAMS + [
    (name, kwargs, count) for name, (kwargs, count) in GENERIC_BUILDERS.items()])
def test_variants_and_generic_builders(name, kwargs, count):
    keras.backend.clear_session()
    model = MODEL_FNS[name](**kwargs)
    assert model.name == name
    assert trainable_count(model) == count
    # --list's count without building: the registry's where the options leave it unchanged.
    assert zoo.trainable_params(name, 10, None, kwargs) in (None, count)
    x, y = batch(model, 2)
    with tf.GradientTape() as tape:
        loss, logits = loss_fn(model, x, y)
    assert logits.shape == (2, 10)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("name, shape, smallest", [
    ("alexnet", (32, 32, 3), 63),
    ("alexnet_bn", (32, 32, 3), 63),
    ("zfnet_bn", (32, 32, 3), 63),
    ("alexnet", (224, 60, 3), 63),
    ("densenet40_k12", (3, 3, 3), 4),
    ("cifar_airbench94", (8, 8, 3), 9),
    ("cifar_resnet9", (7, 7, 3), 8),
])
def test_too_small_input_raises_clear_error(name, shape, smallest):
    with pytest.raises(ValueError) as info:
        MODEL_FNS[name](input_shape=shape)
    message = str(info.value)
    assert "\n" not in message
    assert name in message and str(shape) in message
    assert f"({smallest}, {smallest}, 3)" in message


@pytest.mark.parametrize("name, kwargs, match", [
    ("cifar_resnet", dict(depth=21), r"6n\+2"),
    ("cifar_resnet", dict(depth=21, bottleneck=True), r"9n\+2"),
    ("cifar_resnet20", dict(block_type="bottleneck"), "block_type"),
    ("cifar_resnet110", dict(shortcut_type="C"), "shortcut_type"),
    ("cifar_resnet164", dict(block_type="pre"), "block_type"),
    ("cifar_wide_resnet", dict(depth=15, width=4), r"6n\+4"),
    ("cifar_wide_resnet", dict(depth=16, width=0), "width"),
    ("cifar_WRN_16_4", dict(dropout=1.0), "dropout"),
    ("cifar_resnext", dict(depth=30, cardinality=8, base_width=64), r"9n\+2"),
    ("cifar_resnext", dict(depth=29, cardinality=0, base_width=64), "cardinality"),
    ("densenet", dict(depth=41, growth_rate=12), r"3n\+4"),
    ("densenet", dict(depth=37, growth_rate=12, bottleneck=True), r"6n\+4"),
    ("densenet", dict(depth=40, growth_rate=12, compression=0.0), "compression"),
    ("densenet", dict(depth=40, growth_rate=0), "growth_rate"),
    ("nin_bn", dict(dropout=-0.1), "dropout"),
    ("cifar_vgg11", dict(num_classes=0), "num_classes"),
    ("resnet50", dict(input_shape=(224, 224)), "input_shape"),
    ("cifar_resnet20", dict(weight_decay=-1e-4), "weight_decay"),
    ("alexnet", dict(input_shape=(None, None, 3)), "fixed input size"),
])
def test_invalid_family_args_raise_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        MODEL_FNS[name](**kwargs)
    assert "\n" not in str(info.value)


def test_weight_decay_zero_adds_no_regulariser():
    assert L.l2(0) is None and L.l2(0.0) is None
    for fn, kwargs in [(models.cifar_resnet20, {}), (models.cifar_vgg_bn, {}),
                       (models.nin_bn, {}), (models.alexnet, dict(input_shape=(63, 63, 3)))]:
        assert fn(weight_decay=0, **kwargs).losses == []


SMALL_CONFIGS = [
    ("cifar_resnet20", {}),
    ("cifar_airbench94", {}),
    ("cifar_resnet20", dict(block_type="preactivated", shortcut_type="B")),
    ("cifar_vgg_bn", {}),
    ("cifar_WRN_16_4", dict(dropout=0.3)),
    ("cifar_resnext", dict(depth=11, cardinality=2, base_width=4)),
    ("densenet", dict(depth=22, growth_rate=4, bottleneck=True, compression=0.5, dropout=0.2)),
    ("nin_bn", {}),
    ("alexnet", dict(input_shape=(63, 63, 3))),
    ("zfnet_bn", dict(input_shape=(63, 63, 3))),
    ("se_resnet50", dict(input_shape=(64, 64, 3))),
]


@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_layer_names_are_explicit_and_stable(name, kwargs):
    """Two builds in one session give the same names: none is Keras' auto-numbered default."""
    first = [layer.name for layer in MODEL_FNS[name](**kwargs).layers]
    second = [layer.name for layer in MODEL_FNS[name](**kwargs).layers]
    assert first == second
    assert len(set(first)) == len(first)


@pytest.mark.parametrize("name, kwargs", [
    ("cifar_resnet20", {}),
    ("cifar_resnext", dict(depth=11, cardinality=2, base_width=4)),
    ("alexnet", dict(input_shape=(63, 63, 3))),
    ("cifar_airbench94", {}),
])
def test_config_round_trip_with_custom_layers(name, kwargs):
    """ZeroPadShortcut, GroupedConv2D and LocalResponseNormalization survive a JSON round trip."""
    model = MODEL_FNS[name](**kwargs)
    clone = keras.models.model_from_json(model.to_json())
    clone.set_weights(model.get_weights())
    x, _ = batch(model, 2)
    np.testing.assert_allclose(clone(x, training=False).numpy(), model(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [
    ("cifar_resnet20", dict(input_shape=(8, 8, 3))),
    ("cifar_resnext", dict(depth=11, cardinality=2, base_width=4, input_shape=(8, 8, 3))),
    ("alexnet", dict(input_shape=(63, 63, 3))),
])
def test_mixed_precision_forward_and_gradients(name, kwargs):
    """Custom layers and regularisers work under mixed_float16 (small inputs: slow on CPU)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = MODEL_FNS[name](**kwargs)
        x, y = batch(model, 2)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = CE(y, tf.cast(logits, tf.float32)) + tf.add_n(model.losses)
        assert logits.dtype == tf.float16
        grads = tape.gradient(loss, model.trainable_weights)
        assert all(np.isfinite(g.numpy()).all() for g in grads)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- building blocks -------------------------------------------------------------------


def test_grouped_conv_matches_keras_and_block_diagonal_conv():
    """GroupedConv2D computes Conv2D(groups=...) with the same kernel layout, and its gradients."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((2, 9, 9, 8)).astype("float32"))
    ours = L.GroupedConv2D(12, 3, strides=2, padding="same", groups=4, use_bias=False)
    reference = keras.layers.Conv2D(12, 3, strides=2, padding="same", groups=4, use_bias=False)
    ours.build(x.shape)
    reference.build(x.shape)
    assert ours.kernel.shape == reference.kernel.shape == (3, 3, 2, 12)
    reference.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-5)

    # Gradients against an ordinary conv with the equivalent block-diagonal kernel.
    kernel = ours.kernel.numpy()
    dense = np.zeros((3, 3, 8, 12), "float32")
    for g in range(4):
        dense[:, :, 2 * g:2 * g + 2, 3 * g:3 * g + 3] = kernel[:, :, :, 3 * g:3 * g + 3]
    dense = tf.Variable(dense)
    weights = tf.constant(rng.standard_normal((2, 5, 5, 12)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a = tf.reduce_sum(ours(x) * weights)
        b = tf.reduce_sum(tf.nn.conv2d(x, dense, 2, "SAME") * weights)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(a, x).numpy(), tape.gradient(b, x).numpy(),
                               rtol=1e-4, atol=1e-5)
    gk, gd = tape.gradient(a, ours.kernel).numpy(), tape.gradient(b, dense).numpy()
    for g in range(4):
        np.testing.assert_allclose(gk[:, :, :, 3 * g:3 * g + 3],
                                   gd[:, :, 2 * g:2 * g + 2, 3 * g:3 * g + 3],
                                   rtol=1e-4, atol=1e-5)


def test_zero_pad_shortcut_subsamples_and_pads_channels():
    x = tf.reshape(tf.range(2 * 5 * 5 * 3, dtype=tf.float32), (2, 5, 5, 3))
    y = L.ZeroPadShortcut(8, strides=2)(x).numpy()
    assert y.shape == (2, 3, 3, 8)
    np.testing.assert_array_equal(y[..., :3], x.numpy()[:, ::2, ::2, :])
    assert not y[..., 3:].any()


def test_resnet50_v2_count_equals_keras_applications():
    keras_model = keras.applications.ResNet50V2(weights=None)
    assert EXACT_PARAMS["resnet50_v2"] == trainable_count(keras_model)


def test_resnet50_count_equals_keras_applications_without_conv_biases():
    keras_model = keras.applications.ResNet50(weights=None)
    conv_biases = sum(int(layer.bias.shape[0]) for layer in keras_model.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    assert EXACT_PARAMS["resnet50"] == trainable_count(keras_model) - conv_biases


def _inbound(model, layer_name):
    """Names of the layers feeding ``layer_name``."""
    inputs = model.get_layer(layer_name).input
    return sorted(t._keras_history[0].name for t in (inputs if isinstance(inputs, list) else [inputs]))


@pytest.mark.parametrize("name, kwargs, first_shortcut_source", [
    # Identity shortcut: He et al. 2016, 4.1, the first unit splits after the BN-ReLU on conv1.
    ("cifar_resnet20", dict(block_type="preactivated"), "stage1_block1_relu1"),
    # A projection (WRN's first unit) reads the BN-ReLU in every pre-activation unit.
    ("cifar_WRN_16_4", {}, "stage1_block1_shortcut_conv"),
    # Post-activation: the stem already ends in BN-ReLU.
    ("cifar_resnet20", {}, "stem_relu"),
])
def test_first_unit_shortcut_reads_the_activated_stem(name, kwargs, first_shortcut_source):
    model = getattr(models, name)(**kwargs)
    assert first_shortcut_source in _inbound(model, "stage1_block1_add")
    if first_shortcut_source.endswith("shortcut_conv"):
        assert _inbound(model, first_shortcut_source) == ["stage1_block1_relu1"]
    if kwargs.get("block_type") == "preactivated":
        # Later identity shortcuts keep the raw residual stream.
        assert "stage1_block1_add" in _inbound(model, "stage1_block2_add")
        assert _inbound(model, "stage1_block2_add") == ["stage1_block1_add", "stage1_block2_conv2"]


@pytest.mark.parametrize("name, kwargs", [
    ("cifar_WRN_16_4", {}),
    ("densenet40_k12", {}),
    ("cifar_resnext", dict(depth=11, cardinality=2, base_width=4)),
])
def test_decay_all_follows_the_torch_trainers_and_survives_a_config_round_trip(name, kwargs):
    """WRN, DenseNet and ResNeXt decay every trainable weight by default (their authors'
    optim.sgd over getParameters()); decay_all=False leaves BN and biases undecayed."""
    model = getattr(models, name)(**kwargs)
    assert len(model.losses) == len(model.trainable_variables)
    kernels_only = getattr(models, name)(decay_all=False, **kwargs)
    kernels = [l for l in kernels_only.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(kernels_only.losses) == len(kernels) < len(kernels_only.trainable_variables)
    clone = keras.Model.from_config(model.get_config())
    assert len(clone.losses) == len(clone.trainable_variables)
    bn = next(l for l in clone.layers if isinstance(l, keras.layers.BatchNormalization))
    assert bn.gamma.regularizer is not None and bn.beta.regularizer is not None
