"""Image folders streamed from disk (`TFVAE_STREAM_ABOVE_MB`): the same
pixels, batches and scores as the same folder decoded into memory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from harness import tfvae
from PIL import Image
from tiny_tfds import write_tiny_streamed

from tfvae.data import DataError, load_dataset, train_pipeline
from tfvae.data.pipelines import Share
from tfvae.data.streams import STREAM_ENV, ImageFiles, ScoredImages, stream_threshold


def write_folder(folder: Path, n: int, shape=(8, 8, 3), seed: int = 0) -> Path:
    """`n` random PNGs in 3 class folders."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    for i, image in enumerate(images):
        path = folder / f"c{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
    return folder


def both(folder: Path, monkeypatch, resize=None):
    """The folder decoded into memory, and streamed."""
    in_memory = load_dataset(f"images:{folder}", resize=resize)
    monkeypatch.setenv(STREAM_ENV, "0")
    return in_memory, load_dataset(f"images:{folder}", resize=resize)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images", 60)


# --- loading -------------------------------------------------------------------


def test_a_streamed_folder_holds_the_same_images_and_labels(folder, monkeypatch):
    in_memory, streamed = both(folder, monkeypatch)
    assert not in_memory.streamed and streamed.streamed
    assert isinstance(streamed.train_images, ImageFiles)
    assert streamed.image_shape == in_memory.image_shape == (8, 8, 3)
    for split in ("train", "test"):
        kept = getattr(in_memory, f"{split}_images")
        read = getattr(streamed, f"{split}_images")
        assert read.shape == kept.shape
        np.testing.assert_array_equal(np.asarray(read), kept)
        np.testing.assert_array_equal(
            getattr(streamed, f"{split}_labels"), getattr(in_memory, f"{split}_labels")
        )
    np.testing.assert_array_equal(
        np.asarray(streamed.train_images[7:12]), in_memory.train_images[7:12]
    )


