"""What a new user's model learns: the defaults on the real MNIST, against
figures saved from an earlier run, so the default quality cannot get worse
unnoticed."""

import dataclasses

import pytest

from tfvae.config import TrainConfig
from tfvae.runs import score_run
from tfvae.training import train

EPOCHS = 3
# `tfvae train --epochs 3` (cosine from 2e-3) then `tfvae evaluate RUN --k 100`
# on the 2-core AMD EPYC VM. Seeds are fixed; the margin covers float
# rounding that differs between CPUs and XLA versions. A change that makes
# the defaults learn better should lower these figures with it.
# Re-measured at 2336c5b's successor, when the ELBO's z came to be drawn from
# each image's fixed key (110.03 and 105.91 before, measured at an earlier
# commit; the 10-epoch run moved from 101.33 to 101.39, one draw's noise).
SAVED_NEG_ELBO = 109.94
SAVED_NLL_K100 = 105.86
MARGIN = 0.5  # nats per image


@pytest.mark.slow
def test_the_defaults_learn_as_well_as_the_saved_run(tmp_path):
    config = dataclasses.replace(TrainConfig(), epochs=EPOCHS)
    train(config, tmp_path / "run", echo=lambda _: None, verbose=0)
    scores = score_run(tmp_path / "run", k=100)
    neg_elbo, nll = -scores["elbo"], scores["nll"]
    assert neg_elbo <= SAVED_NEG_ELBO + MARGIN, f"test -ELBO {neg_elbo:.2f} > {SAVED_NEG_ELBO}"
    assert nll <= SAVED_NLL_K100 + MARGIN, f"test NLL {nll:.2f} > {SAVED_NLL_K100}"
    # The K = 100 bound is tighter than the ELBO by a few nats, not by zero.
    assert 1.0 < neg_elbo - nll < 10.0
    assert scores["active_units"] == config.latent_dim
