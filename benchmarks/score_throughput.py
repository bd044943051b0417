"""How fast `tfvae score` scores images, against the matrix-multiplication
bound of the same work.

The bound: the default MLP's (784-400-20) matmul FLOPs per scored image,
encoder once and decoder K times, 2 (784*400 + 400*40) + 2 K (20*400 +
400*784), at the GFLOP/s of the fastest float32 GEMM the machine has (numpy's
OpenBLAS, in a child process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
unset, on the decoder's own shapes). tfvae: `tfvae.scoring.score` on the
committed default run (tests/fixtures/runs/mnist-default-0.1.0) at K = 1, 100
and 5000, and at K = 100 with the Likelihood Regret (whose refitting steps
the bound leaves out), images/s and the process's peak RSS. Written to
results/score_throughput.json with the machine.

    python benchmarks/score_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import REPO_ROOT, machine, peak_rss_mb, quiet_tensorflow, warn_if_busy, write_results

RUN = REPO_ROOT / "tests" / "fixtures" / "runs" / "mnist-default-0.1.0"
ENCODER_FLOPS = 2 * (784 * 400 + 400 * 40)
DECODER_FLOPS = 2 * (20 * 400 + 400 * 784)
# (K, with the Likelihood Regret) -> images scored: a few seconds each.
SETTINGS = {(1, False): 10_000, (100, False): 5_000, (5000, False): 200, (100, True): 1_000}
# The decoder's matmuls as the IW estimate batches them (rows = samples x images).
GEMM_SHAPES = {"decoder-in": (20_000, 20, 400), "decoder-out": (20_000, 400, 784)}

GEMM_CHILD = """
import json, time, sys
import numpy as np
shapes = json.loads(sys.argv[1])
out = {}
for name, (m, k, n) in shapes.items():
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    out[name] = 2 * m * k * n / best / 1e9
print(json.dumps(out))
"""


def gemm_gflops() -> dict[str, float]:
    """numpy's float32 GEMM GFLOP/s per shape (best of 7), in a child process
    with OpenBLAS free to pick its fastest kernel."""
    unset = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    command = [sys.executable, "-c", GEMM_CHILD, json.dumps(GEMM_SHAPES)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout)


def flops_per_image(k: int) -> int:
    return ENCODER_FLOPS + k * DECODER_FLOPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timings per K (the median is kept)")
    args = parser.parse_args()
    warn_if_busy()
    gemm = gemm_gflops()
    # The decoder's output layer holds 98% of the FLOPs: its rate is the bound's.
    bound_gflops = gemm["decoder-out"]
    quiet_tensorflow()
    import numpy as np

    from tfvae.runs import run_images
    from tfvae.scoring import score

    run, images = run_images(RUN)
    rows = {}
    for (k, regret), n in SETTINGS.items():
        batch = np.asarray(images[:n])
        score(run.model, batch[:100], k=k, regret=regret)  # trace
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            score(run.model, batch, k=k, regret=regret)
            times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]
        bound = bound_gflops * 1e9 / flops_per_image(k)
        rows[f"{k}{' + regret' if regret else ''}"] = {
            "images": n,
            "seconds": seconds,
            "images_per_s": n / seconds,
            "bound_images_per_s": bound,
            "of_bound": n / seconds / bound,
        }
        what = f"K={k}{' + regret' if regret else ''}"
        print(f"{what}: {n / seconds:,.0f} images/s, bound {bound:,.0f}: {n / seconds / bound:.2f}")
    write_results(
        "score_throughput",
        {
            "run": str(RUN.relative_to(REPO_ROOT)),
            "gemm_gflops": gemm,
            "bound_gflops": bound_gflops,
            "flops_per_image": {k: flops_per_image(k) for k, _ in SETTINGS},
            "k": rows,
            "peak_rss_mb": peak_rss_mb(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
