"""Dataset families, one file each; every module registers itself in ``crosstask.registry.DATASETS``."""

from crosstask.data.datasets.base import ArrayDataset, DatasetConfig, load_dataset, resolve_data_root

__all__ = ["ArrayDataset", "DatasetConfig", "load_dataset", "resolve_data_root"]
