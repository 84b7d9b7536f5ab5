"""Datasets for fastgan: built-ins (digits, ring8, grid25) and loaders for images on disk."""
from .datasets import (BUILTIN, DatasetError, GANDataset, digits, grid25, load_dataset, read_idx,  # noqa: F401
                       ring8)
