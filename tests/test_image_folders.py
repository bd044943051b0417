"""`images:DIR`: folders of real image files, written here with TensorFlow's
and Pillow's encoders and read back through `load_dataset`."""

from __future__ import annotations

import json
import logging
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from harness import TINY_OPTIONS, invoke, tfvae
from PIL import Image

from tfvae.data import DataError, ImageDataset, load_dataset
from tfvae.data.dataset import HELD_OUT_FRACTION
from tfvae.data.folders import load_image_folder


def write_png(path: Path, image: np.ndarray) -> np.ndarray:
    """`image` (uint8 `[h, w, c]`) as a PNG file at `path`; returns `image`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())
    return image


def random_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Random uint8 images: distinct, so each can be recognised after decoding."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_pngs(folder: Path, images: np.ndarray) -> dict[bytes, Path]:
    """One PNG per image in `folder`, named by index; returns image bytes -> path."""
    written = {}
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        write_png(path, image)
        written[image.tobytes()] = path
    return written


def all_images(data: ImageDataset) -> np.ndarray:
    return np.concatenate([data.train_images, data.test_images])


def decoded_files(data: ImageDataset, written: dict[bytes, Path]) -> Counter:
    """How often each written file's exact pixels occur among the decoded images."""
    return Counter(written.get(image.tobytes()) for image in all_images(data))


# --- channels and exact pixels ---------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_png_folder_decodes_to_the_exact_pixels(tmp_path, channels):
    """PNG is lossless: every written image comes back exactly once, at its own channels."""
    images = random_images(20, (5, 4, channels))
    written = write_pngs(tmp_path, images)
    data = load_dataset(f"images:{tmp_path}")
    assert data.name == f"images:{tmp_path}" and not data.binary
    assert data.train_images.shape == (18, 5, 4, channels)
    assert data.test_images.shape == (2, 5, 4, channels)
    assert data.train_images.dtype == np.uint8
    assert decoded_files(data, written) == Counter(written.values())
    assert data.train_labels is None and data.test_labels is None


def test_grey_and_colour_images_become_rgb_with_grey_replicated(tmp_path):
    colour = random_images(4, (6, 6, 3))
    written = write_pngs(tmp_path, colour)
    grey = write_png(tmp_path / "grey.png", random_images(1, (6, 6, 1), seed=1)[0])
    data = load_image_folder(tmp_path)
    assert data.image_shape == (6, 6, 3)
    rgb_of_grey = np.repeat(grey, 3, axis=2)
    written[rgb_of_grey.tobytes()] = tmp_path / "grey.png"
    assert decoded_files(data, written) == Counter(written.values())


def test_alpha_is_dropped_and_grey_with_alpha_stays_grey(tmp_path):
    grey_alpha = write_png(tmp_path / "grey" / "la.png", random_images(1, (3, 3, 2))[0])
    write_png(tmp_path / "grey" / "l.png", random_images(1, (3, 3, 1))[0])
    rgba = write_png(tmp_path / "colour" / "rgba.png", random_images(1, (3, 3, 4))[0])
    write_png(tmp_path / "colour" / "rgb.png", random_images(1, (3, 3, 3))[0])
    grey = load_image_folder(tmp_path / "grey")
    assert grey.image_shape == (3, 3, 1)
    assert any(np.array_equal(x, grey_alpha[..., :1]) for x in all_images(grey))
    colour = load_image_folder(tmp_path / "colour")
    assert colour.image_shape == (3, 3, 3)
    assert any(np.array_equal(x, rgba[..., :3]) for x in all_images(colour))


def test_every_image_extension_counts_in_any_case_and_others_are_ignored(tmp_path):
    """.png .jpg .jpeg .bmp .gif in any case are images, anywhere below DIR;
    other files and hidden files or folders are not. A GIF gives its first frame."""
    red, blue = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    write_png(tmp_path / "a.png", red)
    write_png(tmp_path / "sub" / "deeper" / "b.PNG", red)
    (tmp_path / "c.jpg").write_bytes(tf.io.encode_jpeg(red, quality=100).numpy())
    (tmp_path / "d.JPEG").write_bytes(tf.io.encode_jpeg(red, quality=100).numpy())
    Image.fromarray(red).save(tmp_path / "e.bmp")
    frames = [Image.fromarray(red), Image.fromarray(blue)]
    frames[0].save(tmp_path / "f.Gif", format="GIF", save_all=True, append_images=frames[1:])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "g.png.bak").write_bytes(b"junk")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    (tmp_path / ".cache" / "h.png").parent.mkdir()
    (tmp_path / ".cache" / "h.png").write_bytes(b"junk")
    data = load_image_folder(tmp_path)
    images = all_images(data)
    assert images.shape == (6, 4, 4, 3)
    # JPEG is lossy, so "red" is within a few levels.
    assert np.abs(images.astype(int) - red).max() <= 3


