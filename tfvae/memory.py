"""What a request needs in memory, what the process can have, and one clear
line when the first is larger, before anything is allocated.

TensorFlow answers an allocation it cannot make with a traceback, and
under an address-space limit some allocations abort the process outright;
so requests are estimated from their sizes first, and what still runs out
(`out_of_memory`) becomes the same kind of line. The estimates are
calibrated against measured peak memory in `benchmarks/memory_estimate.py`.
Kept free of TensorFlow imports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
from collections.abc import Iterator
from pathlib import Path

from tfvae.config import ModelConfig, TrainConfig, conv_padded, pixel_parameters
from tfvae.errors import OutOfMemoryError

FLOAT = 4  # bytes of a float32
# Copies of every weight at the peak of a run: the weight, its gradient,
# Adam's two moments, and the copies that initialising and checkpointing
# make (measured with wide layers, whose weights dominate; see
# docs/results/memory.md#the-training-estimate-against-measured-peaks).
STATE_COPIES = 8
# Numbers a step holds for each number of the forward pass, kept for the
# backward pass with their gradients: hidden layers, and pixel-sized tensors
# (logits, targets broadcast to them, per-pixel log-densities and their
# gradients). Calibrated on IWAE K=500 and a batch of 4,000
# (docs/results/memory.md).
HIDDEN_COPIES = 3
PIXEL_COPIES = 12
# The conv body's feature maps: its unfused convolution gradients keep about
# twice what dense layers do (calibrated on conv with K=50,
# docs/results/memory.md).
MAP_COPIES = 6


@dataclasses.dataclass(frozen=True)
class Budget:
    """Bytes this process can still allocate, and which limit sets that."""

    free: int
    limit: str


@dataclasses.dataclass(frozen=True)
class Need:
    """An estimate in bytes, by part, and the options that lower each part."""

    parts: dict[str, int]
    lower: dict[str, str]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def largest(self) -> str:
        return max(self.parts, key=self.parts.__getitem__)


def size(n_bytes: float) -> str:
    """`n_bytes` for people: 1.2 GB, 340 MB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e3:.0f} kB"


def _status(field: str) -> int:
    """A size from /proc/self/status in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cgroup_limit() -> int | None:
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def budget() -> Budget:
    """What the process can still allocate: the tightest of physical memory
    and the container's limit (less what the process holds) and of the
    address-space limit (`ulimit -v`, less its address space in use)."""
    resident = _status("VmRSS")
    options = [
        Budget(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") - resident, "memory")
    ]
    cgroup = _cgroup_limit()
    if cgroup is not None:
        options.append(Budget(cgroup - resident, "the container's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        options.append(Budget(soft - _status("VmSize"), "the address-space limit (ulimit -v)"))
    return min(options, key=lambda option: option.free)


def check(need: Need, what: str, available: Budget | None = None) -> None:
    """Refuse `need` in one line if it is more than the process can have."""
    available = available or budget()
    if need.total <= available.free:
        return
    parts = ", ".join(f"{name} {size(n)}" for name, n in need.parts.items() if n)
    raise OutOfMemoryError(
        f"{what} needs about {size(need.total)} ({parts}), more than the "
        f"{size(max(available.free, 0))} this process can still use under "
        f"{available.limit}; lower {need.lower[need.largest()]}"
    )


@contextlib.contextmanager
def out_of_memory(what: str, lower: str) -> Iterator[None]:
    """Turn TensorFlow's `ResourceExhaustedError`, or a `MemoryError`, raised
    while doing `what` into one line saying which options to `lower`."""
    import tensorflow as tf

    try:
        yield
    except OutOfMemoryError:
        raise
    except (tf.errors.ResourceExhaustedError, MemoryError):
        raise OutOfMemoryError(f"ran out of memory while {what}; lower {lower}") from None


# --- estimates -------------------------------------------------------------


def _dense(sizes: list[int]) -> int:
    """Weights of a stack of dense layers through `sizes`."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _conv_grid(image_shape, halvings: int = 2) -> tuple[int, int]:
    height, width, _ = image_shape
    return conv_padded(height, halvings), conv_padded(width, halvings)


def _resnet(config: ModelConfig, image_shape, out: int) -> tuple[int, int, int, int]:
    """The resnet body's convolution weights `(encoder, decoder)` and its
    feature-map numbers per image `(encoder, decoder)` (`tfvae.resnet`)."""
    channels, blocks = list(config.channels), config.blocks
    height, width = _conv_grid(image_shape, config.halvings)

    def conv(a: int, b: int) -> int:  # a 3x3 convolution's weights
        return 9 * a * b + b

    def block(a: int, b: int) -> int:  # a residual block's two
        return 2 * conv(a, b)

    encoder = conv(image_shape[2], channels[0]) + sum(
        conv(a, b) + blocks * block(b, b)
        for a, b in zip([channels[0], *channels[:-1]], channels, strict=True)
    )
    below = [channels[0], *channels[:-1]]
    decoder = sum(blocks * block(c, c) + conv(c, b) for c, b in zip(channels, below, strict=True))
    decoder += conv(channels[0], out)
    maps = [(height >> (i + 1)) * (width >> (i + 1)) * c for i, c in enumerate(channels)]
    encoder_maps = height * width * channels[0] + sum((2 * blocks + 1) * m for m in maps)
    decoder_maps = sum((2 * blocks + 1) * m for m in maps) + height * width * channels[0]
    return encoder, decoder, encoder_maps, decoder_maps


