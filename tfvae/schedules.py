"""Learning-rate schedules a run can train under."""

from __future__ import annotations

# Burda, Grosse & Salakhutdinov (2015), section 5: stage i = 0..7 trains
# 3**i passes at learning rate 1e-3 * 10**(-i/7), 3280 passes in all.
BURDA_STAGES = 8
BURDA_PASSES = sum(3**i for i in range(BURDA_STAGES))


def burda_stages(epochs: int, learning_rate: float) -> list[tuple[int, float]]:
    """`(last epoch, learning rate)` of each stage of Burda et al.'s schedule,
    stretched or shrunk to `epochs` in all (exactly theirs for 3280).

    Stages that shrink to nothing are dropped; the last one always ends at
    `epochs`.
    """
    stages, passes = [], 0
    for i in range(BURDA_STAGES):
        passes += 3**i
        end = round(epochs * passes / BURDA_PASSES)
        if end > (stages[-1][0] if stages else 0):
            stages.append((end, learning_rate * 10 ** (-i / 7)))
    return stages


def learning_rate(schedule: str, base: float, epochs: int, steps_per_epoch: int):
    """The optimizer's learning rate: `base` for `constant`, else a
    step-indexed built-in Keras schedule (so `model.keras` reloads it in safe
    mode): Burda et al.'s stages, or a cosine decay from `base` to 0 over the
    whole run."""
    if schedule == "constant":
        return base
    import keras

    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=epochs * steps_per_epoch)
    stages = burda_stages(epochs, base)
    if len(stages) == 1:
        return stages[0][1]  # Keras' piecewise schedule needs a boundary
    # The schedule sees the number of steps already taken; a boundary b keeps
    # the earlier rate for steps <= b, so epoch e's last step is e * steps - 1.
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[end * steps_per_epoch - 1 for end, _ in stages[:-1]],
        values=[rate for _, rate in stages],
    )
