"""The README's quick tour, run end to end as a reader would, at small
settings: each `tfvae …` line of the section as written, with its numbers of
epochs, held-out images and importance samples made small, and the request
it shows sent to the SavedModel it exported."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from harness import tfvae
from PIL import Image
from test_docs import ROOT, documented_commands, words
from test_export import serve_rest

pytestmark = pytest.mark.slow

# The tour's numbers made small; `train` also sees 1,000 images (test images
# too) through a 16-unit layer without XLA's compile.
SMALL = {"--epochs": "1", "--validation": "200", "-k": "4", "--k": "4"}
SMALL_TRAINING = ["--limit", "1000", "--hidden", "16", "--no-jit-compile"]


def tour() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## A quick tour", 1)[1].split("\n## ", 1)[0]


def small(args: list[str]) -> list[str]:
    args = [SMALL.get(before, word) for before, word in zip(["", *args], args, strict=False)]
    return [*args, *SMALL_TRAINING] if args[0] == "train" else args


@pytest.fixture(scope="module")
def toured(tmp_path_factory) -> Path:
    """A folder where every command of the tour has run, in order."""
    folder = tmp_path_factory.mktemp("tour")
    commands = [words(command) for _, command in documented_commands(tour())]
    assert [args[0] for args in commands][:2] == ["train", "sample"]
    for args in commands:
        tfvae(*small(args), cwd=folder, timeout=600)
    return folder


def test_the_tour_trains_and_draws(toured):
    run = toured / "runs" / "mnist"
    assert json.loads((run / "config.json").read_text())["status"] == "finished"
    assert any((run / "logs").iterdir()), "nothing for tensorboard --logdir runs"
    for picture in ("samples.png", "reconstructions.png", "path.png"):
        pixels = np.asarray(Image.open(toured / picture).convert("L"), np.float32)
        assert pixels.std() > 10, f"{picture} is blank"


def test_the_tour_evaluates(toured):
    """The importance-weighted bound is tighter than the ELBO (K = 4 > 1)."""
    line = next(cmd for _, cmd in documented_commands(tour()) if " evaluate " in cmd)
    result = tfvae(*small(words(line)), "--json", cwd=toured)
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert (scores["split"], scores["n_images"], scores["k"]) == ("test", 1000, 4)
    assert 0 < scores["nll"] < -scores["elbo"] < 544  # 544: 784 pixels at ln 2


def test_the_tour_scores_every_test_image(toured):
    with open(toured / "scores.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["index"]) for row in rows] == list(range(1000))
    summary = json.loads((toured / "scores.summary.json").read_text())
    assert (summary["split"], summary["threshold_split"]) == ("test", "validation")
    flagged = [row for row in rows if row["outlier"] == "1"]
    assert all(float(row["score"]) > summary["threshold"] for row in flagged)
    assert (toured / "outliers.png").is_file()


def test_the_tours_request_is_answered_by_its_export(toured):
    """The curl body the README sends to TF Serving, answered by the
    SavedModel the tour exported, as TF Serving answers REST requests."""
    version = toured / "exports" / "vae" / "1"
    assert (version / "saved_model.pb").is_file()
    for converted in ("tflite/encoder.tflite", "tflite/decoder.tflite", "onnx/decoder.onnx"):
        assert (toured / "exports" / "vae" / converted).is_file()
    body = json.loads(shlex.split(re.search(r"curl -d ('[^']*')", tour())[1])[0])
    answer = json.loads(serve_rest(tf.saved_model.load(str(version)), json.dumps(body)))
    images = np.asarray(answer["outputs"])  # the signature's one output, unwrapped
    assert images.shape == (body["inputs"]["count"], 28, 28, 1)
    assert ((images >= 0) & (images <= 1)).all()
    assert (toured / "exports" / "mnist" / "web" / "index.html").is_file()