def _hierarchy(config: ModelConfig) -> tuple[int, int]:
    """The weights a stack of stochastic layers adds (`layers.TopDownEncoder`:
    the bottom-up, top-down and head layers; the one-layer model's head is
    counted with its body), and its activations per image."""
    dims, width = config.latent_dims, config.hidden_units[-1]
    if len(dims) == 1:
        return 0, 3 * dims[0]
    upper = len(dims) - 1
    weights = upper * (width * width + width)  # bottom-up
    weights += sum(n * width + width for n in dims[1:])  # top-down states
    weights += (
        sum(2 * width * 2 * n + 2 * n for n in dims[:-1]) + width * 2 * dims[-1] + 2 * dims[-1]
    )
    weights += sum(width * 2 * n + 2 * n for n in dims[:-1])  # the prior's heads
    return weights - (width * 2 * dims[0] + 2 * dims[0]), 2 * upper * width + 5 * sum(dims)


def _parameters(config: ModelConfig, image_shape) -> int:
    """Weights of the encoder and decoder that `tfvae.layers` builds."""
    pixels = math.prod(image_shape)
    per_pixel = pixel_parameters(config.likelihood)
    hidden, latent = list(config.hidden_units), config.latent_dims[0]
    extra = _hierarchy(config)[0] + config.pseudo_inputs * pixels
    if config.arch == "mlp":
        decoder = _dense([latent, *hidden[::-1], pixels * per_pixel])
        extra += _class_rows(config, pixels * per_pixel)
        return _dense([pixels, *hidden, 2 * latent]) + decoder + extra
    channels = image_shape[2]
    out = channels * per_pixel
    height, width = _conv_grid(image_shape, config.halvings)
    scale = 2**config.halvings
    if config.arch == "resnet":
        flat = (height // scale) * (width // scale) * config.channels[-1]
        convs, transposed, _, _ = _resnet(config, image_shape, out)
    else:
        flat = (height // scale) * (width // scale) * 64
        convs = 9 * channels * 32 + 32 + 9 * 32 * 64 + 64
        transposed = 9 * 64 * 64 + 64 + 9 * 64 * 32 + 32 + 9 * 32 * out + out
    encoder = convs + _dense([flat, *hidden, 2 * latent])
    extra += _class_rows(config, flat)
    return encoder + _dense([latent, *hidden[::-1], flat]) + transposed + extra


def _class_rows(config: ModelConfig, decoder_dense: int) -> int:
    """The kernel rows a conditional VAE's class adds to every dense layer
    (`layers._Coder.through`): the hidden layers of both networks, the
    encoder's top head and the decoder's last dense layer, `decoder_dense`
    wide."""
    outputs = 2 * sum(config.hidden_units) + 2 * config.latent_dims[-1] + decoder_dense
    return config.num_classes * outputs


def _step_numbers(config: ModelConfig, image_shape) -> tuple[int, int]:
    """Numbers a training step holds per image in the encoder and per code
    in the decoder: `HIDDEN_COPIES` of each dense layer's output,
    `MAP_COPIES` of each conv feature map and `PIXEL_COPIES` of each
    pixel-sized tensor (the image itself twice)."""
    pixels = math.prod(image_shape)
    hidden, latent = sum(config.hidden_units), config.latent_dims[0]
    encoder_maps = decoder_maps = 0
    if config.arch == "resnet":
        out = image_shape[2] * pixel_parameters(config.likelihood)
        _, _, encoder_maps, decoder_maps = _resnet(config, image_shape, out)
    elif config.arch == "conv":
        height, width = _conv_grid(image_shape)
        quarter = (height // 4) * (width // 4) * 64
        encoder_maps = (height // 2) * (width // 2) * 32 + quarter
        decoder_maps = quarter + (height // 2) * (width // 2) * 64 + height * width * 32
    stochastic = _hierarchy(config)[1]
    encoder = HIDDEN_COPIES * (hidden + stochastic) + MAP_COPIES * encoder_maps + 2 * pixels
    decoder = HIDDEN_COPIES * (latent + hidden) + MAP_COPIES * decoder_maps
    return encoder, decoder + PIXEL_COPIES * pixels * pixel_parameters(config.likelihood)


def training_need(config: TrainConfig, image_shape, n_train: int, n_held: int) -> Need:
    """What training `config` on `n_train` images of `image_shape` needs,
    with `n_held` test and validation images scored as float32.

    - weights and Adam state: `STATE_COPIES` of every weight, 4 bytes each;
    - activations of a step: `_step_numbers` x 4 bytes, for the batch in the
      encoder and batch x k codes in the decoder;
    - data: the decoded images (uint8) and the pipeline's copy of them, and
      the scored images as float32 (and their pipeline's copy).
    """
    pixels = math.prod(image_shape)
    batch = min(config.batch_size, max(n_train, 1))
    encoder, decoder = _step_numbers(config.model, image_shape)
    activations = FLOAT * batch * (encoder + config.k * decoder)
    weights = "--hidden or --latent-dim" + (" (or --resize)" if pixels > 4096 else "")
    return Need(
        parts={
            "weights and Adam state": STATE_COPIES * FLOAT * _parameters(config.model, image_shape),
            "activations of a step": activations,
            "data": 2 * n_train * pixels + 2 * FLOAT * n_held * pixels,
        },
        lower={
            "weights and Adam state": weights,
            "activations of a step": "--batch-size" + (" or --k" if config.k > 1 else ""),
            "data": "--resize or --limit",
        },
    )


def images_need(n_images: int, image_shape) -> Need:
    """Decoded uint8 images held in memory (a data set being loaded)."""
    return Need(
        parts={"decoded images": n_images * math.prod(image_shape)},
        lower={"decoded images": "--resize (or --limit, or use a smaller data set)"},
    )
