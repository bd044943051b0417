"""Where a training step's time goes: XLA:CPU kernel times from a profiler trace.

Calls the model's XLA-compiled `train_step` on one batch (no input pipeline,
no Keras loop) `--steps` times under `tf.profiler`, and sums the durations of
the compiled program's kernels (XLA:CPU thunks) by kind: the matmuls, each
fusion, each op XLA left unfused. Also times the same calls without the
profiler. Kernel time above wall time means both cores worked; a large
unfused op or many small kernels are what to remove first.

    python benchmarks/profile_step.py            # the default model, batch 128
    python benchmarks/profile_step.py --burda    # Burda et al.'s model, batch 20
    tensorboard --logdir runs/profile-step       # the trace itself (--logdir)

Writes `results/profile_step-<model>.json` with the table and the machine.
"""

from __future__ import annotations

import argparse
import collections
import re
import time
from pathlib import Path

from common import machine, quiet_tensorflow, warn_if_busy, write_results
from train_throughput import BURDA_MODEL

# Trace events of the runtime around the program, not kernels of it.
FRAMEWORK = re.compile(r"^(TFE_|Eager|__inference|BlockUntilReady$|profiled_step$)|:")


def _kind(kernel: str) -> str:
    """`MatMul_1.18` -> `matmul`, `multiply_add_fusion.3` -> `multiply_add_fusion`."""
    base = re.sub(r"\.\d+$", "", kernel)
    return "matmul" if base.startswith("MatMul") else base


def kernel_times(logdir: Path, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Microseconds and kernel counts per step by kind, from the newest trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    trace = max(logdir.glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    space = xplane_pb2.XSpace()
    space.ParseFromString(trace.read_bytes())
    micros: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if not name or FRAMEWORK.search(name):
                    continue
                micros[_kind(name)] += event.duration_ps / 1e6 / steps
                counts[_kind(name)] += 1 / steps
    return dict(micros), dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burda", action="store_true", help="784-200-200-50 tanh, batch 20")
    parser.add_argument("--steps", type=int, default=200, help="profiled calls")
    parser.add_argument("--top", type=int, default=15, help="kinds to print")
    parser.add_argument("--logdir", type=Path, default=Path("runs/profile-step"))
    args = parser.parse_args()
    warn_if_busy()
    quiet_tensorflow()
    import tensorflow as tf

    from tfvae import data as datasets
    from tfvae.config import TrainConfig
    from tfvae.distribute import Placement
    from tfvae.fitting import compiled_vae

    config = TrainConfig.from_dict(BURDA_MODEL if args.burda else {})
    data = datasets.RunData.load(config)
    batch = next(iter(datasets.train_pipeline(data.data, config.batch_size, config.pixels, 0)))
    placement = Placement(tf.distribute.get_strategy(), Path("unused"))
    model = compiled_vae(config, data, placement)
    model.optimizer.build(model.trainable_variables)

    def profiled_step(batch):
        return model.train_step(batch)

    step = tf.function(profiled_step, jit_compile=True)
    for _ in range(30):
        step(batch)
    walls = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(args.steps):
            logs = step(batch)
        float(logs["loss"])
        walls.append((time.perf_counter() - started) / args.steps * 1e6)
    tf.profiler.experimental.start(str(args.logdir))
    for _ in range(args.steps):
        logs = step(batch)
    float(logs["loss"])
    tf.profiler.experimental.stop()

    micros, counts = kernel_times(args.logdir, args.steps)
    total = sum(micros.values())
    wall = min(walls)
    name = "burda" if args.burda else "default"
    print(f"{name}: batch {config.batch_size}, {wall:.0f} us per step (best of 5 x {args.steps})")
    print(f"kernels: {sum(counts.values()):.0f} per step, {total:.0f} us of kernel time")
    print(f"{'kind':32s} {'per step':>8s} {'us':>8s} {'share':>6s}")
    for kind, us in sorted(micros.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{kind[:32]:32s} {counts[kind]:8.1f} {us:8.1f} {100 * us / total:5.1f}%")
    path = write_results(
        f"profile_step-{name}",
        {
            "machine": machine(),
            "config": config.to_dict(),
            "steps": args.steps,
            "wall_us_per_step": wall,
            "kernel_us_per_step": total,
            "kernels": {
                kind: {"per_step": counts[kind], "us_per_step": us}
                for kind, us in sorted(micros.items(), key=lambda item: -item[1])
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
