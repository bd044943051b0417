"""Peak memory of `tfvae train` on image folders of growing size: a folder
of 100,000 32x32 colour PNGs (streamed from disk) against one of 2,000
(decoded into memory). Target: the peak RSS of the large folder within
200 MiB of the small one's.

Each folder is written once (random colour pixels: PNG cannot compress
them, so the files are as large as such images get) under `--workdir`, then
trained for `--epochs` epochs in a child process, whose peak RSS the kernel
reports (`os.wait4`); the seconds include decoding every file once to check
it, which a streamed folder does before training.

    python benchmarks/stream_memory.py [--sizes 2000 100000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import machine, quiet_tensorflow, warn_if_busy, write_results

NAME = "stream_memory"
SHAPE = (32, 32, 3)
TARGET_MIB = 200


def write_folder(folder: Path, n: int) -> Path:
    """`n` random colour PNGs in 10 class folders (kept between runs)."""
    from PIL import Image

    done = folder / ".complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"class{i % 10}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, SHAPE, dtype=np.uint8)).save(path)
    done.touch()
    return folder


def train_peak(folder: Path, run_dir: Path, epochs: int) -> dict:
    """Train on `folder` in a child; its peak RSS (MiB), seconds and test scores."""
    command = [
        sys.executable,
        "-m",
        "tfvae",
        "train",
        "--dataset",
        f"images:{folder}",
        "--epochs",
        str(epochs),
        "--run-dir",
        str(run_dir),
        "--overwrite",
        "--json",
    ]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate()
    # communicate() has reaped the child; its rusage went to RUSAGE_CHILDREN,
    # so each size runs in a fresh interpreter of its own (see main).
    seconds = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"tfvae train failed on {folder}: {stderr.strip().splitlines()[-1]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "test": report["test"]}


def measure(n: int, workdir: Path, epochs: int) -> dict:
    """One folder size, measured in this (fresh) process."""
    import resource

    folder = write_folder(workdir / f"png-{n}", n)
    result = train_peak(folder, workdir / f"run-{n}", epochs)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    decoded_mib = n * int(np.prod(SHAPE)) / 2**20
    return {
        "images": n,
        "decoded_mib": round(decoded_mib, 1),
        "peak_rss_mib": peak_kib / 1024,
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 100_000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(".cache/stream-memory"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.workdir, args.epochs)))
        return
    quiet_tensorflow()
    warn_if_busy()
    rows = []
    for n in args.sizes:
        # A fresh parent per size: RUSAGE_CHILDREN is the peak of all children so far.
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--epochs",
                str(args.epochs),
                "--workdir",
                str(args.workdir),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{row['images']:>7} images ({row['decoded_mib']:.0f} MiB decoded): "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB, {row['seconds']:.0f} s"
        )
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    print(
        f"peak RSS grows by {growth:.0f} MiB from the smallest folder to the largest "
        f"(target <= {TARGET_MIB})"
    )
    path = write_results(
        NAME,
        {
            "epochs": args.epochs,
            "stream_above_mib": os.environ.get("TFVAE_STREAM_ABOVE_MB", "64 (default)"),
            "rows": rows,
            "growth_mib": round(growth, 1),
            "target_mib": TARGET_MIB,
            "machine": machine(with_gpus=False),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
