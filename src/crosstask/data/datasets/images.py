"""Shared preparation of in-memory image arrays: resize and normalize once, at load time."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from crosstask.registry import StrictModel


class ImageArrayOptions(StrictModel):
    """Keys of in-memory image datasets (mnist, usps)."""

    size: int = Field(default=28, ge=4, description="resize to size x size (bilinear)")
    mean: float = Field(default=0.5, description="normalize: (x - mean) / std, on pixels in [0, 1]")
    std: float = Field(default=0.5, gt=0)


def prepare_images(images: Tensor, options: ImageArrayOptions) -> Tensor:
    """Resize (n, c, h, w) images in [0, 1] to ``options.size`` and normalize them."""
    if images.shape[-1] != options.size or images.shape[-2] != options.size:
        images = F.interpolate(
            images, size=(options.size, options.size), mode="bilinear", align_corners=False
        )
        images = images.clamp_(0.0, 1.0)
    return ((images - options.mean) / options.std).contiguous()
