"""Pictures of a trained VAE: reconstructions, samples, the 2-D manifold and
the latent space. Pixel grids are drawn with Pillow (exact pixels, no
smoothing); the latent scatter plot uses matplotlib."""

from __future__ import annotations

import io
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw

from tfvae.durable import write_atomic
from tfvae.errors import TfvaeError

# A picture is for looking at: at most this many images in one grid, and
# at most this many pixels (about 10,000 x 10,000, what a screen can zoom into).
MAX_GRID_IMAGES = 10_000
MAX_GRID_PIXELS = 10_000 * 10_000


def grid_capacity(image_shape, scale: int = 2, gap: int = 2) -> int:
    """The most images of `image_shape` `[h, w, c]` one grid may hold."""
    height, width = image_shape[:2]
    cell = (height * scale + gap) * (width * scale + gap)
    return max(1, min(MAX_GRID_IMAGES, MAX_GRID_PIXELS // cell))


# Rows of a conditional VAE's samples picture: its first classes.
CLASS_ROWS = 20


def check_grid(n_images: int, image_shape, what: str, per_image: int = 1) -> None:
    """Refuse, before anything is decoded, `what` asked of `n_images` that
    would make a grid of more than `grid_capacity` images (`per_image` of
    them for each one asked)."""
    most = grid_capacity(image_shape) // per_image
    if n_images > most:
        raise TfvaeError(
            f"{what} of {n_images} images would not fit one picture: at most {most} "
            f"of these {image_shape[0]}x{image_shape[1]} images; lower -n"
        )


def image_grid(
    images: np.ndarray,
    columns: int,
    scale: int = 2,
    gap: int = 2,
    cells: list[tuple[int, int]] | None = None,
) -> Image.Image:
    """Tile `[n, h, w, c]` images in [0, 1] into one picture, white gaps
    between; grey images dark on white, colour images in their colours.
    `cells` gives each image's `(row, column)`; by default they fill the
    rows in reading order."""
    n, height, width, channels = images.shape
    cells = cells or [divmod(i, columns) for i in range(n)]
    rows = max(row for row, _ in cells) + 1
    cell_h, cell_w = height * scale + gap, width * scale + gap
    canvas = np.full((rows * cell_h + gap, columns * cell_w + gap, channels), 255, np.uint8)
    pixels = np.clip(np.asarray(images) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if channels == 1:  # grey: dark strokes on white, as digits are usually shown
        pixels = 255 - pixels
    for image, (row, column) in zip(pixels, cells, strict=True):
        top, left = gap + row * cell_h, gap + column * cell_w
        big = image.repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[top : top + height * scale, left : left + width * scale] = big
    return Image.fromarray(canvas[..., 0] if channels == 1 else canvas)


# What `save_picture` writes for a file's suffix, and Pillow's options for it
# (lossless WebP and high-quality JPEG: these are pictures of pixels).
PICTURE_FORMATS = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
}


def picture_format(path: Path) -> tuple[str, dict]:
    """The format a picture file's suffix names, or a `TfvaeError` saying
    which suffixes are written."""
    found = PICTURE_FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise TfvaeError(
            f"{path}: tfvae writes pictures as .png, .jpg (.jpeg) or .webp files; "
            "give one of those suffixes"
        )
    return found


def save_picture(picture: Image.Image, path: Path) -> Path:
    """Write `picture` in the format its suffix names (`PICTURE_FORMATS`),
    atomically."""
    kind, options = picture_format(path)
    buffer = io.BytesIO()
    picture.save(buffer, format=kind, **options)
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)


def reconstructions(model, images: np.ndarray, columns: int = 16, labels=None) -> Image.Image:
    """Rows of originals, each directly above its reconstruction, `columns`
    pairs to a row (the last row holds the rest); a conditional VAE's given
    each image's class (`labels`)."""
    check_grid(len(images), images.shape[1:], "reconstructions", per_image=2)
    recon = np.asarray(model.reconstruct(images, labels))
    rows = [divmod(i, columns) for i in range(len(images))]
    cells = [(2 * row, column) for row, column in rows]
    cells += [(2 * row + 1, column) for row, column in rows]
    return image_grid(
        np.concatenate([images, recon]), columns=min(columns, len(images)), cells=cells
    )


def samples(
    model,
    n: int = 64,
    seed: int = 0,
    binary: bool = False,
    labels=None,
    columns=None,
    temperature: float = 1.0,
) -> Image.Image:
    """Images decoded from prior draws z ~ N(0, I), `columns` to a row (a
    square by default); a conditional VAE's of the classes `labels` `[n]`;
    at a `temperature` (`VAE.sample`)."""
    check_grid(n, model.image_shape, "samples")
    drawn = model.sample(n, seed=seed, binary=binary, labels=labels, temperature=temperature)
    images = np.asarray(drawn)
    return image_grid(images, columns=columns or math.ceil(math.sqrt(n)))


def class_samples(
    model,
    per_class: int = 8,
    seed: int = 0,
    binary: bool = False,
    classes=None,
    temperature: float = 1.0,
) -> Image.Image:
    """A conditional VAE's samples, one row of `per_class` for each of
    `classes` (label indices; by default the first `CLASS_ROWS` classes)."""
    classes = np.arange(min(len(model.classes), CLASS_ROWS)) if classes is None else classes
    labels = np.repeat(np.asarray(classes, np.int32), per_class)
    n = len(labels)
    return samples(model, n, seed, binary, labels, per_class, temperature)


def samples_of_classes(
    model, n: int, seed: int = 0, binary: bool = False, classes=(), temperature: float = 1.0
) -> tuple[Image.Image, list[int], int]:
    """A conditional VAE's samples, the label indices drawn and how many
    images: `n` of one class in a square, or, for several `classes` (or
    none: every class), one row each, `n` shared among them."""
    if len(classes) == 1:
        labels = list(classes) * n
        return samples(model, n, seed, binary, labels, temperature=temperature), list(classes), n
    classes = list(classes) or list(range(len(model.classes)))
    per_class = max(1, n // len(classes))
    picture = class_samples(model, per_class, seed, binary, classes, temperature)
    return picture, classes, per_class * len(classes)


def captioned(images: np.ndarray, captions: list[str], columns: int = 8) -> Image.Image:
    """`image_grid` with a line of text under each image (its score, say),
    so a picture of flagged images shows why each was flagged."""
    check_grid(len(images), images.shape[1:], "captioned images")
    scale = max(2, math.ceil(60 / images.shape[2]))  # room for about ten characters
    grid = image_grid(images, columns=min(columns, len(images)), scale=scale, gap=14)
    canvas = grid.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    cell_h, cell_w = images.shape[1] * scale + 14, images.shape[2] * scale + 14
    for i, caption in enumerate(captions):
        row, column = divmod(i, min(columns, len(images)))
        draw.text((14 + column * cell_w, (row + 1) * cell_h + 1), caption, fill=(0, 0, 0))
    return canvas


def run_pictures(model, images: np.ndarray, labels=None) -> dict[str, Image.Image]:
    """The pictures of a run, by name: the reconstructions of `images`, 64
    samples (seed 0; a conditional VAE's, one row per class) and, for a 2-D
    latent space, the manifold (an unconditional VAE's). The one drawing of
    them, for the finished run's PNGs and TensorBoard alike."""
    pictures = {
        "reconstructions": reconstructions(model, images, labels=labels),
        "samples": class_samples(model) if model.conditional else samples(model, 64, seed=0),
    }
    if model.code_dim == 2 and not model.conditional:
        pictures["manifold"] = manifold(model)
    return pictures


def latent_path(z_from: np.ndarray, z_to: np.ndarray, n: int, spherical: bool = False):
    """`n` codes `[n, latent]` from `z_from` to `z_to`, both included: evenly
    spaced on the line, or with `spherical` along the great circle (slerp,
    Shoemake 1985), which keeps the codes' norm where a line through a
    Gaussian's interior would shrink it."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b = np.asarray(z_from, np.float64), np.asarray(z_to, np.float64)
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if not spherical or np.sin(omega) < 1e-6:  # (anti)parallel codes: no single great circle
        return ((1 - t) * a + t * b).astype(np.float32)
    path = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return path.astype(np.float32)


def interpolate(model, image_from, image_to, n: int = 10, spherical: bool = False, labels=None):
    """The decoder's means `[n, h, w, c]` along `latent_path` between the
    posterior means of two images `[h, w, c]`: in the top layer's codes,
    the layers below at the prior's means (`VAE.decoded_means`). A
    conditional VAE encodes each image with its own class (`labels`, two)
    and decodes the path with the one-hot classes blended along it."""
    z_mean = model.posterior_means(np.stack([image_from, image_to]), labels=labels)
    codes = latent_path(z_mean[0], z_mean[1], n, spherical)
    blend = None
    if model.conditional:
        one_hot = np.eye(len(model.classes), dtype=np.float32)[np.asarray(labels)]
        blend = latent_path(one_hot[0], one_hot[1], n)
    return np.asarray(model.decoded_means(codes, blend))


def interpolation(model, image_from, image_to, n: int = 10, spherical: bool = False, labels=None):
    """One row: the first image, the `n` decoded steps from it to the second
    (`interpolate`), the second image."""
    check_grid(n + 2, model.image_shape, "an interpolation")
    path = interpolate(model, image_from, image_to, n, spherical, labels)
    row = np.concatenate([image_from[None], path, image_to[None]])
    return image_grid(row, columns=n + 2)


def manifold(model, steps: int = 20) -> Image.Image:
    """The decoder over a grid of the 2-D latent space (the top layer's, the
    layers below at the prior's means), at the normal quantiles (Kingma &
    Welling, fig. 4): equal steps in probability, not in z."""
    if model.code_dim != 2:
        raise ValueError("the manifold picture needs a 2-D latent space")
    quantiles = [NormalDist().inv_cdf((i + 0.5) / steps) for i in range(steps)]
    grid = np.array([(x, y) for y in reversed(quantiles) for x in quantiles], np.float32)
    images = np.asarray(model.decoded_means(grid))
    return image_grid(images, columns=steps, scale=1, gap=0)


def latent_scatter(model, images: np.ndarray, labels: np.ndarray | None, path: Path) -> Path:
    """Posterior means of `images` in a 2-D latent space, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z_mean = model.posterior_means(images, labels=labels)
    figure, axes = plt.subplots(figsize=(6.4, 5.4), dpi=100)
    if labels is None:
        axes.scatter(z_mean[:, 0], z_mean[:, 1], s=2, alpha=0.6, rasterized=True)
    else:
        colours = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "turbo")
        classes = np.unique(labels)
        for i, label in enumerate(classes):
            at = labels == label
            colour = colours(i if len(classes) <= 10 else i / max(1, len(classes) - 1))
            axes.scatter(
                z_mean[at, 0],
                z_mean[at, 1],
                s=2,
                alpha=0.6,
                color=colour,
                label=str(label),
                rasterized=True,
            )
        if len(classes) <= 20:
            axes.legend(
                title="label",
                markerscale=5,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                frameon=False,
            )
    axes.set_xlabel("$z_1$ (posterior mean)")
    axes.set_ylabel("$z_2$ (posterior mean)")
    axes.set_title("Test images in the latent space")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)
