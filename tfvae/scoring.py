"""A score for every image: the ELBO's terms, the importance-weighted NLL, the
image's lossless code length and an anomaly score from them, one row per
image in the input's order, and a threshold set on normal images only.

A raw likelihood is a known trap for anomaly detection: images simpler than
the training set (a blank page, a smooth background) can be *more* likely
under the model than its own test images (Nalisnick et al., 2019). Two
scores correct for it: the Likelihood Regret (Xiao et al., 2020), how much an
image's ELBO rises when q(z|x) is refitted to it alone, the default for
one-layer models; and `complexity`, which subtracts what a generic lossless
compressor needs for the same image (Serrà et al., 2020), the default for
several stochastic layers. docs/results/scoring.md#which-score-flags-anomalies has the measurements
behind the choice.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from tfvae import plots
from tfvae.data import RunData, load_dataset
from tfvae.data.pipelines import array_batches
from tfvae.durable import atomic_path, write_atomic
from tfvae.errors import DataError, RunError, TfvaeError
from tfvae.evaluation import elbo_term_batches, iw_log_likelihood
from tfvae.layers import diag_normal
from tfvae.progress import Progress
from tfvae.runs import open_run

# Anomaly scores, higher meaning more anomalous, by the name `--score` takes.
SCORES = {
    "nll": "-ln p(x), the importance-weighted estimate, in nats",
    "complexity": "NLL in bits minus the image's PNG code length in bits (Serra et al.)",
    "regret": "the ELBO gained when q(z|x) is refitted to the image alone (Xiao et al.), nats",
}
# The Likelihood Regret's refit: Adam steps on each image's own q, their
# learning rate, and the fixed draws of z its ELBO is averaged over.
REGRET_STEPS = 100
REGRET_LEARNING_RATE = 0.05
REGRET_SAMPLES = 8
REGRET_SEED = 3
# Splits `tfvae score` takes: a run's own, or `all` of them in this order.
SCORE_SPLITS = ("test", "train", "validation", "all")
# Unseen training images scored to set a threshold, at most.
MAX_NORMAL_IMAGES = 10_000
# What `ScoreReport.write` writes, by the path's suffix.
ROW_FORMATS = (".csv", ".jsonl")


def check_rows_path(path: str | Path) -> Path:
    """`path` if its suffix names a rows format (`ROW_FORMATS`), else a one-line error."""
    path = Path(path)
    if path.suffix.lower() not in ROW_FORMATS:
        raise TfvaeError(f"{path}: tfvae writes scores as .csv or .jsonl files; give one of those")
    return path


def image_levels(model, images: tf.Tensor) -> tf.Tensor:
    """The 8-bit levels behind `images` `[n, h, w, c]` as `model` scores them,
    uint8: floor(256 x) for the dequantized `gaussian` ((level + u) / 256),
    else round(255 x) (intensities level / 255, or 0/1 pixels as 0/255)."""
    images = tf.convert_to_tensor(images, tf.float32)
    if model.decoder.likelihood.name == "gaussian":
        levels = tf.floor(images * 256.0)
    else:
        levels = tf.round(images * 255.0)
    return tf.cast(tf.clip_by_value(levels, 0.0, 255.0), tf.uint8)


def complexity_bits(levels: tf.Tensor) -> tf.Tensor:
    """Each image's lossless code length in bits, float32 `[n]`: the size of
    its PNG (zlib level 9) from TensorFlow's own encoder, so the SavedModel's
    `score` signature computes the same figure.

    PNG because it is the lossless format image folders hold and its filters
    use the 2-D neighbourhood a byte compressor (zlib, lzma, bz2 on the raw
    pixels) ignores; its fixed container overhead is the same for every
    image of a shape, so it never changes a ranking. `levels`: uint8
    `[n, h, w, c]`, c = 1 or 3.
    """

    def png_bytes(image):
        return tf.strings.length(tf.io.encode_png(image, compression=9))

    lengths = tf.map_fn(png_bytes, levels, fn_output_signature=tf.int32)
    return 8.0 * tf.cast(lengths, tf.float32)


def likelihood_regret(
    model, images: np.ndarray, batch_size: int = 500, seed: int = REGRET_SEED, labels=None
) -> np.ndarray:
    """Each image's Likelihood Regret (Xiao, Yan & Amit, 2020), `[n]` float64
    nats (`regret_of_batch`, `batch_size` images at a time, the draws of z
    seeded by `seed` and the batch's first index)."""
    check_regret(model)

    @tf.function(autograph=False, reduce_retracing=True)
    def regret(x, y, first):
        return regret_of_batch(model, x, seed=tf.stack([seed, first]), labels=y)

    out = []
    for first, x in array_batches(images, batch_size):
        y = model.batch_labels(labels, first, len(x))
        out.append(regret(tf.constant(x), y, tf.constant(first)).numpy().astype(np.float64))
    return np.concatenate(out)


def check_regret(model) -> None:
    """A one-line error for a model the regret's one-layer refit cannot take."""
    if len(model.latent_dims) != 1:
        raise TfvaeError("the Likelihood Regret refits a one-layer q(z|x); this model has several")


def regret_of_batch(model, x: tf.Tensor, seed, labels=None) -> tf.Tensor:
    """How much each image's ELBO rises when q(z|x) is fitted to that image
    alone, `[batch]` float32 nats: `REGRET_STEPS` Adam steps on q's mean and
    log-stddev from the encoder's, the ELBO averaged over `REGRET_SAMPLES`
    fixed draws of z (stateless `seed`, the same before and after). An image
    like the training images gains little (the encoder already fits it); an
    unlike one gains much. Xiao et al. refit the encoder's weights per image;
    refitting q's parameters directly measures the same gap, batched, and in
    a graph (the SavedModel's `score` signature). One stochastic layer only;
    a conditional VAE's given the images' `labels`."""
    prior = model.top_prior()
    shape = tf.stack([REGRET_SAMPLES, tf.shape(x)[0], model.latent_dims[0]])
    noise = tf.random.stateless_normal(shape, seed=seed, alg="philox")

    def elbo(params):  # params [b, 2 d]: ELBO [b]
        mean, log_std = tf.split(params, 2, axis=-1)
        z = mean + tf.exp(log_std) * noise
        q = diag_normal(mean, tf.exp(log_std))  # no bijector: its cache would keep every graph
        log_px_z = model.log_likelihood(x, z, labels)
        return tf.reduce_mean(log_px_z + prior.log_prob(z) - q.log_prob(z), 0)

    def step(i, params, m, v):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = -tf.reduce_sum(elbo(params))
        g = tape.gradient(loss, params)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        t = tf.cast(i + 1, tf.float32)
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        return i + 1, params - REGRET_LEARNING_RATE * m_hat / (tf.sqrt(v_hat) + 1e-8), m, v

    mean, std = model.encoder.top_params(x, labels)
    start = tf.concat([mean, tf.math.log(std)], -1)
    zeros = tf.zeros_like(start)
    _, fitted, _, _ = tf.while_loop(lambda i, *_: i < REGRET_STEPS, step, (0, start, zeros, zeros))
    return elbo(fitted) - elbo(start)


def default_score(model) -> str:
    """The anomaly score `tfvae score` gives unless asked: the Likelihood
    Regret where it applies (one stochastic layer), else `complexity`."""
    return "regret" if len(model.latent_dims) == 1 else "complexity"


def anomaly_scores(nll, bits):
    """`SCORES` by name from the NLL (nats) and the code length (bits),
    NumPy or TensorFlow values alike, each `[n]`."""
    return {"nll": nll, "complexity": nll / math.log(2) - bits}


def score(
    model,
    images: np.ndarray,
    k: int = 1,
    progress: Callable[[int], None] | None = None,
    regret: bool = False,
    labels=None,
) -> dict[str, np.ndarray]:
    """Score every image: the ELBO's terms, the NLL, its code length and the
    anomaly scores, as `tfvae score` writes them.

    Args:
        model (VAE): The model.
        images: float32 `[n, height, width, channels]`, as the model scores
            them (`ImageDataset.scored`).
        k: Importance samples per image of the NLL estimate.
        progress: Called with `n` after each chunk of `n` (image, sample)
            pairs of the NLL estimate.
        regret: Also compute the Likelihood Regret, which costs
            `REGRET_STEPS` gradient steps an image (one-layer models only).
        labels (np.ndarray | None): A conditional VAE's classes, int `[n]`:
            each image is scored given its class.

    Returns:
        Columns, each float64 `[n]` in the order of `images`: `elbo`, `kl`,
            `log_likelihood` (one z per image from its fixed key), `nll` (the
            IW estimate at `k`, nats), `bits_per_dim`, `complexity_bits`
            (the PNG code length), and a `score_<name>` column per anomaly
            score of `SCORES` (`score_regret` only with `regret`).

    Raises:
        TfvaeError: `regret` for a model of several stochastic layers.
    """
    columns = _elbo_columns(model, images, labels)
    columns["nll"] = -iw_log_likelihood(model, images, k=k, progress=progress, labels=labels)
    dims = math.prod(images.shape[1:])
    columns["bits_per_dim"] = columns["nll"] / (dims * math.log(2))
    columns["complexity_bits"] = _complexity_column(model, images)
    scores = anomaly_scores(columns["nll"], columns["complexity_bits"])
    if regret:
        scores["regret"] = likelihood_regret(model, images, labels=labels)
    return columns | {f"score_{name}": values for name, values in scores.items()}


def _elbo_columns(model, images, labels) -> dict[str, np.ndarray]:
    """The ELBO's terms per image, float64 `[n]` each (one z per image)."""
    terms = {name: [] for name in ("elbo", "kl", "log_likelihood")}
    for batch in elbo_term_batches(model, images, labels=labels):
        for name in terms:
            terms[name].append(batch[name].astype(np.float64))
    return {name: np.concatenate(parts) for name, parts in terms.items()}


def _complexity_column(model, images) -> np.ndarray:
    """Each image's PNG code length in bits, float64 `[n]`."""

    @tf.function(reduce_retracing=True, autograph=False)  # a PNG per image: eager is far slower
    def bits_of(x):
        return complexity_bits(image_levels(model, x))

    bits = [bits_of(tf.constant(x)).numpy() for _, x in array_batches(images, 1000)]
    return np.concatenate(bits).astype(np.float64)


def threshold_for_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """The threshold that flags (score > threshold) as many of
    `normal_scores` as a false-positive rate of `fpr` allows, floor(fpr * n),
    and never more: the (n - floor(fpr * n))-th smallest score (fewer are
    flagged only where scores tie)."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must lie strictly between 0 and 1, got {fpr}")
    ordered = np.sort(np.asarray(normal_scores, np.float64))
    allowed = math.floor(fpr * len(ordered) + 1e-9)  # 0.07 * 100 is 7.000000000000001
    return float(ordered[len(ordered) - allowed - 1])


@dataclasses.dataclass(frozen=True)
class ScoredSplit:
    """One split's rows: `columns` of `score` plus `split`, `index`, and
    `label` / `path` where the set has them; `images` as scored, for pictures."""

    columns: dict[str, np.ndarray]
    images: np.ndarray


@dataclasses.dataclass(frozen=True)
class ScoreReport:
    """What `tfvae score` writes: one row per image (`rows`, columns of equal
    length) and what the flag rests on (`summary`: the score, the threshold,
    the normal split it was set on and its false-positive rate)."""

    rows: dict[str, np.ndarray]
    summary: dict
    images: list[np.ndarray]

    def most_anomalous(self, n: int) -> np.ndarray:
        """The positions of the `n` highest scores, highest first."""
        return np.argsort(-self.rows["score"], kind="stable")[:n]

    def row(self, position: int) -> dict:
        """Row `position` as plain Python values."""
        return {key: values[position].item() for key, values in self.rows.items()}

    def write(self, path: Path) -> list[Path]:
        """The rows as CSV, or JSON Lines for a `.jsonl` path, and the
        summary beside them (`<stem>.summary.json`), each written atomically,
        row by row."""
        path = check_rows_path(path)
        summary = path.with_name(f"{path.stem}.summary.json")
        with atomic_path(path) as temp, temp.open("w", newline="") as stream:
            if path.suffix.lower() == ".jsonl":
                for i in range(len(self.rows["score"])):
                    stream.write(json.dumps(self.row(i)) + "\n")
            else:
                writer = csv.DictWriter(stream, fieldnames=list(self.rows), lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.row(i) for i in range(len(self.rows["score"])))
        write_atomic(summary, json.dumps(self.summary, indent=2) + "\n")
        return [path, summary]

    def picture(self, n: int = 32) -> Image.Image:
        """The `n` most anomalous images, highest score first, each captioned
        with its score."""
        top = self.most_anomalous(n)
        images = self.images_at(top)
        return plots.captioned(images, [f"{self.rows['score'][i]:.1f}" for i in top])

    def images_at(self, positions: np.ndarray) -> np.ndarray:
        """The scored images of rows `positions`, float32 `[m, h, w, c]`, in
        that order: one pass over each split (streamed splits are read in
        batches, not an image at a time)."""
        found, first = {}, 0
        for images in self.images:
            wanted = {int(p) - first for p in positions if first <= p < first + len(images)}
            if wanted:
                for start, batch in array_batches(images, 1000):
                    for i in wanted & set(range(start, start + len(batch))):
                        found[first + i] = batch[i - start]
            first += len(images)
        return np.stack([found[int(p)] for p in positions])


def score_report(
    run_dir: str | Path,
    dataset: str | None = None,
    split: str | None = None,
    k: int = 1,
    score_name: str | None = None,
    fpr: float | None = 0.01,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score every image of a split and flag the anomalies, as `tfvae score`
    does, with a threshold set on normal images the run never trained on (its
    validation images, or the training images after its `--limit`).

    Args:
        run_dir: A run folder or model file, as `open_run` takes it.
        dataset: Another set (as `load_dataset` takes it); None: the run's own.
        split: `test`, `train`, `validation` or `all`; None: `test` (`all` with `dataset`).
        k: Importance samples per image of the NLL estimate.
        score_name: One of `SCORES`; None: `regret` for one stochastic layer,
            else `complexity`.
        fpr: The false-positive rate on the normal images; None: no threshold.
        progress: Hears each stage.

    Returns:
        The `rows` (one per image: the scores and, with a threshold,
            `outlier`) and the `summary` the flag rests on; `write` saves them.

    Raises:
        TfvaeError: An unknown score or split, an `fpr` outside (0, 1), or
            `regret` for several stochastic layers.
        RunError, DataError: No normal images to set the threshold on.
    """
    split = split or ("test" if dataset is None else "all")
    _check_options(score_name, split, fpr)
    progress = progress or Progress.quiet()
    run = open_run(run_dir)
    score_name = score_name or default_score(run.model)
    if regret := score_name == "regret":
        check_regret(run.model)
    source = run.data(dataset, progress)
    normal = _normal_source(run, source, dataset, progress) if fpr is not None else None
    scored = functools.partial(_score_split, run, k=k, progress=progress, regret=regret)
    parts = {name: scored(source, name) for name in _splits(source, split)}
    rows = _rows(list(parts.values()), score_name)
    what = {"run": str(run_dir), "dataset": dataset or run.state.config.dataset, "split": split}
    summary = what | {"n_images": int(len(rows["score"])), "k": k, "score": score_name}
    summary["score_means"] = SCORES[score_name]
    if normal is not None:
        summary |= _threshold(rows, normal, source, parts, scored, score_name, fpr)
    return ScoreReport(rows, summary, [part.images for part in parts.values()])


def _threshold(rows, normal, source, parts, scored, score_name: str, fpr: float) -> dict:
    """The threshold at `fpr` on the normal images' scores (those of a split
    scored already are not scored again), and the rows' outlier flags."""
    normal_source, normal_split, called = normal
    same = normal_source is source and normal_split in parts
    normal_part = parts[normal_split] if same else scored(normal_source, normal_split)
    flagged = _flag(rows, normal_part.columns[f"score_{score_name}"], fpr)
    return flagged | {"threshold_split": called}


def _check_options(score_name: str | None, split: str, fpr: float | None) -> None:
    """One line for a score, split or rate `score_report` does not take."""
    if score_name is not None and score_name not in SCORES:
        raise TfvaeError(f"unknown score {score_name!r}; use one of {', '.join(SCORES)}")
    if split not in SCORE_SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SCORE_SPLITS)}")
    if fpr is not None and not 0.0 < fpr < 1.0:
        raise TfvaeError(f"--fpr {fpr}: a false-positive rate lies strictly between 0 and 1")


