"""The suite's one harness: tfvae's command line in this process or as a real
process, the named tiny settings of its training runs, the committed run
folders, and the checks many files make of a command's outcome. Its
fixtures are in `conftest.py`; the one check every Keras class of tfvae
passes is `test_keras_classes.check_keras_class`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from tfvae.cli.main import main
from tfvae.data import ImageDataset, RunData

# --- the committed run folders -------------------------------------------------

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"
# The default run (784-400-20, 250 epochs) as tfvae 0.1.0 wrote it: trained
# weights, whose logits are far larger than a one-epoch model's.
FINISHED_RUN_0_1_0 = FIXTURE_RUNS / "mnist-default-0.1.0"
# A run tfvae 0.1.0 left after 2 of its epochs, with its checkpoint.
UNFINISHED_RUN_0_1_0 = FIXTURE_RUNS / "unfinished-0.1.0"

# --- named tiny settings -------------------------------------------------------
# XLA is off in all of them: its compile adds seconds to every process and is
# not what the tests that use them check.

# 256 images, one epoch of 4 steps, 16 hidden units, a 2-D latent space.
TINY_SETTINGS = dict(
    limit=256, epochs=1, hidden_units=(16,), latent_dim=2, batch_size=64, jit_compile=False
)
TINY_OPTIONS = [
    *("--limit", "256", "--epochs", "1", "--hidden", "16", "--latent-dim", "2"),
    *("--batch-size", "64", "--no-jit-compile"),
]
# 1,000 images in 10 steps of 100, 32 hidden units, the default latent space.
SMALL_OPTIONS = ["--limit", "1000", "--hidden", "32", "--batch-size", "100", "--no-jit-compile"]
# 1,000 images, 64 hidden units and a 2-D latent space, with XLA as users
# get it: the run draws every picture, the manifold and the scatter plot too.
SMALL_2D_OPTIONS = ["--limit", "1000", "--hidden", "64", "--latent-dim", "2"]

# --- the command line ----------------------------------------------------------

TFVAE = [sys.executable, "-m", "tfvae"]
# As users run it: conftest sets TF_CPP_MIN_LOG_LEVEL for this process, and
# without it the command line keeps TensorFlow's start-up lines off stderr itself.
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def tfvae(
    *args,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    **popen,
) -> subprocess.CompletedProcess:
    """`tfvae *args` as a real process, as users run it (`env` added to
    theirs); with `check`, its exit code must be 0."""
    command = [*TFVAE, *map(str, args)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**USER_ENV, **(env or {})},
        timeout=timeout,
        **popen,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def invoke(*args) -> Result:
    """`tfvae *args` in this process, where TensorFlow is loaded already."""
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def assert_clean_failure(result: Result, *needles: str) -> str:
    """Exit code 1 through click (no escaped exception), one `Error:` line with `needles`."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = error_lines(result.output)
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def quiet(_line: str) -> None:
    """An `echo` for library calls whose lines no test reads."""


# --- what a run folder holds ---------------------------------------------------


def evaluate_json(run: Path) -> dict:
    """`tfvae evaluate RUN --json`, in this process."""
    result = invoke("evaluate", run, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def metrics_epochs(run: Path) -> list[int]:
    lines = (run / "metrics.csv").read_text().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


def status(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["status"]


def blank_run_data(image_shape, n_train: int) -> RunData:
    """A run's data of `n_train` blank images of `image_shape`: all a model is
    built from (its shape, and the steps of an epoch)."""
    blank = np.zeros((n_train, *image_shape), np.uint8)
    return RunData(ImageDataset("blank", blank, blank[:1]), None, "dynamic")
