"""Does a per-image score tell anomalies from a run's own test images?

Out-of-distribution sets built offline from the run's test images (uint8
levels, then the run's own pixel treatment): all black, all mid-grey,
uniform noise, inverted intensities and digits rotated by 90 degrees. For each
anomaly score of `tfvae.scoring.SCORES`: the AUROC (normal = the first N test
images, positive = each set) and the false-positive rate at 95% true
positives. Written to results/anomaly-<run>.json with the machine.

    python benchmarks/anomaly.py benchmarks/runs/burda-elbo-k1-cosine660-val10k --k 100
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import struct
import time
from pathlib import Path

import numpy as np
from common import machine, quiet_tensorflow, write_results


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(an anomalous image scores above a normal one), ties counted half
    (the Mann-Whitney statistic over all pairs)."""
    both = np.concatenate([normal, anomalous])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks of ties
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(normal), len(anomalous)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def fpr_at_tpr(normal: np.ndarray, anomalous: np.ndarray, tpr: float = 0.95) -> float:
    """The fraction of normal images flagged when the threshold flags `tpr` of the anomalies."""
    threshold = np.quantile(anomalous, 1.0 - tpr, method="lower")
    return float(np.mean(normal >= threshold))


def anomaly_sets(levels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 `[n, h, w, c]` sets of the same shape as the run's test images."""
    rng = np.random.default_rng(seed)
    return {
        "all black": np.zeros_like(levels),
        "all mid-grey": np.full_like(levels, 128),
        "uniform noise": rng.integers(0, 256, levels.shape, dtype=np.uint8),
        "inverted": 255 - levels,
        "rotated 90": np.rot90(levels, 1, axes=(1, 2)).copy(),
    }


def write_mnist_without(digit: int, folder: Path) -> None:
    """The bundled MNIST without one digit, as the four IDX files of `folder`,
    for a run trained never to see it (`--held-out-class`)."""
    from tfvae.data import load_dataset

    mnist = load_dataset("mnist")
    folder.mkdir(parents=True, exist_ok=True)
    for split, images, labels in (
        ("train", mnist.train_images, mnist.train_labels),
        ("t10k", mnist.test_images, mnist.test_labels),
    ):
        keep = labels != digit
        for kind, array in (("images-idx3", images[keep][..., 0]), ("labels-idx1", labels[keep])):
            array = np.ascontiguousarray(array, np.uint8)
            head = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            (folder / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + array.tobytes()))


def held_out_digits(digit: int, n: int) -> np.ndarray:
    """The first `n` MNIST test images of `digit`, uint8 `[n, 28, 28, 1]`."""
    from tfvae.data import load_dataset

    mnist = load_dataset("mnist")
    return mnist.test_images[mnist.test_labels == digit][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--k", type=int, default=100, help="importance samples per image")
    parser.add_argument("--n", type=int, default=2000, help="normal and anomalous images per set")
    parser.add_argument(
        "--held-out-class",
        type=int,
        default=None,
        help="the run was trained on MNIST without this digit (--write-mnist-without): "
        "its test images are one more anomalous set",
    )
    parser.add_argument(
        "--write-mnist-without",
        type=int,
        default=None,
        help="write MNIST without this digit into RUN_DIR as an IDX folder, then stop",
    )
    args = parser.parse_args()
    quiet_tensorflow()
    if args.write_mnist_without is not None:
        write_mnist_without(args.write_mnist_without, args.run_dir)
        return
    from tfvae.data import RunData
    from tfvae.runs import RunFolder
    from tfvae.scoring import SCORES, score

    run = RunFolder(args.run_dir).load()
    run_data = RunData.load(run.state.config)
    pixels = run_data.pixels
    normal_levels = np.asarray(run_data.data.test_images[: args.n])
    sets = {"normal": normal_levels, **anomaly_sets(normal_levels)}
    if args.held_out_class is not None:
        digit = args.held_out_class
        sets[f"digit {digit} (held out)"] = held_out_digits(digit, args.n)
    scores, seconds = {}, {}
    for name, levels in sets.items():
        as_test = dataclasses.replace(run_data.data, test_images=levels, test_labels=None)
        images = np.asarray(as_test.scored("test", pixels))
        started = time.perf_counter()
        columns = score(run.model, images, k=args.k, regret=True)
        seconds[name] = time.perf_counter() - started
        scores[name] = {key: columns[f"score_{key}"] for key in SCORES}
        print(f"{name}: mean NLL {columns['nll'].mean():.2f} nats, {seconds[name]:.1f} s")
    table = {
        name: {
            key: {
                "auroc": auroc(scores["normal"][key], scores[name][key]),
                "fpr_at_95_tpr": fpr_at_tpr(scores["normal"][key], scores[name][key]),
            }
            for key in SCORES
        }
        for name in sets
        if name != "normal"
    }
    for name, row in table.items():
        cells = ", ".join(f"{key} AUROC {v['auroc']:.3f}" for key, v in row.items())
        print(f"{name}: {cells}")
    write_results(
        f"anomaly-{args.run_dir.name}",
        {
            "run": str(args.run_dir),
            "k": args.k,
            "n_per_set": args.n,
            "held_out_class": args.held_out_class,
            "pixels": pixels,
            "scores": SCORES,
            "sets": table,
            "seconds": seconds,
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
