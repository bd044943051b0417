import numpy as np

from tfvae.metrics import MeanTerms


def test_mean_terms_are_running_per_image_means_until_reset():
    """Two batches of different sizes: each term's result is the mean over all
    their images (not the mean of the two batch means); a reset starts over."""
    rng = np.random.default_rng(0)
    first = {"loss": rng.normal(size=3), "kl": rng.normal(size=3)}
    second = {"loss": rng.normal(size=5), "kl": rng.normal(size=5)}
    metric = MeanTerms(["loss", "kl"])
    metric.update_state({k: v.astype(np.float32) for k, v in first.items()})
    metric.update_state({k: v.astype(np.float32) for k, v in second.items()})
    for name in ("loss", "kl"):
        expected = np.concatenate([first[name], second[name]]).mean()
        np.testing.assert_allclose(metric.result()[name], expected, rtol=1e-6)
    metric.reset_state()
    metric.update_state({"loss": np.float32([2.0]), "kl": np.float32([-1.0])})
    assert {k: float(v) for k, v in metric.result().items()} == {"loss": 2.0, "kl": -1.0}
