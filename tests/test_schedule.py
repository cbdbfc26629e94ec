"""The learning-rate rule at and around every boundary."""
import pytest

from runner.training.averaging import lookahead_alpha
from runner.training.schedule import piecewise_lr


def lr(schedule, step):
    return float(schedule(step))


def test_seed_default_schedule_at_every_boundary():
    s = piecewise_lr([0.01, 0.1, 0.01, 0.001], [400, 32000, 48000, 64000])
    expected = {0: 0.01, 1: 0.01, 399: 0.01, 400: 0.1, 401: 0.1, 31999: 0.1, 32000: 0.01,
                47999: 0.01, 48000: 0.001, 63999: 0.001}
    for step, value in expected.items():
        assert lr(s, step) == pytest.approx(value), step
    # past the end the last value holds (a run extended with `steps`)
    assert lr(s, 64000) == pytest.approx(0.001) and lr(s, 10 ** 6) == pytest.approx(0.001)


def test_single_piece():
    s = piecewise_lr([0.05], [100])
    assert [lr(s, i) for i in (0, 50, 99, 100)] == pytest.approx([0.05] * 4)


def test_linear_warmup_scales_the_first_steps():
    s = piecewise_lr([0.1, 0.01], [100, 200], warmup_steps=10)
    assert lr(s, 0) == pytest.approx(0.01)
    assert lr(s, 4) == pytest.approx(0.05)
    assert lr(s, 9) == pytest.approx(0.1)
    assert lr(s, 10) == pytest.approx(0.1) and lr(s, 99) == pytest.approx(0.1)
    assert lr(s, 100) == pytest.approx(0.01)


def test_warmup_longer_than_a_piece_scales_the_next_piece_too():
    s = piecewise_lr([0.1, 1.0], [5, 20], warmup_steps=10)
    assert lr(s, 4) == pytest.approx(0.1 * 5 / 10)
    assert lr(s, 5) == pytest.approx(1.0 * 6 / 10)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        piecewise_lr([0.1, 0.01], [100])


def test_schedule_round_trips_through_keras_serialisation():
    import keras
    s = piecewise_lr([0.1, 0.01], [100, 200], warmup_steps=10)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert [lr(again, i) for i in (0, 50, 150)] == pytest.approx([lr(s, i) for i in (0, 50, 150)])


def test_linear_decay_after_warmup():
    from runner.training.schedule import make_lr_schedule
    # Up to the peak over the warm-up, then a straight line from it to 0, as cosine does.
    s = make_lr_schedule('linear', [0.4], [1100], warmup_steps=100)
    assert lr(s, 0) == pytest.approx(0.4 / 100)
    assert lr(s, 99) == pytest.approx(0.4) and lr(s, 100) == pytest.approx(0.4)
    assert lr(s, 600) == pytest.approx(0.2)
    assert lr(s, 1100) == pytest.approx(0.0) and lr(s, 1200) == pytest.approx(0.0)
    # Without a warm-up, from the peak at step 0.
    s = make_lr_schedule('linear', [0.4], [1000])
    assert lr(s, 0) == pytest.approx(0.4) and lr(s, 500) == pytest.approx(0.2)
    assert lr(s, 1000) == pytest.approx(0.0)


def test_cosine_decay_after_warmup():
    from runner.training.schedule import make_lr_schedule
    s = make_lr_schedule('cosine', [0.4], [1100], warmup_steps=100)
    assert lr(s, 0) == pytest.approx(0.0) and lr(s, 50) == pytest.approx(0.2)
    assert lr(s, 100) == pytest.approx(0.4)
    assert lr(s, 600) == pytest.approx(0.2, rel=1e-3)
    assert lr(s, 1100) == pytest.approx(0.0, abs=1e-6)
    assert lr(make_lr_schedule('piecewise', [0.1, 0.01], [10, 20]), 10) == pytest.approx(0.01)


def test_lookahead_alpha_grows_with_the_cube_of_progress_and_is_one_at_the_end():
    # airbench94: 0.95**5 * (step / total)**3 every 5 steps, 1 at the last step
    alpha = lambda step: float(lookahead_alpha(step, 100, 0.95, 5))
    assert alpha(0) == 0.0
    assert alpha(5) == pytest.approx(0.95 ** 5 * 0.05 ** 3)
    assert alpha(50) == pytest.approx(0.95 ** 5 / 8)
    assert alpha(95) == pytest.approx(0.95 ** 5 * 0.95 ** 3)
    assert alpha(99) < 0.95 ** 5 < alpha(100) == 1.0
    assert alpha(120) == pytest.approx(0.95 ** 5)  # a run extended past its schedule
    assert float(lookahead_alpha(10, 20, 0.9, 2)) == pytest.approx(0.81 / 8)


def test_piecewise_linear_at_and_between_its_knots():
    """airbench94's schedule for 476 steps at peak 1.5: 0.2x the peak at step 0, the peak at
    23% of the steps (109), 0.07x at the end; after the end the last value holds."""
    from runner.training.schedule import make_lr_schedule
    s = make_lr_schedule('piecewise_linear', [0.3, 1.5, 0.105], [0, 109, 476])
    for step, expected in {0: 0.3, 1: 0.3 + 1.2 / 109, 54: 0.3 + 1.2 * 54 / 109, 108: 0.3 + 1.2 * 108 / 109,
                           109: 1.5, 110: 1.5 - 1.395 / 367, 300: 1.5 - 1.395 * 191 / 367, 476: 0.105,
                           477: 0.105, 10 ** 6: 0.105}.items():
        assert lr(s, step) == pytest.approx(expected, rel=1e-5), step
    # Page's ResNet-9: 0 -> 0.4 at epoch 5 -> 0 at epoch 24 (here 10 steps an epoch)
    page = make_lr_schedule('piecewise_linear', [0.0, 0.4, 0.0], [0, 50, 240])
    assert [lr(page, i) for i in (0, 25, 50, 145, 240)] == pytest.approx([0, 0.2, 0.4, 0.2, 0], abs=1e-7)
    again = keras_round_trip(s)
    assert [lr(again, i) for i in (0, 54, 300)] == pytest.approx([lr(s, i) for i in (0, 54, 300)])


def test_piecewise_linear_needs_two_knots():
    from runner.training.schedule import PiecewiseLinear
    with pytest.raises(ValueError):
        PiecewiseLinear([0], [0.1])
    with pytest.raises(ValueError):
        PiecewiseLinear([0, 10], [0.1])


def keras_round_trip(schedule):
    import keras
    return keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))


def test_report_marks_the_inner_knots_of_a_piecewise_linear_schedule():
    from runner.commands import report
    run = {'metrics': [], 'config': {'train_parameters': {
        'lr_schedule': 'piecewise_linear', 'lr_values': [0.3, 1.5, 0.105], 'lr_boundaries': [0, 109, 476]}}}
    assert report.lr_changes(run) == [(109, 1.5, 'lr 1.5')]
    assert report.lr_description(run) == 'lr 0.3 / 1.5 / 0.105 (piecewise linear)'
