"""What every dataset kind shares: the ``MultiLabelDataset`` protocol, ``LabeledImages`` (image files
with a fixed label matrix), the val/test split and the file helpers the readers use. Imports only numpy
(and the package's errors and content hashes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InputError, MissingInputError
from ..hashing import file_sha256, sha256_json

__all__ = ["DatasetWarning", "MultiLabelDataset", "split_indices", "dataset_split", "LabelArrays", "LabeledImages",
           "DatasetOptions", "split_option", "existing_dir", "read_utf8", "utf8_lines",
           "first_missing"]


class DatasetWarning(UserWarning):
    """A dataset is usable but its files disagree (e.g. VOC label files vs XML annotations)."""


@runtime_checkable
class MultiLabelDataset(Protocol):
    """What bench, the cache and the notebook use of a dataset; every kind in ``DATASETS`` builds one."""

    name: str             # the full spec it was parsed from
    short_name: str       # a label for tables: "voc2007@trainval", "mosaic2x2(imagenet-real)", ...
    classes: list         # the C class names, in label-column order
    label_space: str      # "imagenet-1k", "voc2007", "coco2014" or "custom" (class maps are keyed by it)
    full_frame: bool      # evaluate the whole image resized to S×S, no centre crop (VOC, COCO, mosaics)
    size_dependent: bool  # built at the evaluation size S (mosaics): one dataset per size

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple: ...  # (PIL RGB image, (C,) uint8, (C,) bool)

    def image_id(self, i: int) -> str: ...

    def fingerprint(self) -> str: ...

    def targets(self) -> np.ndarray: ...  # (N, C) uint8

    def ignore_mask(self) -> np.ndarray: ...  # (N, C) bool

    def split(self, val_fraction: float, seed: int) -> tuple: ...  # (val_idx, test_idx), disjoint, sorted


def split_indices(n: int, val_fraction: float = 0.5, seed: int = 0):
    """Deterministic disjoint (val_idx, test_idx), each sorted, covering range(n)."""
    if not 0.0 <= val_fraction <= 1.0:
        raise InputError(f"val_fraction must be in [0, 1], got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(int(n))
    n_val = int(round(n * val_fraction))
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def dataset_split(dataset: MultiLabelDataset, val_fraction: float = 0.5, seed: int = 0):
    """(val_idx, test_idx) of a dataset: ``dataset.split(val_fraction, seed)``."""
    return dataset.split(val_fraction, seed)


class LabelArrays:
    """Targets (N, C) uint8 and ignore mask (N, C) bool held as arrays, readable without decoding."""

    _targets: np.ndarray
    _ignore: np.ndarray

    def targets(self) -> np.ndarray:
        return self._targets.copy()

    def ignore_mask(self) -> np.ndarray:
        return self._ignore.copy()


class LabeledImages(LabelArrays):
    """Image files with a fixed multi-hot label matrix (and an optional ignore mask).

    ``key`` identifies the source in the fingerprint (spec with resolved paths); ``full_frame``:
    evaluate without the centre crop (False: timm's crop, as for ImageNet).
    """

    size_dependent = False

    def __init__(self, name: str, key: str, label_space: str, classes: Sequence[str],
                 paths: Sequence[Path], ids: Sequence[str], targets: np.ndarray,
                 ignore: Optional[np.ndarray] = None, *, full_frame: bool = False,
                 short_name: Optional[str] = None):
        self.name, self._key, self.label_space = name, key, label_space
        self.short_name = short_name or name
        self.full_frame = bool(full_frame)
        self.classes = list(classes)
        self.paths, self._ids = [Path(p) for p in paths], list(ids)
        if len(self.paths) != len(self._ids):
            raise ValueError(f"LabeledImages: {len(self.paths)} paths but {len(self._ids)} ids")
        self._targets = np.ascontiguousarray(targets, dtype=np.uint8).reshape(
            len(self._ids), len(self.classes))
        self._ignore = (np.zeros(self._targets.shape, bool) if ignore is None
                        else np.ascontiguousarray(ignore, dtype=bool).reshape(self._targets.shape))
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int):
        from posthoc_csra.images import load_rgb
        return load_rgb(self.paths[i]), self._targets[i].copy(), self._ignore[i].copy()

    def image_id(self, i: int) -> str:
        return self._ids[i]

    def split(self, val_fraction: float, seed: int):
        return split_indices(len(self), val_fraction, seed)

    def fingerprint(self) -> str:
        """sha256 of spec, classes, per-image id and content hash, and labels (cached).

        File contents, not mtimes: a copy of the same images (a fresh clone, re-copied assets) keeps its key."""
        if self._fingerprint is None:
            h = sha256_json({"spec": self._key, "label_space": self.label_space,
                              "classes": self.classes, "n": len(self)})
            for image_id, path in zip(self._ids, self.paths):
                h.update(f"\n{image_id}\t{file_sha256(path)}".encode())
            h.update(self._targets.tobytes() + self._ignore.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.classes)} cls)"


# ---------------------------------------------------------------- spec options and file helpers
@dataclass(frozen=True)
class DatasetOptions:
    """What a kind's builder gets besides its spec argument (only the options its kind declares)."""

    size: Optional[int] = None           # the evaluation size S (size-dependent kinds need it)
    split: Optional[str] = None          # from ``@SPLIT`` (kinds with a default split)
    classes_file: Optional[Path] = None  # csv: one class per line
    seed: Optional[int] = None           # mosaics: which tiles
    count: Optional[int] = None          # mosaics: how many


def split_option(arg: str, default: str) -> tuple[str, str]:
    head, sep, tail = arg.rpartition("@")
    if sep and re.fullmatch(r"[A-Za-z0-9_]+", tail):
        return head, tail
    return arg, default


def existing_dir(arg: str, prefix: str, what: str) -> Path:
    if not arg:
        raise InputError(f"{prefix}: missing folder; write {prefix}:DIR")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise MissingInputError(f"{prefix}: {root} is not a folder; expected {what}")
    return root


def read_utf8(path: Path, prefix: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{prefix}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         f"save it as UTF-8 text") from None


def utf8_lines(path: Path, prefix: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of the non-blank lines of a text file."""
    return [(no, line.split()) for no, line in enumerate(read_utf8(path, prefix).splitlines(), start=1)
            if line.strip()]


def first_missing(paths: Sequence[Path]) -> tuple[int, Optional[Path]]:
    missing = [p for p in paths if not p.is_file()]
    return len(missing), (missing[0] if missing else None)