# --- labels and splits -------------------------------------------------------


def test_class_subfolders_give_labels_in_sorted_name_order(tmp_path):
    """zebra is written first but sorts last; an image deeper in a class
    folder still belongs to that class."""
    written = {}
    for label, name in [(2, "zebra"), (0, "ant"), (1, "bee")]:
        images = random_images(10, (4, 4, 1), seed=label)
        written.update(dict.fromkeys(write_pngs(tmp_path / name / "photos", images), label))
    data = load_dataset(f"images:{tmp_path}")
    assert len(data.train_images) == 27 and len(data.test_images) == 3
    for images, labels in [
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ]:
        assert labels.dtype == np.int64
        assert labels.tolist() == [written[image.tobytes()] for image in images]
    assert set(data.train_labels.tolist()) == {0, 1, 2}


def test_the_log_says_what_a_folder_holds_and_which_likelihood_it_got(tmp_path):
    """Classes by their folder names, the RGB shape, the counts per split and
    the likelihood chosen for an image folder, as the run's first lines."""
    from tfvae.config import TrainConfig
    from tfvae.training import train

    for label, name in [(2, "zebra"), (0, "ant"), (1, "bee")]:
        write_pngs(tmp_path / "set" / name, random_images(10, (4, 4, 3), seed=label))
    data = load_dataset(f"images:{tmp_path / 'set'}")
    assert data.classes == ("ant", "bee", "zebra")
    said: list[str] = []
    config = TrainConfig(dataset=f"images:{tmp_path / 'set'}", hidden_units=(8,), epochs=1)
    train(config, tmp_path / "run", echo=said.append, verbose=0)
    assert said[1:3] == [
        f"Data: images:{tmp_path / 'set'}: 27 training and 3 test images, 4x4 RGB, 3 classes "
        "(ant, bee, zebra)",
        "Likelihood: discretized logistic over the 256 levels of 8-bit pixels (the default "
        "for image folders; --likelihood changes it)",
    ]


def test_an_image_outside_every_class_folder_means_no_labels(tmp_path):
    write_pngs(tmp_path / "cats", random_images(5, (4, 4, 1)))
    write_png(tmp_path / "loose.png", random_images(1, (4, 4, 1), seed=1)[0])
    data = load_image_folder(tmp_path)
    assert len(all_images(data)) == 6
    assert data.train_labels is None and data.test_labels is None


def test_train_and_test_folders_are_the_splits_with_one_class_map(tmp_path, caplog):
    """train/ has classes b and c, test/ has a and c: a=0, b=1, c=2 in both.
    Images outside the two split folders are left out, with a warning."""
    train_b = random_images(3, (4, 4, 3), seed=1)
    train_c = random_images(2, (4, 4, 3), seed=2)
    test_a = random_images(2, (4, 4, 3), seed=3)
    test_c = random_images(1, (4, 4, 3), seed=4)
    write_pngs(tmp_path / "train" / "b", train_b)
    write_pngs(tmp_path / "train" / "c", train_c)
    write_pngs(tmp_path / "test" / "a", test_a)
    write_pngs(tmp_path / "test" / "c", test_c)
    write_png(tmp_path / "extra" / "x.png", random_images(1, (4, 4, 3), seed=5)[0])
    with caplog.at_level(logging.WARNING, logger="tfvae.data.folders"):
        data = load_image_folder(tmp_path)
    # Split folders are read in path order, not shuffled.
    np.testing.assert_array_equal(data.train_images, np.concatenate([train_b, train_c]))
    np.testing.assert_array_equal(data.test_images, np.concatenate([test_a, test_c]))
    assert data.train_labels.tolist() == [1, 1, 1, 2, 2]
    assert data.test_labels.tolist() == [0, 0, 2]
    assert "ignoring 1 image(s)" in caplog.text and str(tmp_path / "extra" / "x.png") in caplog.text


