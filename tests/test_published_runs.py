"""The run folders behind the README's results table (`benchmarks/runs/`):
they load, their weights are the ones that gave the figures recorded when
they finished, and they have the active units docs/results/literature.md gives."""

from pathlib import Path

import pytest

from tfvae.evaluation import active_units, evaluate_elbo
from tfvae.runs import run_images

RUNS = sorted((Path(__file__).parents[1] / "benchmarks" / "runs").iterdir())

# Active units on the 10,000 test images (Cov_x of the posterior mean > 0.01),
# as measured on these weights; of 50 latent units each (the two-layer run:
# 64 of z_1's 64 and 10 of z_2's 32).
ACTIVE_UNITS = {
    "burda-elbo-k1-cosine660-eps1e-4-warmup67-val10k": 24,
    "burda-elbo-k1-cosine660-val10k": 16,
    "burda-iwae-k50-cosine150-dreg-eps1e-4": 24,
    "hierarchical-64-32-elbo300-iwae5-iwae50-val10k": 74,
}


@pytest.fixture(scope="module", params=RUNS, ids=lambda run: run.name)
def published(request):
    """A published run and its test images under the fixed binarization, loaded once."""
    return run_images(request.param)


def test_the_readme_names_every_published_run():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert RUNS
    for run in RUNS:
        assert f"benchmarks/runs/{run.name}" in readme


def test_a_published_run_rescores_its_recorded_test_elbo(published):
    """The test -ELBO over all 10,000 images under the fixed binarization and
    fixed keys is what the run recorded at its end, to 1e-3 nats (XLA or not
    changes the sums' order, about 1e-5 here)."""
    loaded, images = published
    recorded = loaded.state.extra["test"]
    scores = evaluate_elbo(loaded.model, images)
    assert len(images) == 10_000
    for term in ("elbo", "kl", "log_likelihood"):
        assert scores[term] == pytest.approx(recorded[term], abs=1e-3)


def test_a_published_run_has_its_recorded_active_units(published):
    """The counts docs/results/literature.md quotes. Every unit's variance is far
    from the threshold (active ones above 0.2, the rest below 0.0015), so
    rounding cannot move a count; counted by standard deviation instead, the
    IWAE run's 26 collapsed units (sd 0.013 to 0.038) would count too: 50."""
    loaded, images = published
    assert set(ACTIVE_UNITS) == {run.name for run in RUNS}
    counted = active_units(loaded.model, images)
    assert counted == ACTIVE_UNITS[loaded.path.name]
