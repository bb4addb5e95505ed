"""Data: the embedded procedural set, users' folders and CIFAR, nested subsets, few-shot sets.

    build_data(cfg.data) -> DataBundle                 # train subset (data.fraction), val, sizes, collate
    validate_data_cfg(cfg.data)                        # the cheap checks, nothing read
    build_fewshot_sets(cfg.fewshot, image_size, cfg.data) -> {name: FewshotSet}
"""

from .build import NAMES, DataBundle, build_data, nested_subset, passthrough, validate_data_cfg
from .fewshot_sets import FewshotSet, build_fewshot_sets
from .synthetic import SyntheticImages

__all__ = ["NAMES", "DataBundle", "FewshotSet", "SyntheticImages", "build_data", "build_fewshot_sets",
           "nested_subset", "passthrough", "validate_data_cfg"]