def test_without_split_folders_a_fixed_tenth_is_the_test_split(tmp_path):
    """The files sorted by path, shuffled with numpy's default_rng(0), the
    last tenth as test: the same images on every load, each exactly once."""
    images = random_images(30, (3, 3, 3))
    written = write_pngs(tmp_path, images)
    first, second = load_image_folder(tmp_path), load_image_folder(tmp_path)
    order = np.random.default_rng(0).permutation(30)
    n_test = round(30 * HELD_OUT_FRACTION)
    np.testing.assert_array_equal(first.test_images, images[order[-n_test:]])
    np.testing.assert_array_equal(first.train_images, images[order[:-n_test]])
    np.testing.assert_array_equal(second.train_images, first.train_images)
    np.testing.assert_array_equal(second.test_images, first.test_images)
    assert decoded_files(first, written) == Counter(written.values())


def test_two_images_split_one_and_one_but_one_image_is_refused(tmp_path):
    write_pngs(tmp_path / "two", random_images(2, (3, 3, 1)))
    data = load_image_folder(tmp_path / "two")
    assert (len(data.train_images), len(data.test_images)) == (1, 1)
    write_pngs(tmp_path / "one", random_images(1, (3, 3, 1)))
    with pytest.raises(DataError, match="only 1 image") as err:
        load_image_folder(tmp_path / "one")
    assert str(tmp_path / "one") in str(err.value)


@pytest.mark.parametrize(("have", "missing"), [("train", "test"), ("test", "train")])
def test_one_split_folder_without_the_other_is_refused(tmp_path, have, missing):
    write_pngs(tmp_path / have, random_images(4, (3, 3, 1)))
    with pytest.raises(DataError, match=f"has {have}/ but no {missing}/") as err:
        load_image_folder(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_an_empty_split_folder_is_refused(tmp_path):
    write_pngs(tmp_path / "train", random_images(4, (3, 3, 1)))
    (tmp_path / "test" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no test images") as err:
        load_image_folder(tmp_path)
    assert str(tmp_path / "test") in str(err.value)


# --- sizes -------------------------------------------------------------------


def test_mixed_sizes_are_refused_naming_two_files(tmp_path):
    write_pngs(tmp_path, random_images(5, (4, 4, 1)))
    write_png(tmp_path / "wide.png", random_images(1, (4, 7, 1))[0])
    with pytest.raises(DataError, match="differ in size") as err:
        load_image_folder(tmp_path)
    message = str(err.value)
    assert "--resize H W" in message
    assert str(tmp_path / "wide.png") in message and "4x7" in message
    assert sum(str(tmp_path / f"{i:03d}.png") in message for i in range(5)) == 1


def test_resize_brings_every_image_to_one_size(tmp_path):
    """Area averaging keeps a uniform image's colour exactly."""
    colour = np.array([10, 200, 30], np.uint8)
    write_png(tmp_path / "uniform.png", np.broadcast_to(colour, (6, 6, 3)).copy())
    write_pngs(tmp_path, random_images(3, (9, 5, 3)))
    write_png(tmp_path / "small.png", random_images(1, (2, 3, 3))[0])
    data = load_dataset(f"images:{tmp_path}", resize=(4, 4))
    images = all_images(data)
    assert images.shape == (5, 4, 4, 3)
    assert sum(bool((image == colour).all()) for image in images) == 1


# --- errors ------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).bytes(200))


def _truncated(path: Path) -> None:
    path.write_bytes(tf.io.encode_png(random_images(1, (8, 8, 3))[0]).numpy()[:40])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_corrupt, _truncated, _empty])
def test_a_file_that_does_not_decode_is_named(tmp_path, damage):
    """The bad file sits between good ones, so decoding fails part-way through."""
    write_pngs(tmp_path, random_images(30, (4, 4, 3)))
    bad = tmp_path / "015-bad.png"
    damage(bad)
    with pytest.raises(DataError, match="remove or replace it") as err:
        load_image_folder(tmp_path)
    assert str(err.value).startswith(f"{bad}: does not decode as an image")
    assert "\n" not in str(err.value)


def test_a_dangling_symlink_is_an_os_error_naming_it(tmp_path):
    write_pngs(tmp_path, random_images(3, (4, 4, 1)))
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(FileNotFoundError) as err:
        load_image_folder(tmp_path)
    assert err.value.filename == str(link)


@pytest.mark.parametrize(
    "make",
    [
        lambda folder: folder.mkdir(),
        lambda folder: (folder.mkdir(), (folder / "a.txt").write_text("x")),
        lambda folder: (
            folder.mkdir(),
            write_png(folder / ".a.png", random_images(1, (2, 2, 1))[0]),
        ),
    ],
    ids=["empty", "only-text", "only-hidden"],
)
def test_a_folder_without_images_is_refused(tmp_path, make):
    folder = tmp_path / "set"
    make(folder)
    with pytest.raises(DataError, match="no image files") as err:
        load_dataset(f"images:{folder}")
    assert str(err.value).startswith(f"{folder}: ") and ".png .jpg .jpeg .bmp .gif" in str(
        err.value
    )


