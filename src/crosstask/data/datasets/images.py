"""Shared preparation of in-memory image arrays: resize, shift and normalize once, at load time.

The shifts (rotation, blur, inversion, noise) make a second domain from one dataset, as rotated MNIST does
for domain generalization (Ghifary et al. 2015; DomainBed's RotatedMNIST).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.registry import StrictModel


class ImageShiftOptions(StrictModel):
    """Keys that shift every image of a dataset (pixels in [0, 1]), applied in this order."""

    rotate: float = Field(default=0.0, ge=-180, le=180, description="rotate every image by this many degrees")
    blur: float = Field(default=0.0, ge=0.0, description="sigma of a Gaussian blur, in pixels")
    invert: bool = Field(default=False, description="swap ink and background")
    noise: float = Field(
        default=0.0, ge=0.0, description="std of added Gaussian pixel noise (pixels in [0, 1])"
    )
    shift_seed: int = Field(default=0, description="seed of the noise")


class ImageArrayOptions(ImageShiftOptions):
    """Keys of in-memory image datasets (mnist, usps)."""

    size: int = Field(default=28, ge=4, description="resize to size x size (bilinear)")
    mean: float = Field(default=0.5, description="normalize: (x - mean) / std, on pixels in [0, 1]")
    std: float = Field(default=0.5, gt=0)


def shift_images(images: Tensor, options: ImageShiftOptions, stream: int = 0) -> Tensor:
    """``images`` (..., h, w) in [0, 1] with the shifts of ``options`` applied (unchanged without any);
    ``stream`` keeps the noise of one split apart from another's."""
    from scipy import ndimage

    if not (options.rotate or options.blur or options.invert or options.noise):
        return images
    array = images.numpy().astype(np.float32, copy=True)
    if options.rotate:
        array = ndimage.rotate(array, options.rotate, axes=(-2, -1), reshape=False, order=1, mode="constant")
    if options.blur:
        array = ndimage.gaussian_filter(array, sigma=(0,) * (array.ndim - 2) + (options.blur, options.blur))
    if options.invert:
        array = 1.0 - array
    if options.noise:
        rng = np.random.default_rng([options.shift_seed, stream] if stream else options.shift_seed)
        array = array + rng.normal(0.0, options.noise, array.shape).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def prepare_images(images: Tensor, options: ImageArrayOptions, stream: int = 0) -> Tensor:
    """Resize (n, c, h, w) images in [0, 1] to ``options.size``, shift and normalize them."""
    if images.shape[-1] != options.size or images.shape[-2] != options.size:
        images = F.interpolate(
            images, size=(options.size, options.size), mode="bilinear", align_corners=False
        )
        images = images.clamp_(0.0, 1.0)
    images = shift_images(images, options, stream)
    return ((images - options.mean) / options.std).contiguous()
