"""Multi-label evaluation datasets, parsed from spec strings such as ``voc2007:DIR@trainval``.

Every dataset is a ``MultiLabelDataset``: item i is ``(PIL RGB image, target (C,) uint8 multi-hot,
ignore (C,) bool)``, and ``targets()`` / ``ignore_mask()`` give the (N, C) arrays without decoding
an image. Each spec prefix is one registered ``DatasetKind`` (``DATASETS``, ``registry.py``) that declares
the options it takes; wrapping kinds (``mosaic*:SPEC``, ``subset:N:SPEC``, ``part:K/N:SPEC``) hold another
spec, and ``dataset_kind`` / ``dataset_options`` / ``is_size_dependent`` read that chain in one place.

One reader per module behind the registry: ``base`` (the protocol, ``LabeledImages``, split and file
helpers), ``imagenet_real``, ``voc``, ``coco``, ``csv_file``, ``mosaic``, ``selection`` (subset, part).
Readers import only ``base`` (and errors / classmaps); the registry imports the readers; nothing imports
the registry but this package. A new kind: one reader module and one ``DatasetKind`` line in ``registry.py``.

A bad dataset file raises one ``InputError`` / ``MissingInputError`` naming the file, the line or
image and the fix, never a silently wrong label matrix. The package imports only numpy.
"""
from __future__ import annotations

from ..classmaps import ClassMap, load_class_map, map_scores  # noqa: F401  (re-exported)
from .base import (DatasetOptions, DatasetWarning, LabeledImages, MultiLabelDataset, dataset_split,  # noqa: F401
                   split_indices)
from .mosaic import MOSAIC_VAL_FRACTION, Mosaic  # noqa: F401
from .registry import (DATASETS, DatasetKind, dataset_kind, dataset_options, is_size_dependent,  # noqa: F401
                       parse_dataset)
from .selection import Part, Subset, partition  # noqa: F401
from .voc import VOC_CLASSES  # noqa: F401

__all__ = ["MultiLabelDataset", "DatasetKind", "DatasetOptions", "DATASETS", "LabeledImages", "Mosaic",
           "Subset", "Part", "partition", "DatasetWarning", "parse_dataset", "dataset_kind", "dataset_options",
           "is_size_dependent", "dataset_split", "split_indices", "VOC_CLASSES", "ClassMap",
           "load_class_map", "map_scores"]
