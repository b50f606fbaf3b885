"""The data layer: named datasets (digits, MNIST, Fashion-MNIST) as uint8 tensors with fixed
train/validation/test splits, the IDX reader, and a verified downloader."""
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

__all__ = [
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
]
