"""A score for every image (`tfvae score`, `tfvae.scoring`): each column
against an independent computation, the threshold's false-positive rate on
the normal images it was set on, rows in the input's order with its paths,
the default score against the raw likelihood on images the literature says
fool it, and bad input in one line."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from harness import TINY_SETTINGS, assert_clean_failure, invoke, quiet
from PIL import Image

import tfvae
from tfvae.config import TrainConfig
from tfvae.evaluation import evaluate_elbo, iw_log_likelihood
from tfvae.runs import run_images
from tfvae.scoring import (
    complexity_bits,
    image_levels,
    likelihood_regret,
    score,
    threshold_for_fpr,
)

PUBLISHED = Path(__file__).parents[1] / "benchmarks" / "runs" / "burda-elbo-k1-cosine660-val10k"


@pytest.fixture(scope="module")
def run_with_validation(tmp_path_factory):
    """A tiny finished run on 1,000 images with the last 400 held out."""
    run = tmp_path_factory.mktemp("scored") / "run"
    settings = TINY_SETTINGS | {"limit": 1000, "validation": 400}
    tfvae.train(TrainConfig(**settings), run, verbose=0, echo=quiet)
    return run


def test_the_columns_are_the_evaluators_figures_per_image(tiny_finished_run):
    """`nll` is minus the evaluator's IW estimate of each image, `bits_per_dim`
    that in bits over the pixels, and the ELBO terms average to
    `evaluate_elbo`'s figures (the same fixed keys)."""
    run, images = run_images(tiny_finished_run)
    columns = score(run.model, images, k=5)
    np.testing.assert_allclose(columns["nll"], -iw_log_likelihood(run.model, images, k=5))
    np.testing.assert_allclose(columns["bits_per_dim"], columns["nll"] / (784 * math.log(2)))
    means = evaluate_elbo(run.model, images)
    for term in ("elbo", "kl", "log_likelihood"):
        assert columns[term].mean() == pytest.approx(means[term], rel=1e-6)
    np.testing.assert_allclose(
        columns["elbo"], columns["log_likelihood"] - columns["kl"], atol=1e-4
    )
    expected = columns["nll"] / math.log(2) - columns["complexity_bits"]
    np.testing.assert_allclose(columns["score_complexity"], expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_code_length_is_a_lossless_png_of_the_image(channels):
    """Each image's `complexity_bits` is 8 x the length of a PNG file that
    another decoder (Pillow) reads back to the same pixels: a lossless code
    length. A blank image codes shortest, noise longest, above its raw size."""
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (4, 28, 28, channels), dtype=np.uint8)
    levels[0] = 0
    levels[1] = np.where(rng.random((28, 28, 1)) < 0.2, 255, 0)  # a binarized image's levels
    bits = complexity_bits(tf.constant(levels)).numpy()
    for image, length in zip(levels, bits, strict=True):
        png = tf.io.encode_png(image, compression=9).numpy()
        assert length == 8 * len(png)
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        np.testing.assert_array_equal(decoded.reshape(image.shape), image)
    assert bits[0] < bits[1] < bits[2]
    assert bits[2] > 8 * levels[2].size


def test_levels_are_the_pixels_the_run_scored():
    """Binarized pixels become 0/255, intensities level / 255 their level, and
    the gaussian's dequantized (level + u) / 256 their level."""
    from tfvae.model import VAE

    level = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1)
    bernoulli, gaussian = VAE(latent_dim=2), VAE(latent_dim=2, likelihood="gaussian")
    assert (image_levels(bernoulli, level / 255.0).numpy() == level).all()
    u = np.random.default_rng(3).random(level.shape).astype(np.float32) * 0.999
    assert (image_levels(gaussian, (level + u) / 256.0).numpy() == level).all()
    binary = (level > 100).astype(np.float32)
    assert set(np.unique(image_levels(bernoulli, binary).numpy())) == {0, 255}


def test_the_threshold_flags_at_most_the_rate_asked_and_no_fewer_than_it_can():
    """On n scores, the threshold flags floor(fpr * n) of them when there
    are no ties: never more than the rate, and as many as it allows."""
    scores = np.random.default_rng(1).normal(size=10_000)
    for fpr in (0.001, 0.01, 0.05, 0.5):
        threshold = threshold_for_fpr(scores, fpr)
        assert np.sum(scores > threshold) == math.floor(fpr * len(scores))


