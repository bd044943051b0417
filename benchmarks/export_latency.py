"""Decode latency per image of each export next to the Keras model, with file sizes.

Builds (or loads with --model) a VAE, exports it as a SavedModel and as TFLite
files in every quantization, then times decoding a batch of codes at batch 1
and 64 (median of repeated runs, reported per image). Every runtime is timed
once per round, in turn, and the median and the best of the rounds are
reported (every round too): on a shared machine the speed drifts, and
rounds taken in turn shift every runtime alike. The int8 file is timed
on int8 codes in and int8 pixels out: quantizing and dequantizing them is the
app's (small) share, not timed. Writes benchmarks/results/export_latency.json
with the machine it ran on.

    python benchmarks/export_latency.py [--model RUN/model.keras] [--seconds 1.0] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfvae import export
from tfvae.model import VAE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model  # noqa: E402

BATCHES = (1, 64)
RESULTS = Path(__file__).parent / "results" / "export_latency.json"


def per_image_us(fn: Callable[[], object], batch: int, seconds: float) -> float:
    """Median over repeats of (time of one call) / batch, in microseconds."""
    for _ in range(5):  # warm-up: tracing, allocation
        fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * 1e6


def file_input(runner, z: np.ndarray) -> np.ndarray:
    """`z` as the file takes it: quantized with the file's own scale and
    zero_point when its input is int8, unchanged when float."""
    details = runner.get_input_details()["z"]
    scale, zero_point = details["quantization"]
    if not scale:
        return z
    return np.clip(np.round(z / scale) + zero_point, -128, 127).astype(details["dtype"])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved .keras model (default: a fresh 784-400-20 VAE)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="times every runtime in turn")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.model:
        import keras

        model = keras.saving.load_model(args.model)
    else:
        model = VAE()
        model.build()
    rng = np.random.default_rng(0)
    codes = {b: rng.normal(size=(b, model.latent_dim)).astype(np.float32) for b in BATCHES}

    from ai_edge_litert.interpreter import Interpreter

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        version = export.export_savedmodel(model, tmp, "vae")
        decode_sm = tf.saved_model.load(str(version)).signatures["decode"]
        keras_fn = tf.function(lambda z: tf.sigmoid(model.decoder.outputs(z)))
        candidates: list[tuple[str, int | None, Callable[[np.ndarray], object]]] = [
            ("keras eager (decode().mean())", None, lambda z: model.decode(z).mean()),
            ("keras tf.function", None, keras_fn),
            ("savedmodel signature", folder_bytes(version), lambda z: decode_sm(z=z)),
        ]
        for quantize in export.QUANTIZATIONS:
            folder = export.export_tflite(model, Path(tmp) / quantize, "vae", quantize=quantize)
            path = folder / "decoder.tflite"
            runner = Interpreter(model_path=str(path)).get_signature_runner("decode")
            candidates.append((f"tflite {quantize} (ai_edge_litert)", path.stat().st_size, runner))
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for label, _size, fn in candidates:
                for batch in BATCHES:
                    if label.startswith("tflite"):
                        call = functools.partial(fn, z=file_input(fn, codes[batch]))
                    else:
                        call = functools.partial(fn, tf.constant(codes[batch]))
                    us = per_image_us(call, batch, args.seconds)
                    times.setdefault((label, batch), []).append(round(us, 2))
        for label, size, _fn in candidates:
            row: dict[str, object] = {"runtime": label, "file_bytes": size}
            for batch in BATCHES:
                row[f"batch{batch}_us_per_image"] = statistics.median(times[label, batch])
                row[f"batch{batch}_best_us_per_image"] = min(times[label, batch])
                row[f"batch{batch}_rounds"] = times[label, batch]
            rows.append(row)
            print(
                f"{label:34s} {row['batch1_us_per_image']:9.1f} us/img (b=1, best "
                f"{row['batch1_best_us_per_image']:.1f}) {row['batch64_us_per_image']:8.2f} "
                f"us/img (b=64, best {row['batch64_best_us_per_image']:.2f})  "
                + (f"{size / 1e6:.2f} MB" if size else "")
            )

    result = {
        "benchmark": "decode latency per image (median), z -> pixel probabilities",
        "model": {
            "file": args.model,
            "image_shape": list(model.image_shape),
            "latent_dim": model.latent_dim,
            "arch": model.model_config.arch,
            "hidden_units": list(model.model_config.hidden_units),
        },
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "ai_edge_litert": metadata.version("ai-edge-litert"),
        },
        "rounds": args.rounds,
        "seconds_per_measurement": args.seconds,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
