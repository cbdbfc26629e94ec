"""precision: fastest. On a single machine whose CPU has bfloat16 instructions the runner
times a few steps of the model in float32 and mixed_bfloat16 and trains in the faster;
elsewhere it is `auto`. The choice survives a resume and does not change the start."""
import json

import numpy as np
import pytest

from runner import rundir
from runner.training import distribute, precision
from runner.training.trainer import Trainer
from test_fast import make_data, make_exp, run


@pytest.mark.parametrize('text, expected', [
    ('flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n', True),
    ('flags\t\t: fpu amx_bf16 amx_tile\n', True),
    ('flags\t\t: fpu avx512f avx512_vnni avx512_fp16\n', False),
    ('Features\t: fp asimd bf16\n', False),   # an ARM CPU: not a flag this runner measures
])
def test_bfloat16_instructions_are_read_from_the_cpu_flags(tmp_path, text, expected):
    path = tmp_path / 'cpuinfo'
    path.write_text('processor\t: 0\n' + text)
    assert distribute.cpu_has_bfloat16(str(path)) is expected
    assert distribute.cpu_has_bfloat16(str(tmp_path / 'missing')) is False


def test_bfloat16_only_when_clearly_faster():
    assert precision.faster_precision({'float32': 100, 'mixed_bfloat16': 110}) == 'mixed_bfloat16'
    assert precision.faster_precision({'float32': 100, 'mixed_bfloat16': 109.9}) == 'float32'
    assert precision.faster_precision({'float32': 100, 'mixed_bfloat16': 50}) == 'float32'


class Probe:
    def __init__(self, rates):
        self.rates, self.calls = rates, []

    def __call__(self, exp, info, batch_size, steps=3):
        self.calls.append(batch_size)
        return dict(self.rates)


@pytest.mark.parametrize('bf16_rate, expected', [(150, 'mixed_bfloat16'), (105, 'float32')])
def test_fastest_follows_the_probe(tmp_path, monkeypatch, bf16_rate, expected):
    import tensorflow as tf
    probe = Probe({'float32': 100, 'mixed_bfloat16': bf16_rate})
    monkeypatch.setattr(precision, 'probe_precisions', probe)
    monkeypatch.setattr(distribute, 'cpu_has_bfloat16', lambda: True)
    strategy = tf.distribute.get_strategy()
    exp = make_exp(tmp_path, precision='fastest', batch_size=512)
    policy, why = precision.choose_precision(exp, make_data().info, strategy)
    assert policy == expected and f'mixed_bfloat16 {bf16_rate}' in why
    assert probe.calls == [256]   # the batch, capped: a probe costs seconds, not minutes
    # a resumed run keeps its choice without measuring again
    assert precision.choose_precision(exp, make_data().info, strategy, 'float32') == \
        ('float32', 'chosen when the run started')
    # no bfloat16 instructions, several workers, or another precision: no probe
    monkeypatch.setattr(distribute, 'cpu_has_bfloat16', lambda: False)
    assert precision.choose_precision(exp, make_data().info, strategy)[0] == 'float32'
    monkeypatch.setattr(distribute, 'cpu_has_bfloat16', lambda: True)
    multi = make_exp(tmp_path, precision='fastest', distribution='multi_worker')
    assert precision.choose_precision(multi, make_data().info, strategy)[0] == 'float32'
    for name in ('auto', 'float32', 'mixed_bfloat16'):
        assert precision.choose_precision(make_exp(tmp_path, precision=name), make_data().info,
                                          strategy) == (precision.resolve_precision(name), None)
    assert len(probe.calls) == 1


def test_probe_times_the_model_in_both_precisions():
    from runner.config.expand import experiment_from_dict
    exp = experiment_from_dict({'model': 'tiny_cnn', 'module': 'tiny_models'})
    rates = precision.probe_precisions(exp, make_data().info, 8, steps=2)
    assert set(rates) == {'float32', 'mixed_bfloat16'} and all(r > 0 for r in rates.values())
    import keras
    assert keras.mixed_precision.global_policy().name == 'float32'   # left as it was found


def test_a_probe_is_remembered_per_machine_model_and_batch(tmp_path, monkeypatch):
    """The second run of a model on this machine starts without timing it again: the rates
    are read from <logdir>/.precision-probes. Another batch is another probe; a damaged record
    is measured again. A cold probe says what it does before it starts."""
    import tensorflow as tf
    from runner.config.expand import experiment_from_dict
    monkeypatch.setattr(distribute, 'cpu_has_bfloat16', lambda: True)
    strategy = tf.distribute.get_strategy()

    def exp(batch):
        return experiment_from_dict({'model': 'tiny_cnn', 'module': 'tiny_models', 'train_parameters': {
            'logdir': str(tmp_path), 'precision': 'fastest', 'batch_size': batch}})
    said = []
    policy, why = precision.choose_precision(exp(8), make_data().info, strategy, say=said.append)
    assert len(said) == 1 and 'timing float32 and mixed_bfloat16' in said[0] and 'measured now' in why
    files = list((tmp_path / precision.PROBES_DIR).iterdir())
    assert len(files) == 1
    again = precision.choose_precision(exp(8), make_data().info, strategy, say=said.append)
    assert len(said) == 1   # nothing timed, nothing said
    assert again[0] == policy and again[1].split(' (batch')[0] == why.split(' (batch')[0]
    assert 'measured 20' in again[1]   # the date it was measured
    precision.choose_precision(exp(16), make_data().info, strategy, say=said.append)
    assert len(said) == 2 and len(list((tmp_path / precision.PROBES_DIR).iterdir())) == 2
    files[0].write_text('{"images_per_second": ')   # torn
    assert 'measured now' in precision.choose_precision(exp(8), make_data().info, strategy)[1]
    assert json.loads(files[0].read_text())['images_per_second']['float32'] > 0


