"""Weak and strong augmentations of whole batches of tensors, for consistency-based self-training (FixMatch).

FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS, section 2.3 and appendix table 12) pseudo-labels a weakly augmented view and trains the
model to predict that label on a strongly augmented view of the same sample. Here both views are made on the
fly from the batch tensors, on the batch's device, with the method's own random generator:

Images (4-D inputs ``(N, C, H, W)``):

- weak: a random translation by up to ``translate`` of each side (12.5 % in the paper), in whole pixels, the
  border pixels extended into the gap, and a horizontal flip with probability 1/2 when ``flip`` is set (the
  paper's "flip-and-shift"; leave it off for digits and text, which a mirror changes).
- strong: the weak view, then RandAugment-like (Cubuk et al. 2020, "RandAugment", CVPR workshops): ``ops`` operations drawn per
  sample from identity, brightness, contrast, sharpness, solarize, posterize, rotate, shear x/y and translate
  x/y, each at a magnitude drawn uniformly from the range of FixMatch's table 12 (its "RA" variant with
  random magnitudes), then Cutout (DeVries & Taylor 2017): a square of side up to ``cutout`` of the image
  side set to gray. Equalize, autocontrast and color are left out: on grayscale or normalized tensors they
  are the identity or need an 8-bit histogram.

The operations work on any value range ([0, 1], [-1, 1], standardized): "black" is each image's minimum,
"gray" the midpoint of its range, and geometric operations extend the border instead of filling with zeros.

Anything else (feature vectors ``(N, D)``, sequences) is treated as features, an extension of ours since the
paper only augments images:

- weak: gaussian noise of ``noise`` times each feature's standard deviation in the batch;
- strong: noise of ``strong_noise`` times that, and feature dropout: each feature of each sample replaced by
  its batch mean with probability ``feature_dropout``.

Training streams may also warp their images (``data.train.<name>.augment``, :class:`WarpConfig`): the small
random affine distortions of Koch, Zemel & Salakhutdinov 2015 ("Siamese Neural Networks for One-shot Image
Recognition", ICML deep learning workshop, section 3.3), which the Omniglot one-shot literature uses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.errors import DataError
from crosstask.registry import ComponentConfig, StrictModel


class AugmentConfig(ComponentConfig):
    """Keys of the methods that augment batches (combine with the method's own config class)."""

    translate: float = Field(
        default=0.125, ge=0.0, lt=0.5, description="weak view: largest shift, as a fraction of the image side"
    )
    flip: bool = Field(default=False, description="weak view: random horizontal flips (natural images only)")
    ops: int = Field(default=2, ge=0, le=10, description="strong view: random operations per sample (N)")
    cutout: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="strong view: largest Cutout square, as a fraction of the side",
    )
    noise: float = Field(
        default=0.1, ge=0.0, description="features, weak view: noise std, relative to each feature's std"
    )
    strong_noise: float = Field(
        default=0.3, ge=0.0, description="features, strong view: noise std, relative to each feature's std"
    )
    feature_dropout: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="features, strong view: probability of dropping a feature"
    )


