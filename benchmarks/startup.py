"""How long the first things a person types take to answer, in fresh processes:
`tfvae --help` (no TensorFlow, no Keras), `import tfvae`, and a Keras user's
first move, `import tfvae, keras; keras.saving.load_model(...)` of a trained
run's model.

Each is run `--repeats` times in turn (a fresh interpreter each time, the
operating system's file cache warm after the first round); the median and the
range of the wall-clock seconds are printed and written to
`results/startup.json` with the machine.

    python benchmarks/startup.py [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import REPO_ROOT, machine, warn_if_busy, write_results

MODEL = REPO_ROOT / "tests" / "fixtures" / "runs" / "mnist-default-0.1.0" / "model.keras"
LOAD = f"import tfvae, keras; keras.saving.load_model({str(MODEL)!r})"
COMMANDS = {
    "tfvae --help": [sys.executable, "-m", "tfvae", "--help"],
    "import tfvae": [sys.executable, "-c", "import tfvae"],
    "import tfvae, keras; load_model": [sys.executable, "-c", LOAD],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats, results/*.quick.json")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    warn_if_busy()
    timings: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):  # in turn, so a drift of the machine hits each alike
        for name, command in COMMANDS.items():
            timings[name].append(seconds(command))
    results = {}
    for name, values in timings.items():
        results[name] = {
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3),
            "max_s": round(max(values), 3),
            "runs": len(values),
        }
        print(f"{name:36s} median {results[name]['median_s']:.3f} s "
              f"(range {results[name]['min_s']:.3f}-{results[name]['max_s']:.3f})")  # fmt: skip
    name = "startup.quick" if args.quick else "startup"
    path = write_results(name, {"machine": machine(with_gpus=False), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
