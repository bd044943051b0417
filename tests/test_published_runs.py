"""The run folders behind the README's likelihood table (`benchmarks/runs/`):
they load, and their weights are the ones that gave the figures recorded
when they finished."""

from pathlib import Path

import pytest

from tfvae.evaluation import evaluate_elbo, run_images

RUNS = sorted((Path(__file__).parents[1] / "benchmarks" / "runs").iterdir())


def test_the_readme_names_every_published_run():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert RUNS
    for run in RUNS:
        assert f"benchmarks/runs/{run.name}" in readme


@pytest.mark.parametrize("run", RUNS, ids=lambda run: run.name)
def test_a_published_run_rescores_its_recorded_test_elbo(run):
    """The test -ELBO over all 10,000 images under the fixed binarization and
    fixed keys is what the run recorded at its end, to 1e-3 nats (XLA or not
    changes the sums' order, about 1e-5 here)."""
    loaded, images = run_images(run)
    recorded = loaded.state.extra["test"]
    scores = evaluate_elbo(loaded.model, images)
    assert len(images) == 10_000
    for term in ("elbo", "kl", "log_likelihood"):
        assert scores[term] == pytest.approx(recorded[term], abs=1e-3)
