"""One image at a time: decoding a file and resizing, the same for every
loader (`sources`, `folders`, `streams`, `tfds`)."""

from __future__ import annotations

import tensorflow as tf


def decode_image(contents, resize: tuple[int, int] | None, channels: int | None = None):
    """One encoded image as uint8 `[h, w, c]` (a GIF's first frame), at `resize`
    if given; `channels` 1 keeps the first channel, 3 gives RGB (a grey
    channel repeated, alpha dropped), None keeps the file's own."""
    image = tf.io.decode_image(contents, expand_animations=False)
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
