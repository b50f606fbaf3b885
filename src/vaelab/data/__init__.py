"""The data layer: named datasets (digits, MNIST, Fashion-MNIST) as uint8 tensors with fixed
train/validation/test splits, the IDX reader, and a verified downloader."""
from .batch import Batch, as_batch
from .datasets import (
    DataSpec,
    Dataset,
    Split,
    dataset_names,
    default_data_dirs,
    list_datasets,
    load_dataset,
    locate_dataset,
    run_dataset,
)
from .download import download_dataset
from .idx import read_idx
from .labels import balanced_subset

__all__ = [
    "Batch",
    "as_batch",
    "DataSpec",
    "Dataset",
    "Split",
    "dataset_names",
    "default_data_dirs",
    "download_dataset",
    "list_datasets",
    "load_dataset",
    "locate_dataset",
    "run_dataset",
    "read_idx",
    "balanced_subset",
]
