"""What every dataset shares: the generic config keys, in-memory arrays, splits, subsets and the data root.

A dataset family is one file in this folder that registers a builder::

    @DATASETS.register("mnist", config=MNISTConfig)
    def build_mnist(config: MNISTConfig, root: Path) -> dict[str, Dataset]: ...

The builder returns its native splits (``train``/``test``, or ``all``); :func:`load_dataset` turns them
into the requested ``train``/``val``/``test`` split, deterministically by ``split_seed``, then applies
``limit`` and ``per_class``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.utils.data import Dataset, Subset

from crosstask.errors import ConfigError, DataError
from crosstask.registry import DATASETS, ComponentConfig

Labels = Tensor | dict[str, Tensor] | None


class DatasetConfig(ComponentConfig):
    """Keys every dataset accepts (``split``, fractions, seeds, subsets); families add their own."""

    split: Literal["train", "val", "test"] = "train"
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, description="carved from the training pool")
    test_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="carved from the pool when the dataset has no test split"
    )
    split_seed: int = Field(
        default=0, description="seed of the split and subset draws (not the training seed)"
    )
    limit: int | None = Field(default=None, ge=1, description="keep a random subset of this many samples")
    per_class: int | None = Field(default=None, ge=1, description="keep this many samples of each class")
    per_class_label: str | None = Field(default=None, description="label key for per_class with dict labels")

    @model_validator(mode="after")
    def _fractions(self) -> DatasetConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some training samples (sum < 1)")
        return self

    def family_params(self) -> dict[str, Any]:
        """The keys that change what the builder loads (not the generic split/subset keys)."""
        generic = set(DatasetConfig.model_fields)
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in generic or k == "name"}


class ArrayDataset(Dataset):
    """Samples held in memory as tensors: ``x`` of shape (n, ...), labels a tensor or a dict of tensors.

    ``x`` may also be a dict of tensors sharing the first dimension (token ids and an attention mask,
    several modalities): a sample's input is then a dict as well.

    Besides ``__getitem__`` it offers ``gather(index)``, which the streams use to take a whole batch with
    one indexing operation instead of collating samples one by one.
    """

    def __init__(self, x: Tensor | Mapping[str, Tensor], y: Labels = None, **info: Any):
        if isinstance(x, Mapping):
            if not x:
                raise DataError("ArrayDataset: the dict of inputs is empty; give at least one input tensor")
            x = {str(k): v for k, v in x.items()}
            sizes = {k: len(v) for k, v in x.items()}
            if len(set(sizes.values())) != 1:
                shown = ", ".join(f"{k}: {n}" for k, n in sizes.items())
                raise DataError(
                    f"ArrayDataset: the input tensors have different lengths ({shown}); every input needs "
                    "one row per sample"
                )
        n = _length(x)
        lengths = {n} | (
            {len(v) for v in y.values()} if isinstance(y, dict) else {len(y)} if y is not None else set()
        )
        if len(lengths) != 1:
            raise DataError(f"inputs and labels have different lengths: {sorted(lengths)}")
        self.x = x
        self.y = y
        self.info = info

    def __len__(self) -> int:
        return _length(self.x)

    def __getitem__(self, index: int) -> Any:
        return self.gather(index)

    def gather(self, index: Any) -> Any:
        x = {k: v[index] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[index]
        if self.y is None:
            return x
        if isinstance(self.y, dict):
            return x, {k: v[index] for k, v in self.y.items()}
        return x, self.y[index]

    def subset(self, index: Tensor) -> ArrayDataset:
        y = (
            {k: v[index] for k, v in self.y.items()}
            if isinstance(self.y, dict)
            else None
            if self.y is None
            else self.y[index]
        )
        x = {k: v[index] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[index]
        return ArrayDataset(x, y, **self.info)

    @property
    def targets(self) -> Labels:
        return self.y


def _length(x: Tensor | Mapping[str, Tensor]) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)


# ----------------------------------------------------------------------------- data root


def project_root() -> Path:
    """The folder holding pyproject.toml above this package (for a source checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$CROSSTASK_DATA``, else ``../shared/data``.

    ``../shared/data`` is tried relative to the working directory, then to the project checkout.
    """
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get("CROSSTASK_DATA"):
        return Path(os.environ["CROSSTASK_DATA"]).expanduser()
    candidates = [Path.cwd() / ".." / "shared" / "data", project_root() / ".." / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]


def read_mat(path: Path) -> dict[str, Any]:
    """A MATLAB ``.mat`` file's variables, or a DataError naming the file when it cannot be read."""
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DataError(
            f"{path}: cannot read the MATLAB file ({exc}); replace it with an intact copy"
        ) from None


def find_files(
    root: Path, folder: str, files: list[str], dataset: str, path: Path | None = None
) -> list[Path]:
    """Locate ``files`` under ``path`` (if given) or ``root/folder``; a missing one raises a clear DataError.

    Each file may also be found without its ``.gz`` suffix.
    """
    base = Path(path).expanduser() if path is not None else root / folder
    found, missing = [], []
    for name in files:
        options = [base / name] + ([base / name.removesuffix(".gz")] if name.endswith(".gz") else [])
        hit = next((p for p in options if p.is_file()), None)
        (found.append(hit) if hit else missing.append(name))
    if missing:
        origin = "the dataset's path:" if path is not None else "the data root"
        raise DataError(
            f"{dataset}: file(s) {', '.join(missing)} not found in {base} (looked there from {origin} "
            f"{path or root}). Put the files there, point $CROSSTASK_DATA or data.root at the folder that "
            f"holds {folder}/, or give the dataset a path: key."
        )
    return found


# ----------------------------------------------------------------------------- splits and subsets


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, Tensor]:
    """A deterministic partition of ``range(n)`` into train/val/test by ``seed``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def take(dataset: Dataset, index: Tensor) -> Dataset:
    """The samples of ``dataset`` at ``index``, staying in memory for an :class:`ArrayDataset`."""
    index = index.sort().values
    if isinstance(dataset, ArrayDataset):
        return dataset.subset(index)
    return Subset(dataset, index.tolist())


def standard_splits(native: Mapping[str, Dataset], config: DatasetConfig) -> dict[str, Dataset]:
    """Turn a builder's native splits into train/val/test with the config's fractions and seed."""
    pool = native.get("train", native.get("all"))
    if pool is None:
        raise DataError(f"dataset '{config.name}' returned no 'train' or 'all' split")
    out: dict[str, Dataset] = dict(native)
    carve_test = "test" not in native
    carve_val = "val" not in native and config.val_fraction > 0
    if carve_test or carve_val:
        parts = split_indices(
            len(pool),
            config.val_fraction if carve_val else 0.0,
            config.test_fraction if carve_test else 0.0,
            config.split_seed,
        )
        out["train"] = take(pool, parts["train"])
        if carve_test:
            out["test"] = take(pool, parts["test"])
        if carve_val:
            out["val"] = take(pool, parts["val"])
    else:
        out["train"] = pool
    out.pop("all", None)
    return out


def class_labels(dataset: Dataset, key: str | None, name: str) -> Tensor:
    """The class label of every sample (for ``per_class``), from ``targets`` when the dataset has them."""
    targets = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, Subset):
        parent = class_labels(dataset.dataset, key, name)
        return parent[torch.as_tensor(dataset.indices)]
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
        if targets and isinstance(targets[0], dict):
            targets = {k: torch.as_tensor([t[k] for t in targets]) for k in targets[0]}
        else:
            targets = torch.as_tensor(targets)
    if isinstance(targets, dict):
        if key is None and len(targets) > 1:
            raise ConfigError(
                f"dataset '{name}': per_class needs per_class_label to say which label to count "
                f"(one of {', '.join(targets)})"
            )
        key = key or next(iter(targets))
        if key not in targets:
            raise ConfigError(
                f"dataset '{name}': per_class_label '{key}' is not a label; labels: {', '.join(targets)}"
            )
        targets = targets[key]
    return torch.as_tensor(targets)


def subsample(dataset: Dataset, config: DatasetConfig) -> Dataset:
    """Apply ``per_class`` then ``limit``, deterministically by ``split_seed``."""
    generator = torch.Generator().manual_seed(config.split_seed + 1)
    if config.per_class is not None:
        labels = class_labels(dataset, config.per_class_label, config.name)
        chosen = []
        for cls in labels.unique():
            members = (labels == cls).nonzero().flatten()
            chosen.append(members[torch.randperm(len(members), generator=generator)[: config.per_class]])
        dataset = take(dataset, torch.cat(chosen))
    if config.limit is not None and config.limit < len(dataset):
        dataset = take(dataset, torch.randperm(len(dataset), generator=generator)[: config.limit])
    return dataset


@functools.lru_cache(maxsize=16)
def _native(params_json: str, root: str) -> dict[str, Dataset]:
    params = json.loads(params_json)
    entry = DATASETS.get(params["name"])
    return entry.obj(entry.config.model_validate(params), Path(root))


def load_dataset(
    config: DatasetConfig | Mapping[str, Any] | str, root: str | os.PathLike | None = None
) -> Dataset:
    """Build the dataset a config describes: its split, then its subsets.

    The family's native splits are cached per process, so a source, a target and an evaluation set drawn
    from one file read it once.
    """
    if not isinstance(config, DatasetConfig):
        config = dataset_config(config)
    params = json.dumps(config.family_params(), sort_keys=True)
    splits = standard_splits(_native(params, str(resolve_data_root(root))), config)
    if config.split not in splits:
        hint = (
            "; set val_fraction > 0 to carve a validation split from train" if config.split == "val" else ""
        )
        raise ConfigError(
            f"dataset '{config.name}' has no '{config.split}' split (it has {', '.join(splits)}){hint}"
        )
    dataset = splits[config.split]
    if len(dataset) == 0:
        raise ConfigError(
            f"dataset '{config.name}': split '{config.split}' is empty"
            + ("; set val_fraction > 0 to carve a validation split" if config.split == "val" else "")
        )
    return subsample(dataset, config)


def dataset_config(value: Mapping[str, Any] | str) -> DatasetConfig:
    """Validate ``{"name": ..., **params}`` (or a bare name) with the dataset family's config model."""
    from crosstask.components import component, validate_component

    return validate_component(component(DATASETS), value)