def _flag(rows: dict[str, np.ndarray], normal_scores: np.ndarray, fpr: float) -> dict:
    """Add the `outlier` column: a score above the threshold set at `fpr` on
    `normal_scores`. Returns what the flag rests on."""
    threshold = threshold_for_fpr(normal_scores, fpr)
    rows["outlier"] = (rows["score"] > threshold).astype(np.int64)
    return {
        "fpr": fpr,
        "threshold": threshold,
        "threshold_images": int(len(normal_scores)),
        "fpr_on_threshold_images": float(np.mean(normal_scores > threshold)),
        "outliers": int(rows["outlier"].sum()),
    }


def _rows(parts: list[ScoredSplit], score_name: str) -> dict[str, np.ndarray]:
    """The splits' columns one after the other (those every split has), the
    chosen anomaly score as `score`."""
    shared = [key for key in parts[0].columns if all(key in part.columns for part in parts)]
    rows = {key: np.concatenate([part.columns[key] for part in parts]) for key in shared}
    rows["score"] = rows.pop(f"score_{score_name}")
    return {key: value for key, value in rows.items() if not key.startswith("score_")}


def _splits(source: RunData, split: str) -> list[str]:
    """The splits `split` names: itself, or for `all` each one the source has."""
    if split != "all":
        return [split]
    held = source.validation is not None
    return ["train", "validation", "test"] if held else ["train", "test"]


