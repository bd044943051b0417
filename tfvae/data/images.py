"""One image at a time: decoding a file and resizing, the same for every
loader (`sources`, `folders`, `streams`, `tfds`)."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

# EXIF's orientation tag: how a camera's stored pixels must be turned to be
# seen upright (1: as stored).
ORIENTATION_TAG = 0x0112
JPEG_SUFFIXES = (".jpg", ".jpeg")


def orientation(path: Path) -> int:
    """A JPEG file's EXIF orientation (1..8; 1 when it has none), read from its
    header only. Other formats are shown as stored by viewers, so 1."""
    if Path(path).suffix.lower() not in JPEG_SUFFIXES:
        return 1
    try:
        with Image.open(path) as image:
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, UnidentifiedImageError, SyntaxError):
        return 1  # decoding the file says what is wrong with it
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image, orientation):
    """`image` `[h, w, c]` turned as EXIF `orientation` (a scalar int tensor)
    says, as image viewers show it: mirrored (2, 4), turned 180 degrees (3),
    transposed (5, 7) or turned a quarter (6 clockwise, 8 anticlockwise)."""
    if isinstance(orientation, int) and orientation == 1:
        return image
    flipped = tf.reverse(image, [1])
    return tf.switch_case(
        tf.cast(orientation, tf.int32) - 1,
        [
            lambda: image,
            lambda: flipped,
            lambda: tf.image.rot90(image, 2),
            lambda: tf.reverse(image, [0]),
            lambda: tf.transpose(image, [1, 0, 2]),
            lambda: tf.image.rot90(image, 3),
            lambda: tf.image.rot90(flipped, 3),
            lambda: tf.image.rot90(image, 1),
        ],
        default=lambda: image,
    )


def decode_image(
    contents,
    resize: tuple[int, int] | None,
    channels: int | None = None,
    orientation=1,
):
    """One encoded image as uint8 `[h, w, c]` (a GIF's first frame), turned
    upright by its EXIF `orientation`, at `resize` if given; `channels` 1
    keeps the first channel, 3 gives RGB (a grey channel repeated, alpha
    dropped), None keeps the file's own."""
    image = upright(tf.io.decode_image(contents, expand_animations=False), orientation)
    if resize is not None:
        image = area_resize(image, resize)
    if channels == 1:
        return image[..., :1]
    if channels == 3:
        grey = tf.shape(image)[-1] < 3
        return tf.cond(grey, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
    return image


def area_resize(images, size: tuple[int, int]):
    """uint8 images `[..., h, w, c]` to `size` by area averaging, rounded back
    to uint8 (so 0/1 images stay 0/1): the one resize of every loader."""
    return tf.cast(tf.round(tf.image.resize(images, size, method="area")), tf.uint8)
