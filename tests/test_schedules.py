"""The learning-rate schedules against Burda et al.'s published one."""

import math

import keras
import pytest

from tfvae.schedules import burda_stages, learning_rate


def test_burda_schedule_at_full_length_is_theirs():
    """3**i passes at 1e-3 * 10**(-i/7) for i = 0..7: 3280 passes."""
    stages = burda_stages(3280, 1e-3)
    assert [end for end, _ in stages] == [1, 4, 13, 40, 121, 364, 1093, 3280]
    for i, (_, rate) in enumerate(stages):
        assert rate == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
    assert stages[-1][1] == pytest.approx(1e-4)


def test_a_shorter_burda_schedule_keeps_the_proportions_and_the_final_rate():
    stages = burda_stages(328, 1e-3)
    ends = [end for end, _ in stages]
    assert ends[-1] == 328 and ends == sorted(set(ends))
    assert ends[-2] == round(328 * 1093 / 3280)  # the last stage is 2/3 of the run
    assert stages[-1][1] == pytest.approx(1e-4)
    # Too few epochs for every stage: empty early stages are dropped.
    assert [end for end, _ in burda_stages(3, 1e-3)] == [1, 3]
    # One epoch keeps only the final stage: a constant 1e-4 (Keras' piecewise
    # schedule refuses a single piece).
    assert burda_stages(1, 1e-3) == [(1, pytest.approx(1e-4))]
    assert learning_rate("burda", 1e-3, 1, 10) == pytest.approx(1e-4)


def test_the_keras_schedule_switches_rates_at_the_stage_boundaries():
    steps_per_epoch = 10
    schedule = learning_rate("burda", 1e-3, 3280, steps_per_epoch)
    assert isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay)
    # Steps count from 0: step 9 is the last of epoch 1, step 10 the first of epoch 2.
    assert float(schedule(9)) == pytest.approx(1e-3)
    assert float(schedule(1093 * steps_per_epoch - 1)) == pytest.approx(1e-3 * 10 ** (-6 / 7))
    assert float(schedule(10)) == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert float(schedule(1093 * steps_per_epoch)) == pytest.approx(1e-4)
    assert learning_rate("constant", 3e-4, 10, steps_per_epoch) == 3e-4
    assert not math.isnan(float(schedule(10**9)))


def cosine(base, step, total):
    """lr(t) = base * (1 + cos(pi * t / T)) / 2 for T = epochs * steps."""
    return base * (1 + math.cos(math.pi * step / total)) / 2


def test_the_cosine_schedule_falls_from_the_rate_to_zero_over_the_run():
    steps_per_epoch, epochs = 10, 4
    schedule = learning_rate("cosine", 2e-3, epochs, steps_per_epoch)
    total = epochs * steps_per_epoch
    for step in (0, 7, 20, 33, total):
        expected = cosine(2e-3, step, total)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert float(schedule(total + 100)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("schedule", "at_step_9", "at_step_10", "at_the_end"),
    [
        ("burda", 1e-3 * 10 ** (-6 / 7), 1e-4, 1e-4),
        ("cosine", cosine(1e-3, 9, 20), 5e-4, 0.0),
    ],
)
def test_a_run_trains_under_the_schedule_and_reloads_it(
    tmp_path, schedule, at_step_9, at_step_10, at_the_end
):
    """Two epochs of 10 steps: the optimizer ends at the schedule's last rate
    and the saved model keeps the schedule (a 2-epoch Burda schedule is
    epoch 1 at 1e-3 * 10**(-6/7) and epoch 2 at 1e-4)."""
    from tfvae.config import TrainConfig
    from tfvae.runs import load_run
    from tfvae.training import train

    config = TrainConfig(
        epochs=2,
        limit=100,
        batch_size=10,
        hidden_units=(16,),
        latent_dim=2,
        learning_rate=1e-3,
        lr_schedule=schedule,
    )
    result = train(config, tmp_path / "run", echo=lambda _: None, verbose=0)
    optimizer = result.model.optimizer
    assert int(optimizer.iterations.numpy()) == 20
    assert float(optimizer.learning_rate) == pytest.approx(at_the_end, rel=1e-6, abs=1e-12)
    run = load_run(tmp_path / "run")
    assert run.state.config.lr_schedule == schedule
    reloaded = run.model.optimizer._learning_rate
    assert float(reloaded(9)) == pytest.approx(at_step_9)
    assert float(reloaded(10)) == pytest.approx(at_step_10)
