"""Datasets for fastgan: built-ins (digits and its domains, stacked-digits, ring8, grid25), loaders
for images on disk, and unpaired domains for translation models."""
from .datasets import (BUILTIN, DIGIT_DOMAINS, DatasetError, DomainDataset, GANDataset, digit_domain,  # noqa: F401
                       digits, grid25, load_dataset, load_domains, read_idx, ring8,
                       stacked_digits)
