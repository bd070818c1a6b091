"""User images in one subfolder per class, loaded lazily from disk (torchvision ``ImageFolder`` layout).

::

    path/
      cat/ 001.jpg 002.png ...
      dog/ 001.jpg ...

Class indices follow the sorted folder names. Every image is resized (shorter side to ``size``), center
cropped to ``size`` x ``size``, converted to a float tensor and normalized when it is read.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import Field, field_validator, model_validator
from torch import Tensor
from torch.utils.data import Dataset

from crosstask.data.datasets.base import DatasetConfig
from crosstask.errors import DataError
from crosstask.registry import DATASETS, StrictModel

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# grayscale images with imagenet statistics: the average of the three channels' statistics
IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD = [0.449], [0.226]


class Normalization(StrictModel):
    """Per-channel mean and standard deviation, applied to pixels in [0, 1]."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _matching(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values but std {len(self.std)}; give one per channel"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError("every std must be > 0")
        return self


class ImageFolderConfig(DatasetConfig):
    """Keys of a folder of images with one subfolder per class."""

    path: Path = Field(
        description="folder with one subfolder per class; relative: to the cwd, then the data root"
    )
    size: int = Field(
        default=224, ge=1, description="resize the shorter side to size, then center-crop size x size"
    )
    grayscale: bool = Field(default=False, description="one channel instead of RGB")
    normalize: Literal["imagenet", "none"] | Normalization = Field(
        default="imagenet", description="imagenet, none, or {mean: [...], std: [...]} per channel"
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXTENSIONS), min_length=1, description="image file suffixes"
    )
    classes: list[str] | None = Field(
        default=None,
        min_length=2,
        description="the class folder names in index order (default: the subfolders, sorted); a listed class "
        "may have no folder here (an evaluation set without it keeps the training set's numbering)",
    )
    verify: bool = Field(
        default=False, description="decode every image at build time to find corrupt files early"
    )

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) < len(value):
            raise ValueError(f"classes: lists a folder twice: {value}")
        return value

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        # ".JPG", "jpg" and ".jpg" all mean the same suffix
        return [("" if e.startswith(".") else ".") + e.lower() for e in value]

    @model_validator(mode="after")
    def _channels(self) -> ImageFolderConfig:
        channels = 1 if self.grayscale else 3
        if isinstance(self.normalize, Normalization) and len(self.normalize.mean) != channels:
            raise ValueError(
                f"normalize: gives {len(self.normalize.mean)} mean/std values but the images have {channels} "
                f"channel(s) (grayscale: {str(self.grayscale).lower()}); give {channels}"
            )
        return self

    def statistics(self) -> tuple[list[float], list[float]] | None:
        """The (mean, std) to normalize with, or None."""
        if isinstance(self.normalize, Normalization):
            return self.normalize.mean, self.normalize.std
        if self.normalize == "imagenet":
            return (
                (IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD) if self.grayscale else (IMAGENET_MEAN, IMAGENET_STD)
            )
        return None


def build_transform(size: int, statistics: tuple[list[float], list[float]] | None) -> Any:
    """Resize (shorter side), center crop, to tensor and normalize, as a picklable torchvision transform."""
    from torchvision import transforms  # imported here: torchvision is slow to import and only images need it

    steps = [transforms.Resize(size, antialias=True), transforms.CenterCrop(size), transforms.ToTensor()]
    if statistics is not None:
        steps.append(transforms.Normalize(*statistics))
    return transforms.Compose(steps)


def open_image(path: str, mode: str) -> Image.Image:
    """Decode the image at ``path`` in ``mode`` ("RGB" or "L"); an unreadable file raises DataError."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)  # convert decodes the whole file, so truncation shows up here
    except Exception as exc:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        reason = str(exc) or type(exc).__name__
        raise DataError(f"{path} cannot be read as an image: {reason}; remove or replace it") from None


class ImageFolderDataset(Dataset):
    """Images listed by path, decoded one at a time; an item is ``(C x H x W float32 tensor, label)``."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Any, mode: str):
        self.samples = samples
        self.classes = classes
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(open_image(path, self.mode)), label

    def __repr__(self) -> str:
        return f"ImageFolderDataset({len(self.samples)} images, {len(self.classes)} classes)"