@pytest.mark.slow
def test_streamed_channels_follow_the_in_memory_rules(tmp_path, monkeypatch):
    """Grey and grey-with-alpha among colour images become RGB with the grey
    repeated, alpha is dropped, and mixed sizes are resized, as in memory."""
    rng = np.random.default_rng(1)
    write_folder(tmp_path, 4, shape=(6, 6, 3))
    Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / "grey.png")
    la = rng.integers(0, 256, (9, 7, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "grey-alpha.png")
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    in_memory, streamed = both(tmp_path, monkeypatch, resize=(6, 6))
    assert streamed.image_shape == (6, 6, 3)
    everything = [np.asarray(streamed.train_images), np.asarray(streamed.test_images)]
    kept = [in_memory.train_images, in_memory.test_images]
    np.testing.assert_array_equal(np.concatenate(everything), np.concatenate(kept))


def test_the_threshold_is_the_decoded_size(folder, monkeypatch):
    """60 images of 8x8x3 bytes: kept at exactly their size, streamed one byte below."""
    size = 60 * 8 * 8 * 3
    monkeypatch.setenv(STREAM_ENV, str(size / 2**20))
    assert stream_threshold() == size
    assert not load_dataset(f"images:{folder}").streamed
    monkeypatch.setenv(STREAM_ENV, str((size - 1) / 2**20))
    assert load_dataset(f"images:{folder}").streamed


def test_a_threshold_that_is_no_number_is_one_line(folder, monkeypatch):
    monkeypatch.setenv(STREAM_ENV, "lots")
    with pytest.raises(DataError, match=f"^{STREAM_ENV}='lots' is not a number; give"):
        load_dataset(f"images:{folder}")


# --- training batches -------------------------------------------------------------


def first_pass(dataset, steps: int) -> list[dict]:
    return list(dataset.take(steps).as_numpy_iterator())


def passes(dataset, n: int = 2) -> list[dict]:
    """The batches of `n` passes, each a fresh iterator as `fit` makes per epoch."""
    return [batch for _ in range(n) for batch in dataset.as_numpy_iterator()]


@pytest.mark.parametrize("treatment", ["dynamic", "none", "dequantize"])
def test_every_pass_is_the_in_memory_batches(folder, monkeypatch, treatment):
    """Same shuffled indices, same keys, pass after pass: only where the
    pixels come from differs."""
    in_memory, streamed = both(folder, monkeypatch)
    kept = passes(train_pipeline(in_memory, 16, treatment, seed=5))
    read = passes(train_pipeline(streamed, 16, treatment, seed=5))
    assert [len(batch["keys"]) for batch in read] == [16, 16, 16, 6] * 2  # 54 training images
    for a, b in zip(kept, read, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_a_shared_stream_is_endless_and_its_passes_are_fresh_iterators(folder, monkeypatch):
    """A worker's stream (`Share`) never ends: its passes are those that fresh
    iterators give in one process, each every image once in a new order."""
    _, streamed = both(folder, monkeypatch)
    shared = first_pass(train_pipeline(streamed, 16, "none", 5, Share(0, 1, 1)), 8)
    fresh = passes(train_pipeline(streamed, 16, "none", seed=5))
    for a, b in zip(shared, fresh, strict=True):
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["keys"], b["keys"])
    assert len(first_pass(train_pipeline(streamed, 16, "none", 5, Share(0, 1, 1)), 40)) == 40
    flat = (np.asarray(streamed.train_images).astype(np.float32) / 255).reshape(54, -1)

    def order(batches):
        rows = np.concatenate([batch["images"] for batch in batches]).reshape(54, -1)
        return [int(np.flatnonzero((flat == row).all(axis=1))[0]) for row in rows]

    first, second = order(shared[:4]), order(shared[4:])
    assert sorted(first) == sorted(second) == list(range(54))
    assert first != second


def test_a_static_draw_is_each_images_own(folder, monkeypatch):
    """`static` binarizes each image from its own key (index, seed): the batch
    is the fixed draw of those images, whatever batch they fall in."""
    _, streamed = both(folder, monkeypatch)
    drawn = np.asarray(streamed.train_images.as_scored("dynamic", 5))
    for batch_size in (16, 7):
        batches = list(train_pipeline(streamed, batch_size, "static", seed=5).as_numpy_iterator())
        rows = np.concatenate([batch["images"] for batch in batches])
        assert set(np.unique(rows)) == {0.0, 1.0}
        matched = [np.flatnonzero((drawn == row).all(axis=(1, 2, 3))) for row in rows]
        assert sorted(int(m[0]) for m in matched) == list(range(54))


@pytest.mark.parametrize("share_of", [(2, 1), (4, 2)])
def test_worker_shares_are_the_rows_of_each_global_batch(folder, monkeypatch, share_of):
    """Under multi-worker each pipeline yields its replicas' rows of every
    global batch: in replica order they make the global batch again."""
    total, local = share_of
    _, streamed = both(folder, monkeypatch)
    whole = first_pass(train_pipeline(streamed, 16, "dynamic", seed=5), 4)
    shares = [
        first_pass(
            train_pipeline(streamed, 16, "dynamic", 5, Share(first, local, total)), 4 * local
        )
        for first in range(0, total, local)
    ]
    for g, batch in enumerate(whole):
        parts = [part for share in shares for part in share[g * local : (g + 1) * local]]
        assert len(parts) == total
        for name in batch:
            np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), batch[name])


# --- scored images ------------------------------------------------------------


@pytest.mark.parametrize("treatment", ["dynamic", "dequantize", "none"])
def test_scored_images_keep_their_draw_in_any_slice_or_batch(folder, monkeypatch, treatment):
    _, streamed = both(folder, monkeypatch)
    scored = streamed.fixed_binarized("test", treatment)
    assert isinstance(scored, ScoredImages) and scored.shape == (6, 8, 8, 3)
    whole = np.asarray(scored)
    np.testing.assert_array_equal(np.asarray(scored[2:5]), whole[2:5])
    in_sevens = np.concatenate(list(scored.batches(4).as_numpy_iterator()))
    np.testing.assert_array_equal(in_sevens, whole)
    levels = np.asarray(streamed.test_images).astype(np.float32)
    if treatment == "none":
        np.testing.assert_array_equal(whole, levels / 255)
    elif treatment == "dequantize":
        np.testing.assert_array_equal(np.floor(whole * 256), levels)
    else:
        assert set(np.unique(whole)) == {0.0, 1.0}
        # One draw per pixel: pixels at level 255 are always on, at 0 never.
        assert whole[levels == 255].min() == 1 and whole[levels == 0].max() == 0


