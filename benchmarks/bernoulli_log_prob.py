"""The importance-weighted estimate's speed with two forms of the Bernoulli
log-probability, run in turn in one process so both see the same machine.

`PixelBernoulli` computes x * l - softplus(l) (two kernels, the targets
broadcast without a copy); the form before it was TensorFlow's sigmoid
cross-entropy on targets copied to the logits' shape. The default model
(tests/fixtures/runs/mnist-default-0.1.0) scores the first 500 test images
at K = 100 with each form, `--rounds` times; the result gives each round's
decodes per second, their ratio and the largest per-image difference.

    python benchmarks/bernoulli_log_prob.py --rounds 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import REPO_ROOT, machine, quiet_tensorflow, warn_if_busy, write_results

RUN = REPO_ROOT / "tests" / "fixtures" / "runs" / "mnist-default-0.1.0"


def cross_entropy(self, event):
    """The form before: TensorFlow's sigmoid cross-entropy on equal shapes."""
    import tensorflow as tf

    logits = tf.convert_to_tensor(self._logits)
    labels = tf.cast(event, logits.dtype)
    shape = tf.broadcast_dynamic_shape(tf.shape(logits), tf.shape(labels))
    return -tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.broadcast_to(labels, shape), logits=tf.broadcast_to(logits, shape)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("-k", type=int, default=100)
    args = parser.parse_args()
    quiet_tensorflow()
    warn_if_busy()
    from tfvae.data import load_dataset
    from tfvae.evaluation import iw_log_likelihood
    from tfvae.likelihoods import PixelBernoulli
    from tfvae.runs import load_model

    model, forms = load_model(RUN), {"x*l - softplus(l)": PixelBernoulli._log_prob}
    forms["sigmoid cross-entropy"] = cross_entropy
    images = load_dataset("mnist").scored("test")[: args.images]
    rounds, estimates = [], {}
    for _ in range(args.rounds):
        speeds = {}
        for name, form in forms.items():
            PixelBernoulli._log_prob = form
            iw_log_likelihood(model, images[:100], k=args.k)  # traced once per form
            start = time.perf_counter()
            estimates[name] = iw_log_likelihood(model, images, k=args.k)
            speeds[name] = len(images) * args.k / (time.perf_counter() - start)
            print(f"{name}: {speeds[name]:,.0f} decodes/s", flush=True)
        rounds.append(speeds)
    first, second = forms
    ratios = [r[first] / r[second] for r in rounds]
    gap = float(np.abs(estimates[first] - estimates[second]).max())
    print(f"ratio {np.median(ratios):.2f} (median of {len(ratios)}); largest gap {gap:.2e} nats")
    payload = {"k": args.k, "images": len(images), "rounds": rounds, "ratios": ratios}
    write_results("bernoulli_log_prob", {**payload, "max_gap_nats": gap, "machine": machine()})


if __name__ == "__main__":
    main()