def _resolve_folder(path: Path, root: Path) -> Path:
    """Find the image folder: absolute as given; relative from the working directory, then the data root."""
    path = path.expanduser()
    candidates = [path] if path.is_absolute() else list(dict.fromkeys([Path.cwd() / path, root / path]))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    files = [c for c in candidates if c.exists()]
    if files:
        raise DataError(
            f"image_folder: path: {files[0]} is a file, not a folder; point path: at the folder that holds "
            "one subfolder per class"
        )
    raise DataError(
        f"image_folder: path: folder '{path}' not found (looked at {', '.join(str(c) for c in candidates)}); "
        "fix path: (a relative path is tried from the working directory, then from the data root)"
    )


def list_samples(
    folder: Path, extensions: list[str], listed: list[str] | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """The (image path, class index) pairs under ``folder`` and the class names: ``listed`` (a class there
    may lack its folder), else the sorted subfolder names."""
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if listed is not None:
        extra = [name for name in found if name not in listed]
        if extra:
            raise DataError(
                f"image_folder: {folder} has class folder(s) {', '.join(extra[:10])} that classes: does not list "
                f"({', '.join(listed[:20])}); add them to classes: or move them out"
            )
    classes = list(listed) if listed is not None else found
    if not found:
        images = [p.name for p in folder.iterdir() if p.suffix.lower() in extensions]
        loose = f" It holds {len(images)} image file(s) directly;" if images else ""
        raise DataError(
            f"image_folder: {folder} has no class subfolders.{loose} put the images of each class in "
            "their own subfolder (path/<class name>/<image>)"
        )
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if name not in found:
            continue  # a listed class without a folder here
        # hidden files and folders (.DS_Store, .ipynb_checkpoints) are not samples
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        images = [str(p) for p in files if p.suffix.lower() in extensions]
        if not images:
            others = sorted({p.suffix.lower() or p.name for p in files})
            found = f" (it holds {', '.join(others[:10])} files)" if others else " (it is empty)"
            raise DataError(
                f"image_folder: class folder {class_dir} holds no images with a suffix in extensions: "
                f"{', '.join(extensions)}{found}; add images, extend extensions:, or remove the folder"
            )
        samples.extend((path, label) for path in images)
    return samples, classes


def verify_images(samples: list[tuple[str, int]], mode: str) -> None:
    """Decode every image (in threads; PIL releases the GIL) and report all unreadable ones at once."""

    def check(path: str) -> str | None:
        try:
            open_image(path, mode)
        except DataError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = [p for p in pool.map(check, [path for path, _ in samples]) if p is not None]
    if len(problems) == 1:
        raise DataError(f"image_folder: {problems[0]}")
    if problems:
        listed = "\n  ".join(problems[:20]) + (
            f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise DataError(f"image_folder: {len(problems)} of {len(samples)} images cannot be read:\n  {listed}")


@DATASETS.register("image_folder", config=ImageFolderConfig)
def build_image_folder(config: ImageFolderConfig, root: Path) -> dict[str, ImageFolderDataset]:
    """Your images, one subfolder per class; resized, center-cropped and normalized when read."""
    folder = _resolve_folder(config.path, root)
    samples, classes = list_samples(folder, config.extensions, config.classes)
    mode = "L" if config.grayscale else "RGB"
    if config.verify:
        verify_images(samples, mode)
    dataset = ImageFolderDataset(samples, classes, build_transform(config.size, config.statistics()), mode)
    logger.info("image_folder: %s: %d images in %d classes", folder, len(samples), len(classes))
    return {"all": dataset}
