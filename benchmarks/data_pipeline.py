"""The input pipeline alone, in images/s, against the model's training images/s.

Drains `tfvae.data.train_pipeline` (no model) for the default settings of
`tfvae train` (dynamic binarization: uint8 images and their keys, binarized
in the training step) and for static binarization (float32 binary images):
a warm-up pass, then the median of
`--epochs` timed passes. The batches are consumed inside a `tf.function`, as
`fit` consumes them. The training rate comes from
results/train_throughput.json when present, else from a short run of
train_throughput.py's default configuration. Target: pipeline >= 10x training.

    python benchmarks/data_pipeline.py [--epochs 5] [--quick] [--measure-training]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import (
    RESULTS_DIR,
    machine,
    peak_rss_mb,
    quiet_tensorflow,
    warn_if_busy,
    write_results,
)

if TYPE_CHECKING:
    from tfvae.config import TrainConfig
    from tfvae.data import ImageDataset

NAME = "data_pipeline"
TARGET_RATIO = 10.0
# (label, binarize); the first is what `tfvae train` uses.
VARIANTS = (("dynamic", "dynamic"), ("static", "static"))


def time_pipeline(
    data: ImageDataset, config: TrainConfig, binarize: str, epochs: int
) -> dict[str, Any]:
    """Seconds per pass over `train_pipeline(...)`: one warm-up, then `epochs` timed."""
    import tensorflow as tf

    from tfvae.data import train_pipeline

    dataset = train_pipeline(data, config.batch_size, binarize, config.seed)

    @tf.function
    def drain(ds):
        count = tf.constant(0, tf.int64)
        for batch in ds:
            count += tf.shape(batch["keys"], out_type=tf.int64)[0]
        return count

    seconds = []
    for _ in range(1 + epochs):
        start = time.perf_counter()
        count = int(drain(dataset))
        seconds.append(time.perf_counter() - start)
    n = len(data.train_images)
    assert count == n, f"the pipeline gave {count} images, expected {n}"
    median_s = statistics.median(seconds[1:])
    return {
        "binarize": binarize,
        "pass_s": [round(s, 4) for s in seconds],
        "median_s_per_pass": median_s,
        "images_per_s": n / median_s,
    }


def training_rate(path: Path, measure: bool, epochs: int) -> tuple[float, str, dict[str, Any]]:
    """tfvae's default training images/s, where it came from, and all configs known."""
    import train_throughput

    if not measure and path.is_file():
        results = json.loads(path.read_text())
        found = train_throughput.training_rate(results)
        if found:
            return found[0], f"{path.name}: {found[1]}", results.get("configs", {})
    row = train_throughput.measure(train_throughput.default_case(), epochs, limit=None)
    return row["images_per_s"], "measured now (TrainConfig() defaults)", {"default": row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="timed passes after 1 warm-up (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 timed pass per measurement")
    parser.add_argument(
        "--throughput-json",
        type=Path,
        help="training results to compare with (default results/train_throughput.json; "
        "with --quick, else train_throughput.quick.json)",
    )
    parser.add_argument(
        "--measure-training", action="store_true", help="time training now, ignore the JSON"
    )
    parser.add_argument("--out", type=Path, help="results file (default results/NAME.json)")
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 5)
    out = args.out or RESULTS_DIR / (f"{NAME}.quick.json" if args.quick else f"{NAME}.json")

    warn_if_busy()
    throughput_json = args.throughput_json or RESULTS_DIR / "train_throughput.json"
    if args.quick and not args.throughput_json and not throughput_json.is_file():
        throughput_json = RESULTS_DIR / "train_throughput.quick.json"
    # Training first, in its own process, before this one starts TensorFlow.
    train_ips, source, configs = training_rate(
        throughput_json, args.measure_training, max(1, min(epochs, 2))
    )
    fastest_name, fastest_ips = max(
        ((name, row["images_per_s"]) for name, row in configs.items() if "images_per_s" in row),
        key=lambda item: item[1],
        default=(None, train_ips),
    )

    quiet_tensorflow()
    import keras

    from tfvae.config import TrainConfig
    from tfvae.data import load_dataset

    config = TrainConfig()
    data = load_dataset(config.dataset)
    keras.utils.set_random_seed(config.seed)
    rows = {}
    print(f"training (default): {train_ips:.0f} img/s [{source}]")
    print(f"fastest training config measured: {fastest_name} {fastest_ips:.0f} img/s")
    print(f"{'pipeline':14s} {'s/pass':>7s} {'img/s':>9s} {'x default':>10s} {'x fastest':>10s}")
    for label, binarize in VARIANTS:
        row = time_pipeline(data, config, binarize, epochs)
        row["ratio_to_default_training"] = row["images_per_s"] / train_ips
        row["ratio_to_fastest_training"] = row["images_per_s"] / fastest_ips
        rows[label] = row
        print(
            f"{label:14s} {row['median_s_per_pass']:7.3f} {row['images_per_s']:9.0f} "
            f"{row['ratio_to_default_training']:9.1f}x {row['ratio_to_fastest_training']:9.1f}x",
            flush=True,
        )
    default_ratio = rows[VARIANTS[0][0]]["ratio_to_default_training"]
    verdict = "meets" if default_ratio >= TARGET_RATIO else "MISSES"
    print(f"default pipeline / default training = {default_ratio:.1f}x: {verdict} the 10x target")
    payload = {
        "machine": machine(),
        "settings": {"epochs": epochs, "batch_size": config.batch_size, "quick": args.quick},
        "training_images_per_s": train_ips,
        "training_source": source,
        "fastest_training": {"name": fastest_name, "images_per_s": fastest_ips},
        "pipelines": rows,
        "target_ratio": TARGET_RATIO,
        "default_ratio": default_ratio,
        "meets_target": default_ratio >= TARGET_RATIO,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(f"wrote {write_results(NAME, payload, out)}")
    warn_if_busy()


if __name__ == "__main__":
    main()