def test_a_fastest_run_trains_as_the_precision_it_chose_and_keeps_it(tmp_path, monkeypatch):
    """With the real probe: the run records the measured rates, its losses are those of a
    run given the chosen precision outright (the probe's own models leave the start
    unchanged), and a resume neither measures again nor changes precision."""
    monkeypatch.setattr(distribute, 'cpu_has_bfloat16', lambda: True)
    data = make_data()
    fastest = run(make_exp(tmp_path / 'fastest', precision='fastest', steps=3), data)
    assert fastest['status'] == 'finished' and fastest['steps'] == 3
    chosen = fastest['precision']
    rates = {p: float(v) for p, v in (part.split()[-2:] for part in
                                      fastest['precision_fastest'].split(' images/s')[0].split(', '))}
    assert chosen == precision.faster_precision(rates)
    given = run(make_exp(tmp_path / 'given', precision=chosen, steps=3), data)
    assert 'precision_fastest' not in given

    def losses(d):
        return [r['loss'] for r in rundir.read_metrics(str(d / 'run')) if r['kind'] == 'train']
    np.testing.assert_allclose(losses(tmp_path / 'fastest'), losses(tmp_path / 'given'), rtol=1e-6)

    def no_probe(*args, **kwargs):
        raise AssertionError('a resumed run measured again')
    monkeypatch.setattr(precision, 'probe_precisions', no_probe)
    resumed = run(make_exp(tmp_path / 'fastest', precision='fastest'), data)
    assert resumed['steps'] == 6 and resumed['precision'] == chosen
    assert resumed['precision_fastest'] == 'chosen when the run started'
    assert json.loads((tmp_path / 'fastest' / 'run' / 'summary.json').read_text())['precision'] == chosen


def test_a_step_skipped_by_loss_scaling_still_counts(tmp_path):
    # Keras 3's LossScaleOptimizer leaves `iterations` alone when it skips a step whose
    # float16 gradients overflowed; the batch was still taken, so the runner counts it
    # (else a resume would replay batches and an evaluation could run twice at one step).
    import keras
    import tensorflow as tf
    from test_fast import values
    exp, data = make_exp(tmp_path, precision='mixed_float16'), make_data()
    keras.backend.clear_session()  # (which resets the dtype policy, so before setting it)
    precision.set_policy('mixed_float16')
    try:
        trainer = Trainer(exp, data, tf.distribute.get_strategy(), 'mixed_float16')
        trainer.start_input()
        trainer.train_step(trainer.iterator)
        assert trainer.step == 1
        trainer.optimizer.dynamic_scale.assign(3e38)  # the scaled loss overflows
        before = values(trainer.model.trainable_variables)
        trainer.train_step(trainer.iterator)
        assert trainer.step == 2
        assert float(trainer.optimizer.dynamic_scale.numpy()) == pytest.approx(1.5e38)  # skipped...
        for a, b in zip(before, values(trainer.model.trainable_variables)):
            np.testing.assert_array_equal(a, b)  # ...so nothing moved
        trainer.optimizer.dynamic_scale.assign(1024.0)
        trainer.train_step(trainer.iterator)  # a finite step after it counts once
        assert trainer.step == 3
        assert any(not np.array_equal(a, b) for a, b in zip(before, values(trainer.model.trainable_variables)))
    finally:
        precision.set_policy('float32')


def test_auto_resumed_on_other_hardware_keeps_its_precision(tmp_path, monkeypatch):
    """`auto` is mixed_float16 on a GPU and float32 on a CPU. A run started on a GPU machine
    and resumed on a CPU one (or the reverse) failed to restore: the checkpoint holds the
    other precision's optimizer (LossScaleOptimizer variables). It keeps its precision."""
    real = precision.resolve_precision
    monkeypatch.setattr(precision, 'resolve_precision',  # the first session on a 'GPU'
                        lambda p: 'mixed_float16' if p == 'auto' else real(p))
    data = make_data()
    first = run(make_exp(tmp_path, lr_boundaries=[6], steps=3), data)
    assert (first['precision'], first['steps']) == ('mixed_float16', 3)
    monkeypatch.setattr(precision, 'resolve_precision', real)  # resumed without one
    second = run(make_exp(tmp_path, lr_boundaries=[6]), data)
    assert (second['status'], second['steps'], second['precision']) == ('finished', 6, 'mixed_float16')
    assert 'precision_fastest' not in second
