"""The web page of `tfvae export --format web` in headless Chromium: how long
it takes to load (navigation to ready: LiteRT.js, the WASM, compiling the
files, drawing the panels) and how long one decode takes in the browser.

    python benchmarks/web_page.py [RUN_DIR] [--screenshot docs/web-explorer.png]

Needs Debian's chromium and LiteRT.js from npm (`npm ci --prefix tests/browser`).
Writes `benchmarks/results/web_page.json` with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from chromium import Browser, Server  # noqa: E402
from common import machine, write_results  # noqa: E402

from tfvae.export.run import default_name  # noqa: E402
from tfvae.export.web import export_web  # noqa: E402
from tfvae.runs import run_images  # noqa: E402

LITERT_JS = ROOT / "tests" / "browser" / "node_modules" / "@litertjs"
LOADS = 5
CALLS = 300

LATENCY = """(async () => {
  const z = [Array(tfvaeInfo.latentDim).fill(0.5)];
  await tfvaeDecode(z);
  const times = [];
  for (let i = 0; i < %d; i++) {
    const start = performance.now();
    await tfvaeDecode(z);
    times.push(performance.now() - start);
  }
  const codes = Array.from({length: 16}, () => z[0]);
  const start = performance.now();
  for (let i = 0; i < 20; i++) await tfvaeDecode(codes);
  return {batch1: times, batch16: (performance.now() - start) / 20};
})()"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", nargs="?", default=str(ROOT / "tests/fixtures/runs/mnist-default-0.1.0")
    )
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--name", default="web_page", help="names the results file")
    args = parser.parse_args()
    run, images = run_images(args.run_dir, "test", limit=256)
    with tempfile.TemporaryDirectory() as tmp:
        name = default_name(Path(args.run_dir))
        folder = export_web(run.model, tmp, name, check_images=images, litert_js="./litertjs")
        (folder / "litertjs").symlink_to(LITERT_JS.resolve())
        with Server(folder) as server, Browser(window=(1000, 1050)) as browser:
            loads, ready = [], []
            for _ in range(LOADS):
                page = browser.new_page()
                start = time.perf_counter()
                page.goto(server.url + "index.html")
                page.evaluate("tfvaeReady.then(() => 1)", timeout=120)
                loads.append(1000 * (time.perf_counter() - start))
                ready.append(page.evaluate("tfvaeInfo.loadMs"))
            timing = page.evaluate(LATENCY % CALLS, timeout=300)
            if args.screenshot:
                if run.model.code_dim == 2:
                    page.evaluate("tfvaeMoveTo(0.3, 0.35)")
                args.screenshot.write_bytes(page.screenshot())
            errors = page.errors
    result = {
        "machine": machine(with_gpus=False),
        "run_dir": str(args.run_dir),
        "chromium": browser.version.get("product"),
        "page_ready_ms": {"median": statistics.median(loads), "all": [round(t) for t in loads]},
        "files_compiled_ms": statistics.median(ready),
        "decode_batch1_ms": {
            "median": statistics.median(timing["batch1"]),
            "p90": sorted(timing["batch1"])[int(0.9 * CALLS)],
        },
        "decode_16_codes_ms": timing["batch16"],
        "page_errors": errors,
    }
    print(json.dumps(result, indent=1))
    write_results(args.name, result)


if __name__ == "__main__":
    main()