def _normal_source(
    run, source: RunData, dataset: str | None, progress: Progress
) -> tuple[RunData, str, str]:
    """Where the normal images the run never trained on are, their split and
    what they are called:
    its validation split, else (a run on the first `--limit` images) up to
    `MAX_NORMAL_IMAGES` of the training images after them (as `test` of the
    source returned); a run that saw every training image has none, and a
    model file does not say which it saw. `source` is the data scored, which
    is the run's own unless `dataset` names another set."""
    if run.file is not None:
        raise RunError(
            f"{run.file}: a model file does not say which images it never trained on, so no "
            "threshold can be set; score its run folder, or score with --no-threshold"
        )
    run_data = source if dataset is None else run.data(None, progress)
    if run_data.validation is not None:
        return run_data, "validation", "validation"
    config = run.state.config
    full = load_dataset(config.dataset, config.data_dir, config.resize, progress)
    unseen = full.train_images[config.limit or len(full.train_images) :][:MAX_NORMAL_IMAGES]
    if len(unseen) == 0:
        raise DataError(
            f"{config.dataset}: the run trained on every training image and held none out, so "
            "no normal images are left to set the threshold on; train with --validation N, "
            "or score without a threshold (--no-threshold)"
        )
    unseen_labels = None
    if full.train_labels is not None:
        unseen_labels = full.train_labels[config.limit or len(full.train_labels) :]
        unseen_labels = np.asarray(unseen_labels[:MAX_NORMAL_IMAGES])
    as_test = dataclasses.replace(
        full, test_images=unseen, test_labels=unseen_labels, test_paths=None
    )
    return RunData(as_test, None, run_data.pixels), "test", "unseen training"


def _score_split(
    run, source: RunData, split: str, k: int, progress: Progress, regret: bool = False
) -> ScoredSplit:
    images = source.scored(split)
    labels, paths = source.facts(split)
    if run.model.conditional and labels is None:
        raise DataError(
            f"the {split} images have no labels, and this conditional model scores each image "
            "given its class; give a labelled set with --dataset"
        )
    what = f"Scoring the {len(images):,} {split} images, K={k:,}"
    with progress.stage(what, total=len(images) * k) as advance:
        columns = score(run.model, images, k=k, progress=advance, regret=regret, labels=labels)
    n = len(images)
    facts = {"split": np.full(n, split), "index": np.arange(n)}
    if paths is not None:
        facts["path"] = np.asarray(paths)
    if labels is not None:
        facts["label"] = np.asarray(labels)
    return ScoredSplit(facts | columns, images)
