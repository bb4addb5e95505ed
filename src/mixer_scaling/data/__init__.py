"""Data: the embedded procedural set, users' folders and CIFAR, nested subsets, few-shot sets.

    build_data(cfg.data) -> DataBundle                 # train subset (data.fraction), val, sizes, collate
    validate_data_cfg(cfg.data)                        # the cheap checks, nothing read
    build_fewshot_sets(cfg.fewshot, image_size, cfg.data) -> {name: FewshotSet}
    data.permutation: null | patch_pixel | global  -> every image rearranged (permute.py, paper Fig. 4)

Every set yields (float32 3xSxS in [-1, 1], int label); use ``collate_fn`` of the bundle / few-shot
set (:func:`passthrough`) with a DataLoader, which then yields (B x 3 x S x S float32, B int64).
"""

from .build import NAMES, DataBundle, build_data, nested_subset, passthrough, subset_size, validate_data_cfg
from .fewshot_sets import DigitsImages, FewshotSet, build_fewshot_sets
from .permute import PermutedDataset, apply_permutation, permutation_index
from .synthetic import SyntheticImages

__all__ = [
    "NAMES",
    "DataBundle",
    "DigitsImages",
    "FewshotSet",
    "PermutedDataset",
    "SyntheticImages",
    "apply_permutation",
    "build_data",
    "build_fewshot_sets",
    "nested_subset",
    "passthrough",
    "permutation_index",
    "subset_size",
    "validate_data_cfg",
]
