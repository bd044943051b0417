"""The independent-pixel baseline for 8-bit bits/dim: one categorical over the
256 levels per pixel and channel, fitted on the training images with add-one
(Laplace) smoothing, scored on the test images.

    python benchmarks/pixel_baseline.py [--dataset mnist]

Any model that learns something about images should beat it; a VAE's
`tfvae evaluate --json` bits_per_dim is read against it. Writes
`benchmarks/results/pixel_baseline-<dataset>.json` with the machine.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_results  # noqa: E402

from tfvae.data import load_dataset  # noqa: E402
from tfvae.data.dataset import LEVELS  # noqa: E402


def level_counts(images: np.ndarray) -> np.ndarray:
    """How often each pixel takes each level, `[pixels, 256]`."""
    flat = images.reshape(len(images), -1).astype(np.int64)
    offsets = np.arange(flat.shape[1]) * LEVELS
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[1] * LEVELS)
    return counts.reshape(flat.shape[1], LEVELS)


def baseline_bits_per_dim(train: np.ndarray, test: np.ndarray) -> float:
    """Test bits/dim of per-pixel categoricals with add-one smoothing."""
    counts = level_counts(train) + 1.0
    log_p = np.log(counts / counts.sum(axis=1, keepdims=True))  # [pixels, 256]
    flat = test.reshape(len(test), -1).astype(np.int64)
    nll = -log_p[np.arange(flat.shape[1]), flat].sum(axis=1).mean()
    return float(nll / (flat.shape[1] * math.log(2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    bits = baseline_bits_per_dim(data.train_images, data.test_images)
    print(f"{args.dataset}: independent pixels, add-one smoothing: {bits:.4f} bits/dim (test)")
    name = args.dataset.replace(":", "-").replace("/", "-")
    write_results(
        f"pixel_baseline-{name}",
        {
            "machine": machine(with_gpus=False),
            "dataset": args.dataset,
            "n_train": int(len(data.train_images)),
            "n_test": int(len(data.test_images)),
            "test_bits_per_dim": bits,
        },
    )


if __name__ == "__main__":
    main()