def test_a_sliced_scored_split_differs_from_its_validation_draw(folder, monkeypatch):
    """Held-out images get their own seed, as in memory."""
    _, streamed = both(folder, monkeypatch)
    rest, validation = streamed.hold_out(10)
    assert len(rest.train_images) == 44 and validation.shape == (10, 8, 8, 3)
    test = np.asarray(streamed.train_images[-10:].as_scored("dynamic", 0))
    assert not np.array_equal(np.asarray(validation), test)


# --- a run, end to end --------------------------------------------------------


def cli(*args: str, stream: bool) -> subprocess.CompletedProcess:
    env = {STREAM_ENV: "0" if stream else "1000"}
    return tfvae(*args, check=False, env=env, timeout=600)


@pytest.mark.slow
def test_a_streamed_run_scores_as_the_in_memory_run_and_resumes(tmp_path):
    """One epoch on the same batches gives the same weights, so the same test
    scores and bits/dim (measured equal to 1e-6); `resume --epochs 2` continues
    the streamed run for a second epoch."""
    folder = write_folder(tmp_path / "images", 240)
    options = [
        *["--epochs", "1", "--hidden", "32", "--latent-dim", "2", "--batch-size", "50"],
        "--no-jit-compile",  # XLA adds ~5 s per process and is not what is compared
    ]
    scores = {}
    for stream in (False, True):
        run = tmp_path / f"run-{stream}"
        out = cli(
            "train", "--dataset", f"images:{folder}", *options, "--run-dir", str(run), stream=stream
        )
        assert out.returncode == 0, out.stderr[-2000:]
        out = cli("evaluate", str(run), "--k", "20", "--json", stream=stream)
        assert out.returncode == 0, out.stderr[-2000:]
        scores[stream] = json.loads(out.stdout)
    assert scores[True]["bits_per_dim"] is not None
    for name in ("elbo", "nll", "bits_per_dim"):
        assert scores[True][name] == pytest.approx(scores[False][name], abs=1e-4)
    run = tmp_path / "run-True"
    out = cli("resume", str(run), "--epochs", "2", stream=True)
    assert out.returncode == 0, out.stderr[-2000:]
    state = json.loads((run / "config.json").read_text())
    assert state["status"] == "finished" and state["config"]["epochs"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


# --- TFDS records ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for config in ("grey", "binary"):
        write_tiny_streamed(root, config)
    return str(root)


def both_tfds(root: str, monkeypatch, config: str = "grey"):
    spec = f"tfds:tiny_streamed/{config}"
    in_memory = load_dataset(spec, data_dir=root)
    monkeypatch.setenv(STREAM_ENV, "0")
    return in_memory, load_dataset(spec, data_dir=root)


def test_a_streamed_tfds_set_holds_the_in_memory_split(tfds_root, monkeypatch):
    """The same held-out tenth, images and test labels, read from the records."""
    in_memory, streamed = both_tfds(tfds_root, monkeypatch)
    assert streamed.streamed and not streamed.binary
    assert (len(streamed.train_images), len(streamed.test_images)) == (36, 4)
    np.testing.assert_array_equal(np.asarray(streamed.train_images), in_memory.train_images)
    np.testing.assert_array_equal(np.asarray(streamed.test_images), in_memory.test_images)
    np.testing.assert_array_equal(streamed.test_labels, in_memory.test_labels)
    np.testing.assert_array_equal(np.asarray(streamed.test_images[1:3]), in_memory.test_images[1:3])


def test_tfds_passes_shuffle_every_training_image_once_and_keep_static_draws(
    tfds_root, monkeypatch
):
    """Each pass (36 images in batches of 10, 10, 10, 6) holds every training
    image once and no test image, in a new order; an image's `static` draw is
    the same in every pass (keyed by its TFDS id)."""
    in_memory, streamed = both_tfds(tfds_root, monkeypatch)
    train_levels = sorted(in_memory.train_images[:, 0, 0, 0].tolist())
    read = passes(train_pipeline(streamed, 10, "dynamic", seed=3))
    assert [len(batch["keys"]) for batch in read] == [10, 10, 10, 6] * 2
    orders = [
        np.concatenate([b["intensities"][:, 0, 0, 0] for b in read[i : i + 4]]).tolist()
        for i in (0, 4)
    ]
    assert sorted(orders[0]) == sorted(orders[1]) == train_levels
    assert orders[0] != orders[1]
    static = passes(train_pipeline(streamed, 10, "static", seed=3))
    # The static stream reads in the same order as the dynamic one (same
    # seed), so pass 2's draw of each level is matched to pass 1's.
    drawn = [np.concatenate([b["images"] for b in static[i : i + 4]]) for i in (0, 4)]
    first = dict(zip(orders[0], drawn[0], strict=True))
    second = dict(zip(orders[1], drawn[1], strict=True))
    assert all(np.array_equal(first[level], second[level]) for level in train_levels)
    assert sum(first[level].sum() for level in train_levels) > 0  # pixels were drawn on


def test_a_binary_tfds_set_streams_its_pixels_as_they_are(tfds_root, monkeypatch):
    _, streamed = both_tfds(tfds_root, monkeypatch, "binary")
    assert streamed.binary
    batch = first_pass(train_pipeline(streamed, 10, "dynamic", seed=3), 1)[0]
    assert set(batch) == {"images", "keys"}
    assert set(np.unique(batch["images"])) == {0.0, 1.0}
    np.testing.assert_array_equal(
        np.asarray(streamed.fixed_binarized("test")), np.asarray(streamed.test_images, np.float32)
    )


@pytest.mark.slow
def test_a_streamed_tfds_run_trains_its_epochs_and_scores(tfds_root, monkeypatch):
    """Epochs of ceil(36 / 10) = 4 steps, each one pass of the records."""
    from tfvae.config import TrainConfig
    from tfvae.runs import score_run
    from tfvae.training import train

    monkeypatch.setenv(STREAM_ENV, "0")
    config = TrainConfig(
        dataset="tfds:tiny_streamed/grey",
        data_dir=tfds_root,
        epochs=2,
        batch_size=10,
        hidden_units=(16,),
        latent_dim=2,
        likelihood="logistic",
    )
    run = Path(tfds_root).parent / "run"
    result = train(config, run, verbose=0)
    assert int(result.model.optimizer.iterations.numpy()) == 8
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    scores = score_run(run, k=5)
    assert scores["n_images"] == 4 and scores["bits_per_dim"] > 0


@pytest.mark.parametrize(("batch_size", "share_of"), [(9, (2, 1)), (10, (4, 2))])
def test_tfds_worker_shares_read_their_own_files_in_full_batches(
    tfds_root, monkeypatch, batch_size, share_of
):
    """Under multi-worker each pipeline reads its own record files (together
    every training image, no two pipelines the same one), without end, in
    batches of its replicas' rows of a global batch (9 over 2 replicas: 4
    and 5, as `_replica_rows` splits), never cut short where a pass ends;
    the pipelines' keys differ."""
    total, local = share_of
    in_memory, streamed = both_tfds(tfds_root, monkeypatch)
    bounds = [j * batch_size // total for j in range(total + 1)]
    read = []
    for first in range(0, total, local):
        batches = first_pass(
            train_pipeline(streamed, batch_size, "dynamic", 3, Share(first, local, total)),
            30 * local,
        )
        sizes = [bounds[j + 1] - bounds[j] for j in range(first, first + local)]
        assert [len(batch["keys"]) for batch in batches] == sizes * 30
        read.append(batches)
    levels = [{int(v) for b in batches for v in b["intensities"][:, 0, 0, 0]} for batches in read]
    assert all(levels) and sum(len(own) for own in levels) == 36
    assert set().union(*levels) == set(in_memory.train_images[:, 0, 0, 0].tolist())
    keys = [{tuple(k) for b in batches for k in b["keys"]} for batches in read]
    assert not keys[0] & keys[1]
