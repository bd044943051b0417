"""Run folders and `.keras` files that users already have keep working.

Both fixtures were written by tfvae 0.1.0 and are committed as written:
`mnist-default-0.1.0` is the finished default run (`tfvae train`, 250 epochs),
`unfinished-0.1.0` a small run killed with SIGKILL after its second epoch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from harness import FINISHED_RUN_0_1_0, UNFINISHED_RUN_0_1_0, invoke

from tfvae.evaluation import evaluate_elbo
from tfvae.runs import load_run, read_state, run_images
from tfvae.training import train


def test_the_finished_run_scores_what_it_recorded():
    """The same weights and the same computation as when 0.1.0 finished it.

    The KL is analytic: equal to float32 summation. The ELBO's one z per
    image is drawn from the image's key since 0.2 (0.1.0 drew it with philox),
    so the log-likelihood term moves by the noise of one draw: 0.05 nats on
    this run; 0.2 allows for it and still refuses any other weights.
    """
    run, images = run_images(FINISHED_RUN_0_1_0, "test")
    recorded = json.loads((FINISHED_RUN_0_1_0 / "config.json").read_text())["test"]
    scores = evaluate_elbo(run.model, images)
    assert scores["kl"] == pytest.approx(recorded["kl"], abs=1e-3)
    for key in ("elbo", "log_likelihood"):
        assert scores[key] == pytest.approx(recorded[key], abs=0.2), key


def test_the_finished_run_samples_through_the_cli(tmp_path):
    out = tmp_path / "samples.png"
    result = invoke("sample", str(FINISHED_RUN_0_1_0), "-n", "16", "-o", str(out))
    assert result.exit_code == 0, result.output
    model = load_run(FINISHED_RUN_0_1_0).model
    from PIL import Image

    grid = np.asarray(Image.open(out))
    assert grid.ndim == 2 and grid.std() > 20  # digits, not a flat grey
    assert model.sample(16, seed=0).shape == (16, 28, 28, 1)


@pytest.mark.slow
def test_the_unfinished_run_resumes_to_its_epochs(tmp_path):
    run_dir = tmp_path / "unfinished"
    shutil.copytree(UNFINISHED_RUN_0_1_0, run_dir)
    config = read_state(run_dir).config
    result = train(config, run_dir, echo=lambda _: None, verbose=0)
    assert result.initial_epoch == 2
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, config.epochs + 1))
    first = [float(v) for v in rows[0].split(",")[1:-1]]
    before = (UNFINISHED_RUN_0_1_0 / "metrics.csv").read_text().splitlines()[1]
    assert first == [float(v) for v in before.split(",")[1:-1]]  # kept, not replayed
    assert read_state(run_dir).status == "finished"
    assert load_run(run_dir).model.latent_dim == 2


PLAIN_KERAS = """
import json, sys
import numpy as np
first, second = sys.argv[1].split(",")
__import__(first); __import__(second)
import keras
model = keras.saving.load_model(sys.argv[2])  # safe mode, Keras' default
images = np.load(sys.argv[3])
scores = model.evaluate(images, batch_size=500, verbose=0, return_dict=True)
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__,
                  "reconstruction": float(np.asarray(model(images[:4])).sum()),
                  **{k: float(v) for k, v in scores.items()}}))
"""


@pytest.mark.parametrize(
    "order", ["tfvae,keras", pytest.param("keras,tfvae", marks=pytest.mark.slow)]
)
def test_a_run_model_loads_in_plain_keras_and_scores_image_arrays(order, tmp_path):
    """A Keras user's first move, in a fresh process: `import tfvae` (before
    or after keras) then `keras.saving.load_model("model.keras")` in safe
    mode gives the trained VAE (its reconstructions are tfvae's), and
    `model.evaluate(x)` on a plain array of images scores it: the KL, which
    is analytic, as `evaluate_elbo` has it; the ELBO, from other draws of z,
    within their noise (0.5 nats over 1,000 images)."""
    import subprocess
    import sys

    run, images = run_images(FINISHED_RUN_0_1_0, "test", limit=1000)
    np.save(tmp_path / "x.npy", images)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_KERAS,
            order,
            str(FINISHED_RUN_0_1_0 / "model.keras"),
            tmp_path / "x.npy",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["class"] == "tfvae.model.VAE"
    assert got["reconstruction"] == pytest.approx(float(np.asarray(run.model(images[:4])).sum()))
    fixed = evaluate_elbo(run.model, images)
    assert got["kl"] == pytest.approx(fixed["kl"], abs=1e-3)
    assert got["elbo"] == pytest.approx(fixed["elbo"], abs=0.5)
    assert got["loss"] == pytest.approx(-got["elbo"], abs=1e-3)
