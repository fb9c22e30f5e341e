"""Fixed selections of another dataset's images: ``subset:N[:SEED]:SPEC`` (a seeded random subset) and
``part:K/N[:SEED]:SPEC`` (part K of a seeded partition into N); the registry builds the inner dataset."""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from ..errors import InputError
from .base import DatasetOptions, LabelArrays, MultiLabelDataset
from ..hashing import sha256_json

__all__ = ["Subset", "Part", "partition", "subset_parts", "part_parts", "build_subset", "build_part"]


class _Selection(LabelArrays):
    """Fixed items ``indices`` (sorted) of another dataset, in the inner order.

    Its val/test split is the inner split restricted to the chosen items, so mosaics stay
    tile-disjoint and an item is on the same side as in the full dataset. The fingerprint hashes
    ``_identity()`` (which includes the inner fingerprint), the indices and the chosen items' ids.
    """

    def __init__(self, name: str, inner: MultiLabelDataset, indices: np.ndarray, short_name: str):
        self.name, self.inner, self.indices, self.short_name = name, inner, indices, short_name
        self.classes, self.label_space = list(inner.classes), inner.label_space
        self.full_frame, self.size_dependent = inner.full_frame, inner.size_dependent
        self._targets = inner.targets()[self.indices]
        self._ignore = inner.ignore_mask()[self.indices]
        self._fingerprint: Optional[str] = None

    def _identity(self) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.inner[int(self.indices[i])]

    def image_id(self, i: int) -> str:
        return self.inner.image_id(int(self.indices[i]))

    def split(self, val_fraction: float, seed: int):
        val, _ = self.inner.split(val_fraction, seed)
        in_val = np.isin(self.indices, val)
        return np.flatnonzero(in_val), np.flatnonzero(~in_val)

    def fingerprint(self) -> str:
        """sha256 of ``_identity()`` and the chosen items' indices and ids (cached)."""
        if self._fingerprint is None:
            h = sha256_json(self._identity())
            h.update(self.indices.astype(np.int64).tobytes())
            h.update("\n".join(self.image_id(i) for i in range(len(self))).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class Subset(_Selection):
    """A fixed random subset of ``n`` items of another dataset (sorted indices from ``seed``)."""

    def __init__(self, name: str, inner: MultiLabelDataset, n: int, seed: int = 0):
        if not 1 <= n <= len(inner):
            raise InputError(f"subset: N={n} but {inner.short_name} has {len(inner)} images; use "
                             f"1 <= N <= {len(inner)} (or the spec without subset:)")
        self.seed = int(seed)
        indices = np.sort(np.random.default_rng(self.seed).choice(len(inner), size=n, replace=False))
        super().__init__(name, inner, indices,
                         f"subset{n}{f'@seed{self.seed}' if self.seed else ''}({inner.short_name})")

    def _identity(self) -> dict:
        return {"subset": len(self), "seed": self.seed, "inner": self.inner.fingerprint()}

    def __repr__(self) -> str:
        return f"Subset({self.name!r}, {len(self)} of {len(self.inner)})"


_SUBSET_ARG = re.compile(r"^(\d+)(?::(\d+))?:(.+)$")


def subset_parts(arg: str) -> tuple[int, int, str]:
    m = _SUBSET_ARG.match(arg)
    if not m or ":" not in m.group(3):
        raise InputError(f"subset: expected subset:N[:SEED]:SPEC (e.g. subset:96:0:imagenet-real:DIR), "
                         f"got subset:{arg}")
    return int(m.group(1)), int(m.group(2) or 0), m.group(3)


def build_subset(spec: str, arg: str, opts: DatasetOptions, inner: MultiLabelDataset) -> Subset:
    n, seed, _ = subset_parts(arg)
    return Subset(spec, inner, n, seed)


_PART_STREAM = 0x70617274  # 'part'


def partition(n_items: int, k: int, n_parts: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of part ``k`` (1-based) of ``n_parts``: a ``seed``-ed random permutation of
    range(n_items) cut into n_parts consecutive pieces whose sizes differ by at most one (the first
    ``n_items % n_parts`` are one longer). The parts of one (n_items, n_parts, seed) are disjoint and
    cover range(n_items)."""
    if not 1 <= k <= n_parts:
        raise InputError(f"part: K={k} of N={n_parts}; use 1 <= K <= N")
    if n_parts > n_items:
        raise InputError(f"part: N={n_parts} parts of {n_items} images would leave some empty; use N <= {n_items}")
    # its own random stream: a part must not coincide with the val/test halves that split_indices draws
    # from the same seed (part 2/2 would otherwise be exactly the test half, leaving it no val images)
    perm = np.random.default_rng([int(seed), _PART_STREAM]).permutation(int(n_items))
    return np.sort(np.array_split(perm, n_parts)[k - 1]).astype(np.int64)


class Part(_Selection):
    """Part ``k`` of ``n`` of another dataset (``partition``): the parts of one (N, seed) are disjoint
    and together the whole dataset, e.g. fit on ``part:1/2:SPEC``, evaluate on ``part:2/2:SPEC``."""

    def __init__(self, name: str, inner: MultiLabelDataset, k: int, n: int, seed: int = 0):
        if not 1 <= n <= len(inner):
            raise InputError(f"part: N={n} but {inner.short_name} has {len(inner)} images; use "
                             f"1 <= N <= {len(inner)}")
        self.k, self.n, self.seed = int(k), int(n), int(seed)
        super().__init__(name, inner, partition(len(inner), self.k, self.n, self.seed),
                         f"part{k}of{n}{f'@seed{self.seed}' if self.seed else ''}({inner.short_name})")

    def _identity(self) -> dict:
        return {"part": self.k, "parts": self.n, "seed": self.seed, "inner": self.inner.fingerprint()}

    def __repr__(self) -> str:
        return f"Part({self.name!r}, part {self.k} of {self.n}: {len(self)} of {len(self.inner)})"


_PART_ARG = re.compile(r"^(\d+)/(\d+)(?::(\d+))?:(.+)$")


def part_parts(arg: str) -> tuple[int, int, int, str]:
    """(K, N, SEED, inner spec) of ``K/N[:SEED]:SPEC``; InputError for bad syntax or K outside 1..N."""
    m = _PART_ARG.match(arg)
    if not m or ":" not in m.group(4):
        raise InputError(f"part: expected part:K/N[:SEED]:SPEC, part K of N (1 <= K <= N) with an optional "
                         f"integer seed (e.g. part:1/2:0:voc2007:DIR@trainval), got part:{arg}")
    seed = re.match(r"^([+-]?[0-9.]+):", m.group(4)) if m.group(3) is None else None
    if seed:
        raise InputError(f"part: SEED={seed.group(1)} in part:{arg}; the seed is a non-negative integer")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise InputError(f"part: K={k} of N={n} in part:{arg}; use N >= 1 and 1 <= K <= N "
                         f"(e.g. part:1/{max(n, 2)}:SPEC)")
    return k, n, int(m.group(3) or 0), m.group(4)


def build_part(spec: str, arg: str, opts: DatasetOptions, inner: MultiLabelDataset) -> Part:
    k, n, seed, _ = part_parts(arg)
    return Part(spec, inner, k, n, seed)
