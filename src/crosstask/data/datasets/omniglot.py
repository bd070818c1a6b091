"""Omniglot (Lake, Salakhutdinov and Tenenbaum 2015, "Human-level concept learning through probabilistic
program induction", Science): handwritten characters of many alphabets, each drawn once by 20 people.

Only the small official pieces are read, from ``<data root>/omniglot_lake_small`` (or the ``path:`` key):
the files of github.com/brendenlake/omniglot (``python/`` folder), MIT license (``LICENSE.omniglot`` there,
(c) 2015 Brenden Lake). Every image is a 105x105 binary PNG with dark strokes on a white background; here
ink is 1 and background 0 (before normalization), resized to ``size`` x ``size`` (28 by default, the
field's convention) by exact area averaging.

``part`` picks what to load:

- ``background1``: ``images_background_small1.zip``, the "minimal" background set 1: 5 alphabets
  (Balinese, Early_Aramaic, Greek, Korean, Latin), 136 characters x 20 drawers = 2720 images.
- ``background2``: ``images_background_small2.zip``, minimal set 2: 5 alphabets (Greek,
  Japanese_(katakana), Latin, Sanskrit, Tagalog), 156 characters x 20 = 3120 images.
- ``background``: both sets. They share Greek and Latin (the same 50 characters, byte-identical images),
  so each of those is kept once: 8 alphabets, 242 characters, 4840 images. Set 1's classes and alphabets
  keep their indices; set 2's others follow them.
- ``runs``: ``all_runs.zip``, the paper's 20 one-shot runs, each 20-way within one evaluation alphabet:
  20 support images (``runNN/training/classKK.png``, class KK-1) and 20 queries (``runNN/test/itemKK.png``)
  whose class is that of the support image ``runNN/class_labels.txt`` names; 400 + 400 images.

Labels of the background parts: ``{"character": class, "alphabet": alphabet, "drawer": 0..19}``, classes
ordered by alphabet then character folder; ``classes=`` names them (``"Greek/character05"``). Labels of
``runs``: ``{"character": class within the run (0..19), "run": 0..19, "role": 0 support / 1 query}``.

``alphabets`` / ``exclude_alphabets`` keep or leave out alphabets of the background parts (class indices stay
contiguous): meta-testing on set 2 after meta-training on set 1 needs ``exclude_alphabets: [Greek, Latin]``
to be class- and alphabet-disjoint.

``rotations_as_classes`` (background parts only) adds each character rotated counter-clockwise by 90, 180
and 270 degrees (``np.rot90``) as three new classes, as Santoro et al. (2016) and Vinyals et al. (2016)
did: rotation ``r`` (0..3) of character ``c`` is class ``c + r * num_characters``, named
``"Greek/character05@90"``; alphabet and drawer labels are those of the unrotated image.

Protocol of Lake et al.: learn only from background images (here the harder "minimal" setting), then
report the mean error over the 20 runs. This is NOT the 1623-class 5/20-way episode benchmark of Vinyals
et al. (2016), which needs the full images_background/images_evaluation sets (not available here).

The builder returns the whole part as ``all``, and ``test_fraction`` defaults to 0 here (a part is a set of
classes for episodes, used whole); ``val_fraction``/``test_fraction``/``limit``/``per_class`` (with
``per_class_label``) work as for any dataset.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, find_files
from crosstask.data.datasets.images import ImageArrayOptions, prepare_images
from crosstask.errors import DataError
from crosstask.registry import DATASETS

FOLDER = "omniglot_lake_small"
SIDE = 105
PARTS = {
    "background1": ["images_background_small1.zip"],
    "background2": ["images_background_small2.zip"],
    "background": ["images_background_small1.zip", "images_background_small2.zip"],
    "runs": ["all_runs.zip"],
}
ROTATIONS = (0, 90, 180, 270)
_DRAWING = re.compile(r"^\d+_(\d+)\.png$")  # <character id>_<drawer 01..20>.png
_SUPPORT = re.compile(r"^class(\d+)\.png$")
_RUN_LABELS = re.compile(r"^(?:(.*)/)?(run\d+)/class_labels\.txt$")
_FIX = "replace it with an intact copy from github.com/brendenlake/omniglot (python/ folder)"


class OmniglotConfig(DatasetConfig, ImageArrayOptions):
    path: Path | None = Field(
        default=None, description=f"folder holding the Omniglot zips (default <data root>/{FOLDER})"
    )
    part: Literal["background1", "background2", "background", "runs"] = Field(
        default="background1",
        description="background1/background2: a minimal background set; background: both; runs: the 20 "
        "one-shot runs",
    )
    size: int = Field(default=28, ge=4, description="resize 105x105 to size x size (area averaging)")
    rotations_as_classes: bool = Field(
        default=False,
        description="add each character rotated by 90/180/270 degrees as new classes (class c + r * n)",
    )

    test_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="carved from the part (default 0: a part is a set of classes, used whole)",
    )
    alphabets: list[str] | None = Field(
        default=None, description="keep only these alphabets (background parts; default: all)"
    )
    exclude_alphabets: list[str] = Field(
        default_factory=list,
        description="leave these alphabets out (background parts): e.g. Greek and Latin, which both minimal sets hold",
    )

    @model_validator(mode="after")
    def _rotations_need_background(self) -> OmniglotConfig:
        if self.rotations_as_classes and self.part == "runs":
            raise ValueError(
                "rotations_as_classes applies to the background parts only: the runs are Lake et al.'s fixed "
                "one-shot tasks; use part: background1, background2 or background, or drop rotations_as_classes"
            )
        if self.part == "runs" and (self.alphabets is not None or self.exclude_alphabets):
            raise ValueError(
                "alphabets and exclude_alphabets choose among the background parts' alphabets, not runs"
            )
        return self


# ----------------------------------------------------------------------------- reading the zips


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"omniglot: {path} cannot be opened as a zip file ({exc}); {_FIX}") from None


def _read(archive: zipfile.ZipFile, path: Path, member: str) -> bytes:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise DataError(
            f"omniglot: {path}: member {member} cannot be read ({exc}); the zip is damaged, {_FIX}"
        ) from None


def _ink(archive: zipfile.ZipFile, path: Path, member: str) -> np.ndarray:
    """One drawing as uint8 ink (255 = stroke, 0 = paper), from the dark-on-white PNG ``member``."""
    try:
        with Image.open(io.BytesIO(_read(archive, path, member))) as image:
            gray = np.asarray(image.convert("L"))  # convert decodes everything, so truncation shows here
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for broken files
        reason = str(exc) or type(exc).__name__
        raise DataError(
            f"omniglot: {path}: member {member} cannot be decoded as an image ({reason}); the zip is "
            f"damaged, {_FIX}"
        ) from None
    if gray.shape != (SIDE, SIDE):
        raise DataError(
            f"omniglot: {path}: member {member} is {gray.shape[1]}x{gray.shape[0]}, not {SIDE}x{SIDE}; is "
            f"this an original Omniglot zip? {_FIX}"
        )
    return 255 - gray


def _members(archive: zipfile.ZipFile) -> list[str]:
    """File members, without folders and without hidden or macOS metadata entries."""
    return [
        name
        for name in archive.namelist()
        if not name.endswith("/")
        and not any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))
    ]


def area_matrix(size: int, side: int = SIDE) -> Tensor:
    """(size, side) weights of exact area averaging: output pixel i covers [i, i+1) * side / size of the
    input, and each input pixel counts with the fraction of it that falls inside."""
    scale = side / size
    lo = torch.arange(size, dtype=torch.float64).unsqueeze(1) * scale
    pixel = torch.arange(side, dtype=torch.float64).unsqueeze(0)
    overlap = (torch.minimum(lo + scale, pixel + 1) - torch.maximum(lo, pixel)).clamp(min=0)
    return (overlap / scale).float()


def resize_ink(ink: np.ndarray, size: int) -> Tensor:
    """(n, 105, 105) uint8 ink to (n, size, size) float in [0, 1].

    Area averaging (not bilinear, which samples a few pixels per output) keeps every stroke: a 2-3 pixel
    line turns into gray instead of vanishing between samples. As a separable matrix product it is exact,
    fast on all images at once, and symmetric under flips, so it commutes with 90 degree rotations.
    """
    weights = area_matrix(size)
    out = torch.empty(len(ink), size, size)
    for start in range(0, len(ink), 512):  # chunks bound the float copy of the 105x105 images
        block = torch.from_numpy(ink[start : start + 512]).float().div_(255.0)
        out[start : start + 512] = weights @ block @ weights.T
    return out.clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- the two layouts


def _read_background(
    paths: list[Path], keep: list[str] | None = None, drop: list[str] | tuple[str, ...] = ()
) -> tuple[np.ndarray, dict[str, Tensor], dict[str, list[str]]]:
    """Ink, labels and class names of one or more background zips (``<alphabet>/<character>/<id>_<dd>.png``),
    of the alphabets in ``keep`` (default all) and not in ``drop``."""
    present: set[str] = set()
    classes: dict[tuple[str, str], int] = {}
    alphabets: dict[str, int] = {}
    seen: set[tuple[str, str, str]] = set()
    records: list[tuple[int, int, int, Path, zipfile.ZipFile, str]] = []
    archives = []
    for path in paths:
        archive = _open_zip(path)
        archives.append(archive)
        entries, found = [], 0
        for member in _members(archive):
            parts = member.split("/")
            if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
                continue
            alphabet, character, file = parts[-3:]
            match = _DRAWING.match(file)
            if match is None or int(match.group(1)) < 1:
                raise DataError(
                    f"omniglot: {path}: member {member} is not named <character id>_<drawer 01..20>.png; is "
                    f"this an original Omniglot background zip? {_FIX}"
                )
            found += 1
            present.add(alphabet)
            if (keep is not None and alphabet not in keep) or alphabet in drop:
                continue
            if (alphabet, character, file) in seen:  # the two minimal sets share Greek and Latin
                continue
            seen.add((alphabet, character, file))
            entries.append((alphabet, character, int(match.group(1)) - 1, member))
        if not found:
            raise DataError(
                f"omniglot: {path} holds no images laid out as <alphabet>/<character>/<id>_<drawer>.png; "
                f"is this an Omniglot background zip? {_FIX}"
            )
        for alphabet, character, _, _ in sorted(entries):
            alphabets.setdefault(alphabet, len(alphabets))
            classes.setdefault((alphabet, character), len(classes))
        records.extend(
            (classes[(a, c)], alphabets[a], drawer, path, archive, member) for a, c, drawer, member in entries
        )
    unknown = sorted({*(keep or ()), *drop} - present)
    if unknown or not records:
        for archive in archives:
            archive.close()
        raise DataError(
            f"omniglot: {'alphabet(s) ' + ', '.join(unknown) + ' not found' if unknown else 'no alphabet left'} in "
            f"{', '.join(p.name for p in paths)}; its alphabets: {', '.join(sorted(present))}"
        )
    records.sort(key=lambda r: r[:3])
    try:
        ink = np.stack([_ink(archive, path, member) for *_, path, archive, member in records])
    finally:
        for archive in archives:
            archive.close()
    labels = {
        "character": torch.tensor([r[0] for r in records]),
        "alphabet": torch.tensor([r[1] for r in records]),
        "drawer": torch.tensor([r[2] for r in records]),
    }
    names = {
        "character": [f"{a}/{c}" for a, c in classes],
        "alphabet": list(alphabets),
        "drawer": [f"drawer{d + 1:02d}" for d in range(int(labels["drawer"].max()) + 1)],
    }
    return ink, labels, names


def _read_runs(path: Path) -> tuple[np.ndarray, dict[str, Tensor], dict[str, list[str]]]:
    """Ink and labels of Lake et al.'s one-shot runs: support then query images of each run in turn."""
    with _open_zip(path) as archive:
        members = _members(archive)
        present = set(members)
        runs = sorted(
            (m.group(2), m.group(1) or "") for m in map(_RUN_LABELS.match, members) if m is not None
        )  # (runNN, folder above it or "")
        if not runs:
            raise DataError(f"omniglot: {path} holds no runNN/class_labels.txt; is this all_runs.zip? {_FIX}")
        images, character, run, role = [], [], [], []
        for index, (name, above) in enumerate(runs):
            prefix = f"{above}/" if above else ""
            support = {}
            for member in members:
                if member.startswith(f"{prefix}{name}/training/"):
                    match = _SUPPORT.match(member.rsplit("/", 1)[-1])
                    if match is None or int(match.group(1)) < 1:
                        raise DataError(
                            f"omniglot: {path}: support image {member} is not named classKK.png (KK from "
                            f"01); {_FIX}"
                        )
                    support[member] = int(match.group(1)) - 1
            if not support:
                raise DataError(f"omniglot: {path}: {name} has no support images ({name}/training/); {_FIX}")
            queries = []
            labels_member = f"{prefix}{name}/class_labels.txt"
            text = _read(archive, path, labels_member).decode("utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"omniglot: {path}: {name}, line {number} of class_labels.txt ('{line.strip()}')"
                tokens = line.split()
                if len(tokens) != 2:
                    raise DataError(f"{where}: expected '<query image> <support image>'; {_FIX}")
                query, answer = (prefix + token for token in tokens)
                for member in (query, answer):
                    if member not in present:
                        raise DataError(f"{where}: names {member}, which is not in the zip; {_FIX}")
                if answer not in support:
                    raise DataError(f"{where}: {answer} is not a support image of {name}; {_FIX}")
                queries.append((query, support[answer]))
            for members_of_role, kind in ((sorted(support.items(), key=lambda s: s[1]), 0), (queries, 1)):
                for member, label in members_of_role:
                    images.append(_ink(archive, path, member))
                    character.append(label)
                    run.append(index)
                    role.append(kind)
    labels = {"character": torch.tensor(character), "run": torch.tensor(run), "role": torch.tensor(role)}
    names = {
        "character": [f"class{k + 1:02d}" for k in range(max(character) + 1)],
        "run": [name for name, _ in runs],
        "role": ["support", "query"],
    }
    return np.stack(images), labels, names


# ----------------------------------------------------------------------------- the builder


@DATASETS.register("omniglot", config=OmniglotConfig)
def build_omniglot(config: OmniglotConfig, root: Path) -> dict[str, ArrayDataset]:
    """Omniglot's small official pieces (Lake et al. 2015): minimal background sets or the 20 one-shot runs;
    ink = 1, resized by area averaging, optionally rotations as new classes."""
    paths = find_files(root, FOLDER, PARTS[config.part], "omniglot", config.path)
    if config.part == "runs":
        ink, labels, names = _read_runs(paths[0])
    else:
        ink, labels, names = _read_background(paths, config.alphabets, config.exclude_alphabets)
    images = resize_ink(ink, config.size)
    del ink
    if config.rotations_as_classes:
        count = len(names["character"])
        images = torch.cat([torch.rot90(images, r, dims=(-2, -1)) for r in range(len(ROTATIONS))])
        labels = {
            key: torch.cat(
                [value + r * count if key == "character" else value for r in range(len(ROTATIONS))]
            )
            for key, value in labels.items()
        }
        names["character"] = [
            name + (f"@{angle}" if angle else "") for angle in ROTATIONS for name in names["character"]
        ]
    x = prepare_images(images.unsqueeze(1).contiguous(), config)
    return {"all": ArrayDataset(x, labels, classes=names, part=config.part)}
