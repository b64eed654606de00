"""Dataset loading: every reader yields ``Example``s with character-offset entities."""

from padellm_ner.data.datasets import (
    DATASET_NAMES,
    SPLITS,
    DatasetInfo,
    available_splits,
    dataset_info,
    datasets_root,
    load_split,
)

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "DatasetInfo",
    "available_splits",
    "dataset_info",
    "datasets_root",
    "load_split",
]
