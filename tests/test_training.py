"""Training into run folders: checkpoints that survive damage, the NaN stop,
and a whole run on an `idx:` folder of generated data."""

import json
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import TINY_SETTINGS

import tfvae
from tfvae.callbacks import EpochBackup, StopOnNonFinite
from tfvae.config import TrainConfig
from tfvae.data import image_pipeline
from tfvae.errors import DataError, NonFiniteLossError, RunError
from tfvae.model import VAE
from tfvae.runs import Checkpoints, load_run
from tfvae.training import train


def small_model(seed=0):
    model = VAE(image_shape=(8, 8, 1), latent_dim=2, hidden_units=(16,), seed=seed)
    model.build()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def fit(model, data, **kwargs):
    model.fit(data, verbose=0, shuffle=False, **kwargs)


def batches(n_batches=4, nan_batch=None):
    x = (np.random.default_rng(0).random((n_batches * 8, 8, 8, 1)) < 0.4).astype(np.float32)
    if nan_batch is not None:
        x[nan_batch * 8, 0, 0, 0] = np.nan
    return image_pipeline(x, 8)


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    """A NaN in epoch 2, step 3 stops fit with a message naming both, and the
    epoch-1 checkpoint restores finite weights equal to those after epoch 1."""
    model = small_model()
    backup = Checkpoints(tmp_path)
    fit(model, batches(), epochs=1, callbacks=[StopOnNonFinite(), EpochBackup(backup)])
    after_first = weights_of(model)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
        model.fit(
            batches(nan_batch=2),
            initial_epoch=1,
            epochs=2,
            verbose=0,
            callbacks=[StopOnNonFinite(), EpochBackup(backup)],
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-00001"]
    fresh = small_model(seed=1)
    assert backup.restore(fresh) == 1
    for restored, saved in zip(weights_of(fresh), after_first, strict=True):
        np.testing.assert_array_equal(restored, saved)


def test_backup_keeps_two_epochs_and_survives_a_damaged_latest(tmp_path):
    """The newest checkpoint corrupted (a kill mid-write of a non-atomic file
    would do this): restore falls back to the previous epoch."""
    model = small_model()
    backup = Checkpoints(tmp_path)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(weights_of(model))

    fit(model, batches(), epochs=3, callbacks=[Snapshot(), EpochBackup(backup)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-00002", "epoch-00003"]
    (tmp_path / "epoch-00003" / "state.weights.h5").write_bytes(b"garbage")
    fresh = small_model(seed=1)
    assert backup.restore(fresh) == 2
    np.testing.assert_array_equal(weights_of(fresh)[0], snapshots[1][0])


def test_optimizer_state_is_restored(tmp_path):
    """Adam's moments and step count come back, so a resumed run continues
    the same optimisation rather than restarting it."""
    model = VAE(image_shape=(8, 8, 1), latent_dim=2, hidden_units=(16,))
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    backup = Checkpoints(tmp_path)
    fit(model, batches(), epochs=1, callbacks=[EpochBackup(backup)])
    fresh = VAE(image_shape=(8, 8, 1), latent_dim=2, hidden_units=(16,))
    fresh.build()
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    backup.restore(fresh)
    assert int(fresh.optimizer.iterations.numpy()) == 4
    for a, b in zip(fresh.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_training_on_an_idx_folder(tmp_path, write_idx):
    """A whole run on generated MNIST-format data of another size (12x10):
    two classes of stripes; the ELBO improves and the run reloads."""
    rng = np.random.default_rng(0)

    def images(n):
        labels = rng.integers(0, 2, n).astype(np.uint8)
        x = np.zeros((n, 12, 10), np.uint8)
        x[labels == 0, ::2, :] = 230
        x[labels == 1, :, ::2] = 230
        return x, labels

    folder = tmp_path / "stripes"
    folder.mkdir()
    for split, n in (("train", 512), ("t10k", 128)):
        x, y = images(n)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", x, gz=True)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y)
    config = TrainConfig(
        dataset=f"idx:{folder}",
        arch="conv",
        latent_dim=2,
        hidden_units=(32,),
        epochs=4,
        batch_size=32,
        learning_rate=3e-3,
    )
    result = train(config, tmp_path / "run", echo=lambda _: None, verbose=0)
    run = load_run(result.run_dir)
    assert run.state.image_shape == (12, 10, 1)
    assert run.model(np.zeros((1, 12, 10, 1), np.float32)).shape == (1, 12, 10, 1)
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()[1:]
    first, last = (float(r.split(",")[6]) for r in (rows[0], rows[-1]))  # test_elbo
    # A model that ignores the data scores 120 ln 2 = 83.2 nats; the stripes'
    # own entropy is ~20 nats. Four short epochs must get well between.
    assert last > first and last > -0.75 * 120 * np.log(2)
    assert (result.run_dir / "latent.png").is_file()


def test_config_json_is_validated(tmp_path):
    """Types and ranges are checked before anything is used."""
    good = TrainConfig().to_dict()
    for key, bad in [
        ("epochs", -1),
        ("epochs", "10"),
        ("arch", "rnn"),
        ("hidden_units", [0]),
        ("learning_rate", "fast"),
        ("adam_epsilon", 0.0),
        ("adam_epsilon", "small"),
        ("extra", 1),
    ]:
        with pytest.raises(RunError, match=key):
            TrainConfig.from_dict({**good, key: bad})
    assert TrainConfig.from_dict(json.loads(json.dumps(good))) == TrainConfig()


def test_a_config_from_before_lr_schedules_resumes_at_a_constant_rate():
    old = TrainConfig(learning_rate=1e-3).to_dict()
    del old["lr_schedule"]
    assert TrainConfig().lr_schedule == "cosine"
    assert TrainConfig.from_dict(old).lr_schedule == "constant"


def test_restore_under_a_distribution_strategy(tmp_path):
    """A run resumed under MirroredStrategy: the optimizer's slots must be
    created in the strategy's scope (outside it, restoring raised)."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])

    def mirrored_model():
        with strategy.scope():
            model = VAE(image_shape=(8, 8, 1), latent_dim=2, hidden_units=(16,))
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    trained, backup = mirrored_model(), Checkpoints(tmp_path)
    fit(trained, batches(), epochs=1, callbacks=[EpochBackup(backup)])
    resumed = mirrored_model()
    assert backup.restore(resumed) == 1
    for a, b in zip(weights_of(resumed), weights_of(trained), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_resumed_run_does_not_replay_the_first_epochs_batches():
    """A pipeline restarts its shuffle and its draws: resumed after epoch 3,
    a run seeded as a fresh one would see epoch 1's batches again."""
    from tfvae import data as datasets
    from tfvae.fitting import pipeline_seed
    from tfvae.noise import training_batch

    assert pipeline_seed(7, 0) == 7
    seeds = {pipeline_seed(7, epoch) for epoch in range(1, 50)}
    assert len(seeds) == 49 and 7 not in seeds
    images = np.random.default_rng(0).integers(0, 256, (64, 6, 6, 1), dtype=np.uint8)
    dataset = datasets.ImageDataset("noise", images, images[:4])

    def first_epoch(seed):
        batches = [training_batch(b, [2]) for b in datasets.train_pipeline(dataset, 16, seed=seed)]
        return np.concatenate(
            [np.concatenate([x.numpy().reshape(16, -1), n.numpy()], 1) for x, n in batches]
        )

    fresh, resumed = first_epoch(pipeline_seed(7, 0)), first_epoch(pipeline_seed(7, 3))
    assert (fresh != resumed).mean() > 0.3


def test_restore_loads_exactly_the_epoch_the_workers_agreed_on(tmp_path):
    model = small_model()
    backup = Checkpoints(tmp_path, keep=3)
    seen = {}
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.update({epoch + 1: weights_of(model)})
    )
    fit(model, batches(), epochs=3, callbacks=[EpochBackup(backup), record])
    assert backup.epochs() == [1, 2, 3]
    fresh = small_model(seed=1)
    untouched = weights_of(fresh)
    assert backup.restore(fresh, epoch=0) == 0
    for a, b in zip(weights_of(fresh), untouched, strict=True):
        np.testing.assert_array_equal(a, b)
    assert backup.restore(fresh, epoch=2) == 2
    for a, b in zip(weights_of(fresh), seen[2], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RunError, match="no readable checkpoint of epoch 5"):
        backup.restore(fresh, epoch=5)


def quiet_train(config, run_dir):
    return train(config, run_dir, echo=lambda _: None, verbose=0)


def coder_weights(model):
    return [w.numpy() for w in [*model.encoder.weights, *model.decoder.weights]]


@pytest.fixture(scope="module")
def finished_tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("source") / "run"
    quiet_train(TrainConfig(**TINY_SETTINGS, learning_rate=3e-3), run_dir)
    return run_dir


def test_init_from_starts_at_a_finished_runs_weights(finished_tiny_run, tmp_path):
    """At a vanishing learning rate a warm-started run ends where its source
    did, while a run from random weights does not; config.json names the source.
    The optimizer is a fresh one: its step count is the new run's 4 steps, not
    the source's 4 plus these."""
    source_model = load_run(finished_tiny_run).model
    source = coder_weights(source_model)
    crawl = dict(**TINY_SETTINGS, learning_rate=1e-9, seed=1)
    warm = quiet_train(TrainConfig(**crawl, init_from=str(finished_tiny_run)), tmp_path / "warm")
    cold = quiet_train(TrainConfig(**crawl), tmp_path / "cold")
    for a, b in zip(source, coder_weights(warm.model), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(source_model.optimizer.iterations.numpy()) == 4  # 256 images, batch 64
    assert int(warm.model.optimizer.iterations.numpy()) == 4
    assert not all(
        np.allclose(a, c, atol=1e-3) for a, c in zip(source, coder_weights(cold.model), strict=True)
    )
    state = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert state["config"]["init_from"] == str(finished_tiny_run)


def test_init_from_refuses_a_missing_or_different_run(finished_tiny_run, tmp_path):
    """Both errors come before the new run folder exists."""
    target = tmp_path / "new"
    with pytest.raises(RunError, match="no such run folder"):
        quiet_train(TrainConfig(**TINY_SETTINGS, init_from=str(tmp_path / "nowhere")), target)
    wider = {**TINY_SETTINGS, "hidden_units": (32,)}
    with pytest.raises(RunError, match="encoder has other shapes"):
        quiet_train(TrainConfig(**wider, init_from=str(finished_tiny_run)), target)
    assert not target.exists()


def test_a_warm_started_run_resumes_without_its_source(finished_tiny_run, tmp_path, monkeypatch):
    """Interrupted after its last checkpoint, the run resumes from its own
    checkpoints, even once the run it started from is gone."""
    source = tmp_path / "source"
    shutil.copytree(finished_tiny_run, source)
    config = TrainConfig(**TINY_SETTINGS, init_from=str(source))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tfvae.runs.RunFolder.save_pictures", interrupt)
    with pytest.raises(KeyboardInterrupt):
        quiet_train(config, tmp_path / "warm")
    monkeypatch.undo()
    shutil.rmtree(source)
    resumed = quiet_train(config, tmp_path / "warm")
    assert resumed.initial_epoch == 1
    assert load_run(tmp_path / "warm").state.status == "finished"


def test_adam_epsilon_reaches_the_saved_optimizer(tmp_path):
    """Runs from before the setting existed used Keras' default, 1e-7."""
    old = TrainConfig().to_dict()
    del old["adam_epsilon"]
    assert TrainConfig.from_dict(old).adam_epsilon == 1e-7
    run = quiet_train(TrainConfig(**TINY_SETTINGS, adam_epsilon=1e-4), tmp_path / "run")
    assert load_run(run.run_dir).model.optimizer.epsilon == pytest.approx(1e-4)


def test_validation_holds_out_the_last_training_images_and_scores_them_every_epoch(tmp_path):
    """--validation 64 of 256: training sees 192 images (3 steps of 64 an
    epoch), metrics.csv scores the held-out 64 every epoch, and the test set
    is scored once, at the end; the last epoch's validation figures are the
    validation scores config.json records (the same fixed keys)."""
    config = TrainConfig(**{**TINY_SETTINGS, "epochs": 2}, validation=64)
    run_dir = tmp_path / "run"
    result = quiet_train(config, run_dir)
    state = json.loads((run_dir / "config.json").read_text())
    assert state["config"]["validation"] == 64
    assert int(result.model.optimizer.iterations.numpy()) == 2 * 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "validation_elbo" in header and not any(c.startswith("test_") for c in header)
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert float(last["validation_elbo"]) == pytest.approx(state["validation"]["elbo"], abs=1e-3)
    assert state["test"]["elbo"] != pytest.approx(state["validation"]["elbo"], abs=1e-3)
    assert set(state["test"]) == {"elbo", "kl", "log_likelihood"}


def test_validation_must_leave_training_images(tmp_path):
    with pytest.raises(DataError, match="cannot hold out 256 of its 256 training images"):
        quiet_train(TrainConfig(**TINY_SETTINGS, validation=256), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_config_json_records_the_code_of_every_start(tmp_path):
    """The tfvae version, and from a checkout the commit and whether tracked
    files differ from it; a resume adds its own entry."""
    run_dir = tmp_path / "run"
    config = TrainConfig(**TINY_SETTINGS)
    quiet_train(config, run_dir)
    (entry,) = json.loads((run_dir / "config.json").read_text())["provenance"]
    assert entry["tfvae"] == tfvae.__version__
    root = Path(tfvae.__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True)
        assert entry["git_commit"] == head.stdout.decode().strip()
        assert isinstance(entry["git_dirty"], bool)
    state = json.loads((run_dir / "config.json").read_text())
    state["status"] = "running"  # as if killed before it finished
    (run_dir / "config.json").write_text(json.dumps(state))
    quiet_train(config, run_dir)
    assert len(json.loads((run_dir / "config.json").read_text())["provenance"]) == 2


def test_the_same_seed_trains_the_same_weights(tmp_path):
    """--seed fixes the initial weights and the data order: two runs with the
    same seed end bit-identical, and another seed ends elsewhere."""
    weights = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run = quiet_train(TrainConfig(**TINY_SETTINGS, seed=seed), tmp_path / name)
        weights[name] = run.model.get_weights()
    for a, b in zip(weights["a"], weights["b"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(weights["a"], weights["c"], strict=True))