# Index of each strong image operation; the geometric ones (ROTATE and after) share one resampling.
IDENTITY, BRIGHTNESS, CONTRAST, SHARPNESS, SOLARIZE, POSTERIZE = range(6)
ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y = range(6, 11)
NUM_OPS = 11


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _per_image(values: Tensor, x: Tensor) -> Tensor:
    """Per-sample values shaped to broadcast over an image batch."""
    return values.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def _range(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's minimum and maximum, shaped (N, 1, 1, 1)."""
    flat = x.flatten(1)
    return _per_image(flat.amin(1), x), _per_image(flat.amax(1), x)


# ----------------------------------------------------------------------------- images


def translate_images(x: Tensor, largest: float, generator: torch.Generator) -> Tensor:
    """Shift every image by a random whole number of pixels, at most ``largest`` of its side, each way."""
    n, _, height, width = x.shape
    pad_y, pad_x = round(largest * height), round(largest * width)
    if pad_y == 0 and pad_x == 0:
        return x
    padded = F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode="replicate")
    dy = torch.randint(0, 2 * pad_y + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad_x + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
    samples = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[samples, channels, rows, cols]


def flip_images(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _affine(x: Tensor, choice: Tensor, magnitude: Tensor) -> Tensor:
    """Rotate, shear or translate each sample whose choice is geometric (one resampling for the batch)."""
    n = len(x)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    angle = torch.deg2rad(30.0 * magnitude)  # rotate: [-30, 30] degrees
    rotate = choice == ROTATE
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0] = torch.where(rotate, cos, theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(rotate, -sin, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(rotate, sin, theta[:, 1, 0])
    theta[:, 1, 1] = torch.where(rotate, cos, theta[:, 1, 1])
    shear = 0.3 * magnitude  # shear: [-0.3, 0.3]
    theta[:, 0, 1] = torch.where(choice == SHEAR_X, shear, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(choice == SHEAR_Y, shear, theta[:, 1, 0])
    shift = 2 * 0.3 * magnitude  # translate: [-0.3, 0.3] of the side; grid coordinates span 2
    theta[:, 0, 2] = torch.where(choice == TRANSLATE_X, shift, theta[:, 0, 2])
    theta[:, 1, 2] = torch.where(choice == TRANSLATE_Y, shift, theta[:, 1, 2])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype)


def _blur(x: Tensor) -> Tensor:
    """The 3x3 smoothing filter of PIL's sharpness enhancer (center weight 5, the others 1), per channel."""
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def _random_operation(x: Tensor, generator: torch.Generator) -> Tensor:
    """One RandAugment round: every sample gets one operation at a random magnitude."""
    n, device = len(x), x.device
    choice = torch.randint(0, NUM_OPS, (n,), generator=generator, device=device)
    signed = _uniform(n, -1.0, 1.0, generator, device)  # geometric ranges are symmetric
    factor = _per_image(_uniform(n, 0.05, 0.95, generator, device), x)  # enhance factors: [0.05, 0.95]
    low, high = _range(x)
    span = (high - low).clamp_min(1e-12)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    threshold = low + span * _per_image(torch.rand(n, generator=generator, device=device), x)
    levels = 2.0 ** torch.randint(4, 9, (n,), generator=generator, device=device)  # posterize: 4-8 bits
    levels = _per_image(levels, x)

    def pick(op: int) -> Tensor:
        return (choice == op).view(-1, 1, 1, 1)

    out = torch.where(choice.view(-1, 1, 1, 1) >= ROTATE, _affine(x, choice, signed), x)
    out = torch.where(pick(BRIGHTNESS), low + (x - low) * factor, out)  # blend with black
    out = torch.where(pick(CONTRAST), mean + (x - mean) * factor, out)  # blend with the mean
    blurred = _blur(x)
    out = torch.where(pick(SHARPNESS), blurred + (x - blurred) * factor, out)
    out = torch.where(pick(SOLARIZE) & (x >= threshold), low + high - x, out)  # invert above the threshold
    # keep the top bits, as PIL does: levels multiples of span / levels, the top one (levels - 1) / levels
    quantized = low + torch.floor((x - low) / span * levels).clamp_max(levels - 1) / levels * span
    return torch.where(pick(POSTERIZE), quantized, out)


def cutout_images(x: Tensor, largest: float, generator: torch.Generator) -> Tensor:
    """Set a random square of side up to ``largest`` of the image side to gray, in every image."""
    n, _, height, width = x.shape
    device = x.device
    side = _uniform(n, 0.0, largest, generator, device) * min(height, width)
    cy = torch.rand(n, generator=generator, device=device) * height
    cx = torch.rand(n, generator=generator, device=device) * width
    ys = torch.arange(height, device=device) + 0.5
    xs = torch.arange(width, device=device) + 0.5
    inside_y = (ys[None, :] - cy[:, None]).abs() < side[:, None] / 2
    inside_x = (xs[None, :] - cx[:, None]).abs() < side[:, None] / 2
    square = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    low, high = _range(x)
    return torch.where(square, (low + high) / 2, x)


class WarpConfig(StrictModel):
    """Random affine warps of a training stream's images (``data.train.<name>.augment``).

    Each image gets its own warp; each of the four parts (rotation, shear, scale, translation) is applied
    with probability ``probability``, at a magnitude drawn uniformly from its range. The defaults are Koch et
    al.'s (2015, section 3.3): rotation within ±10°, shear within ±0.3, scale within [0.8, 1.2] per axis,
    translation within ±2 of their 105 pixels (``translate=0.02`` of the side), each part with probability
    1/2. The border is extended into the gaps.
    """

    rotate: float = Field(default=10.0, ge=0.0, le=180.0, description="largest rotation, degrees")
    shear: float = Field(default=0.3, ge=0.0, le=1.0, description="largest shear, in x and in y")
    scale: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="largest relative change of scale, per axis"
    )
    translate: float = Field(
        default=0.02, ge=0.0, lt=0.5, description="largest shift, a fraction of the side"
    )
    probability: float = Field(default=0.5, ge=0.0, le=1.0, description="chance of applying each part")


def warp_images(
    x: Tensor, config: WarpConfig, generator: torch.Generator, where: str = "stream", batch_dims: int = 1
) -> Tensor:
    """Every image of ``x`` (``(..., C, H, W)`` after ``batch_dims`` leading dimensions: 1 for a batch, 2 for
    episodes of batches) through its own random affine warp drawn from ``generator`` (on the CPU: the same
    warps on every device)."""
    if x.dim() != batch_dims + 3 or not x.is_floating_point():
        raise DataError(
            f"{where}: augment warps images, but its inputs are {tuple(x.shape)} {x.dtype} tensors; remove "
            "augment: from this stream, or give it (N, C, H, W) images"
        )
    leading, (channels, height, width) = x.shape[:-3], x.shape[-3:]
    images = x.reshape(-1, channels, height, width)
    n = len(images)

    def draw(largest: float, pairs: int = 1) -> Tensor:
        """Magnitudes in [-largest, largest], zero where the part is not applied."""
        value = (2 * torch.rand(n, pairs, generator=generator) - 1) * largest
        used = torch.rand(n, 1, generator=generator) < config.probability
        return torch.where(used, value, torch.zeros_like(value))

    angle = torch.deg2rad(draw(config.rotate)[:, 0])
    shear = draw(config.shear, 2)
    scale = 1 / (1 + draw(config.scale, 2))  # theta maps output to input: the image scales by 1 + draw
    shift = 2 * draw(config.translate, 2)  # grid coordinates span 2
    rotation = torch.stack(
        [torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], -2
    )
    shearing = torch.eye(2).repeat(n, 1, 1)
    shearing[:, 0, 1], shearing[:, 1, 0] = shear[:, 0], shear[:, 1]
    linear = rotation @ shearing @ torch.diag_embed(scale)
    theta = torch.cat([linear, shift[:, :, None]], dim=2).to(images.device)
    grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype).reshape(*leading, channels, height, width)


# ----------------------------------------------------------------------------- features


def _feature_noise(x: Tensor, relative: float, generator: torch.Generator) -> Tensor:
    if relative == 0:
        return x
    std = x.float().std(dim=0, unbiased=False, keepdim=True) if len(x) > 1 else torch.zeros_like(x[:1])
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    return (x.float() + relative * std * noise).to(x.dtype)


def _feature_dropout(x: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    if probability == 0:
        return x
    drop = torch.rand(x.shape, generator=generator, device=x.device) < probability
    return torch.where(drop, x.mean(dim=0, keepdim=True), x)


# ----------------------------------------------------------------------------- the two views


class Augment:
    """Makes the weak and strong views of a batch with its own generator (seeded; its state is saved)."""

    def __init__(self, config: AugmentConfig, seed: int):
        self.config = config
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._device: torch.device | None = None  # the device of the batches the generator serves
        self._pending: Tensor | None = None  # a generator state loaded before the device was known

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._device != device:
            self._generator, self._device = torch.Generator(device=device), device
            self._generator.manual_seed(self.seed)
            if self._pending is not None:
                self._generator.set_state(self._pending)
                self._pending = None
        return self._generator

    @staticmethod
    def is_image(x: Tensor) -> bool:
        return x.dim() == 4 and x.is_floating_point()

    def weak(self, x: Tensor) -> Tensor:
        """A small change: a shift of a few pixels (and a flip), or a little feature noise."""
        g = self.generator(x.device)
        if not self.is_image(x):
            return _feature_noise(x, self.config.noise, g)
        out = translate_images(x, self.config.translate, g)
        return flip_images(out, g) if self.config.flip else out

    def strong(self, x: Tensor) -> Tensor:
        """A large change: ``ops`` random operations and Cutout, or strong noise and feature dropout."""
        g = self.generator(x.device)
        if not self.is_image(x):
            return _feature_dropout(
                _feature_noise(x, self.config.strong_noise, g), self.config.feature_dropout, g
            )
        out = self.weak(x)  # as in FixMatch, the strong view starts from a flip-and-shift
        for _ in range(self.config.ops):
            out = _random_operation(out, g)
        return cutout_images(out, self.config.cutout, g) if self.config.cutout > 0 else out

    def state_dict(self) -> dict[str, Any]:
        state = self._generator.get_state() if self._generator is not None else self._pending
        return {"generator": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator, self._pending = None, state.get("generator")