def test_a_missing_folder_or_a_file_is_refused(tmp_path):
    a_file = tmp_path / "a.png"
    write_png(a_file, random_images(1, (2, 2, 1))[0])
    for target in (tmp_path / "nowhere", a_file):
        with pytest.raises(DataError, match="no such folder") as err:
            load_dataset(f"images:{target}")
        assert str(err.value).startswith(f"{target}: ")


def test_an_empty_folder_name_is_refused_not_read_as_the_working_directory():
    with pytest.raises(DataError, match="give a folder"):
        load_dataset("images:")
    with pytest.raises(DataError, match="images:DIR"):
        load_dataset("pictures:x")
    refused = invoke("train", "--dataset", "images:")
    assert refused.exit_code == 2 and "give a folder after 'images:'" in refused.output


# --- the command line ----------------------------------------------------------


def _train(folder: Path, run: Path) -> subprocess.CompletedProcess:
    """`tfvae train` as users run it, on the tiny settings with a 4-D latent
    space (the last --latent-dim counts): a 2-D one would add the manifold
    pictures, which these tests do not look at."""
    options = [*TINY_OPTIONS, "--latent-dim", "4"]
    return tfvae("train", *options, "--dataset", f"images:{folder}", "--run-dir", run, check=False)


def test_cli_trains_on_a_colour_png_folder(tmp_path):
    write_pngs(tmp_path / "images", random_images(40, (8, 8, 3)))
    run = tmp_path / "run"
    result = _train(tmp_path / "images", run)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((run / "config.json").read_text())
    assert state["status"] == "finished"
    assert state["image_shape"] == [8, 8, 3]
    assert state["config"]["dataset"] == f"images:{tmp_path / 'images'}"


def test_cli_names_a_corrupt_file_in_one_line_and_makes_no_run(tmp_path):
    write_pngs(tmp_path / "images", random_images(10, (8, 8, 3)))
    bad = tmp_path / "images" / "bad.png"
    _corrupt(bad)
    run = tmp_path / "run"
    result = _train(tmp_path / "images", run)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "remove or replace it" in lines[0]
    assert not run.exists()


# --- photos as people see them ----------------------------------------------------


def write_jpeg(path: Path, image: np.ndarray, orientation: int) -> None:
    """`image` as a JPEG (best quality) whose EXIF says `orientation`."""
    picture = Image.fromarray(image)
    exif = picture.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="JPEG", quality=100, exif=exif.tobytes())


@pytest.mark.parametrize("streamed", [False, True], ids=["in memory", "streamed"])
@pytest.mark.parametrize("turns", [(1, 2, 3, 4), (5, 6, 7, 8)], ids=["as stored", "turned"])
def test_jpegs_are_turned_as_their_exif_orientation_says(tmp_path, monkeypatch, streamed, turns):
    """Photos stored 4x6 with each EXIF orientation load upright, as
    Pillow's `exif_transpose` (what viewers do) shows them: 4x6 for 1-4
    (mirrored or turned 180 degrees), 6x4 for 5-8 (a phone held upright).
    Grey JPEGs, compared with Pillow's decoding of the same files to within
    16 levels (TensorFlow's fast DCT rings by up to 12 at these sharp
    edges; any wrong turn or mirror is off by 127 or more somewhere)."""
    from PIL import ImageOps

    monkeypatch.setenv("TFVAE_STREAM_ABOVE_MB", "0" if streamed else "1000")
    stored = np.zeros((4, 6), np.uint8)
    stored[:, :3] = 255  # a bright left half and a grey top row: every turn differs
    stored[0] = 128
    expected = []
    for orientation in turns:
        path = tmp_path / "photos" / f"{orientation}.jpg"
        write_jpeg(path, stored, orientation)
        expected.append(np.asarray(ImageOps.exif_transpose(Image.open(path)))[..., None])
    data = load_dataset(f"images:{tmp_path / 'photos'}")
    assert data.image_shape == expected[0].shape == ((6, 4, 1) if turns[0] == 5 else (4, 6, 1))
    images = np.concatenate([np.asarray(data.train_images), np.asarray(data.test_images)])
    found = sorted(
        min(range(len(expected)), key=lambda i: np.abs(image.astype(int) - expected[i]).max())
        for image in images
    )
    assert found == [0, 1, 2, 3]  # each photo once
    for image in images:
        assert min(np.abs(image.astype(int) - e).max() for e in expected) <= 16