def test_flagging_the_normal_images_gives_the_rate_asked(run_with_validation, tmp_path):
    """Scored on the validation images the threshold was set on, the outliers
    are 1% of them, as asked; the summary beside the rows says so."""
    out = tmp_path / "scores.csv"
    result = invoke("score", run_with_validation, "--split", "validation", "-k", "2", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert len(rows) == 400 and summary["threshold_images"] == 400
    assert summary["threshold_split"] == "validation" and summary["fpr"] == 0.01
    assert summary["score"] == "regret"  # the default for one stochastic layer
    flagged = sum(int(row["outlier"]) for row in rows)
    assert flagged == summary["outliers"] == 4  # floor(0.01 * 400), as no two scores tie
    assert [int(row["index"]) for row in rows] == list(range(400))
    assert all(float(row["score"]) > summary["threshold"] for row in rows if row["outlier"] == "1")


def test_a_run_on_the_first_images_sets_its_threshold_on_the_images_after_them(
    tiny_finished_run, tmp_path
):
    """Without validation images, a run trained on the first 256 images gets
    its threshold from training images it never saw, as JSON Lines."""
    out = tmp_path / "scores.jsonl"
    options = ["-k", "1", "-o", out, "--fpr", "0.05", "--score", "complexity", "--json"]
    result = invoke("score", tiny_finished_run, *options)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["threshold_split"] == "unseen training"
    assert summary["threshold_images"] == 10_000
    assert summary["fpr_on_threshold_images"] == pytest.approx(0.05, abs=1e-4)
    assert len(rows) == 256 and [row["label"] for row in rows[:3]] == [7, 2, 1]
    assert summary["files"][-1].endswith("outliers.png")
    top = max(rows, key=lambda row: row["score"])
    assert summary["most_anomalous"][0] == top


@pytest.mark.parametrize("streamed", [False, True])
def test_rows_keep_the_folders_order_and_name_each_file(
    tiny_finished_run, tmp_path, monkeypatch, streamed
):
    """`--dataset images:DIR` scores all of the set: train rows then test
    rows, each in the folder's order, each naming its file; its code length is that of its
    own file's pixels (black-and-white images, so the binarization is exact)."""
    from tfvae.data.streams import STREAM_ENV

    rng = np.random.default_rng(2)
    folder = tmp_path / "images"
    for i in range(30):
        strokes = rng.random((28, 28)) < (i + 1) / 40  # each image a different density
        path = folder / f"c{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strokes.astype(np.uint8) * 255).save(path)
    if streamed:
        monkeypatch.setenv(STREAM_ENV, "0")
    out = tmp_path / "scores.csv"
    options = ["--dataset", f"images:{folder}", "--no-threshold"]  # all of a set, unasked
    options += ["--score", "complexity"]  # the rows' order is the subject, not the score
    result = invoke("score", tiny_finished_run, *options, "-k", "1", "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [row["split"] for row in rows] == ["train"] * 27 + ["test"] * 3
    assert json.loads((tmp_path / "scores.summary.json").read_text())["split"] == "all"
    assert "outlier" not in rows[0]
    for row in rows:
        levels = np.asarray(Image.open(row["path"]))[None, ..., None]
        assert float(row["complexity_bits"]) == complexity_bits(tf.constant(levels)).numpy()[0]
        assert row["label"] == str(int(Path(row["path"]).parent.name[1]))


def test_the_corrected_scores_flag_blank_images_the_likelihood_prefers():
    """Nalisnick et al.'s trap on the committed 660-epoch model: all-black
    images get a *higher* likelihood than nearly every test digit (the raw
    NLL's AUROC below 0.1; only some 1s are likelier); the NLL less the PNG
    code length ranks them above every digit, and the Likelihood Regret (the
    default for this one-layer model) above 95% of them."""
    run, images = run_images(PUBLISHED, limit=300)
    blank = np.zeros((50, 28, 28, 1), np.float32)
    normal = score(run.model, images, k=10, regret=True)
    anomalous = score(run.model, blank, k=10, regret=True)

    def auroc(name):  # P(an anomaly scores above a digit), over all pairs
        return np.mean(anomalous[name][:, None] > normal[name][None, :])

    assert auroc("nll") < 0.1
    assert auroc("score_complexity") == 1.0
    assert auroc("score_regret") > 0.95


def test_the_regret_is_what_refitting_q_gains_and_largest_for_the_unlike():
    """The Likelihood Regret refits q to each image: the ELBO never drops
    (the same fixed draws before and after, so a loss would be the
    optimizer's), and all-black images, which the encoder never met, gain
    more than the digits it was trained on."""
    run, images = run_images(PUBLISHED, limit=200)
    digits = likelihood_regret(run.model, images)
    blank = likelihood_regret(run.model, np.zeros((20, 28, 28, 1), np.float32))
    assert digits.min() > -1e-3 and blank.min() > -1e-3
    assert np.median(blank) > np.quantile(digits, 0.9)


def test_score_regret_writes_each_images_regret(tiny_finished_run, tmp_path):
    out = tmp_path / "scores.csv"
    options = ["--score", "regret", "--no-threshold", "-k", "1", "-o", out]
    assert invoke("score", tiny_finished_run, *options).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    run, images = run_images(tiny_finished_run)
    want = likelihood_regret(run.model, images)
    np.testing.assert_allclose([float(row["score"]) for row in rows], want, rtol=1e-6)
    assert json.loads((tmp_path / "scores.summary.json").read_text())["score"] == "regret"


def test_the_regret_refuses_a_model_of_several_layers():
    from tfvae.errors import TfvaeError
    from tfvae.model import VAE

    model = VAE(latent_dim=(4, 2), hidden_units=(16,))
    with pytest.raises(TfvaeError, match="one-layer q"):
        likelihood_regret(model, np.zeros((2, 28, 28, 1), np.float32))


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--fpr", "0"], "'--fpr'"),
        (["--fpr", "1.5"], "'--fpr'"),
        (["--split", "everything"], "'--split'"),
        (["-o", "scores.txt"], ".csv or .jsonl"),
        (["--score", "loudest"], "'--score'"),
    ],
)
def test_bad_options_are_one_line(tiny_finished_run, options, said, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("score", tiny_finished_run, *options)
    assert result.exit_code in (1, 2), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and said in errors[0], result.output
    assert not list(tmp_path.iterdir())


def test_an_empty_folder_and_a_run_with_no_unseen_images_are_one_line(tmp_path):
    from harness import FINISHED_RUN_0_1_0

    (tmp_path / "empty").mkdir()
    result = invoke("score", FINISHED_RUN_0_1_0, "--dataset", f"images:{tmp_path / 'empty'}")
    assert_clean_failure(result, "no image files")
    result = invoke("score", FINISHED_RUN_0_1_0, "-o", tmp_path / "s.csv")
    assert_clean_failure(result, "held none out", "--validation", "--no-threshold")
    assert not list(tmp_path.glob("s*"))
