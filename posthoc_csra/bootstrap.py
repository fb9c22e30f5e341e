"""Paired bootstrap intervals for mAP differences (numpy only).

How much of a +0.4 mAP is noise? Resample the test images with replacement (B times, seeded), score
every method on the *same* resampled images, and take the percentile interval of the B differences
``mAP(a) − mAP(b)``. Per resample, AP is ``metrics``' AP (scikit-learn's: non-interpolated, tied scores
grouped, ignored entries removed) of the resampled rows — an image drawn k times counts k times, its
copies tied — averaged over the classes ``metrics.ranked_classes`` ranks in that resample (a non-ignored
positive and a non-ignored negative: a class with no positive has no AP, and one positive in every image
has AP 1 under any scores), as the benchmark table does on the images themselves. Both methods of a pair
always average over the same classes.

The resamples' targets are stacked as B·C columns and their ranking bookkeeping is done once (metrics'
ranker); each method then costs one gather and one row sort per block of resamples (blocks keep memory
bounded). Classes not ranked on the images themselves cannot be ranked in any resample and are left out
before stacking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .metrics import _float_scores, _masks, _Ranker, average_precision, ranked_classes

__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_SEED", "LEVEL", "Interval", "Resamples", "Scored", "interval",
           "paired_interval", "resample_indices"]

#: At least 1,000 resamples for every published interval.
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
#: Two-sided percentile interval.
LEVEL = 0.95
#: Stacked entries (resamples × classes × images) per block: bounds memory (a few hundred MB at most).
_BLOCK_ENTRIES = 4_000_000


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(resamples, n) image indices drawn with replacement by ``numpy.random.default_rng(seed)``."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(int(resamples), int(n)))


@dataclass(frozen=True)
class Interval:
    """``delta`` (on the images themselves) and its paired-bootstrap percentile interval [lo, hi], in
    the units of the mAPs compared (percentage points); ``resamples``: how many it was taken over."""

    delta: float
    lo: float
    hi: float
    resamples: int
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """"win" when the interval lies above 0, "loss" when below 0, else "tie" (it holds 0)."""
        if self.lo > 0:
            return "win"
        if self.hi < 0:
            return "loss"
        return "tie"

    def __str__(self) -> str:
        return f"{self.delta:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]"


@dataclass(frozen=True)
class Scored:
    """One method on one ``Resamples``: mAP (%) on the images themselves and on every resample (B,)."""

    map: float
    resampled: np.ndarray


class Resamples:
    """B resamples of the N images of one labelled split, drawn once. ``score(scores)`` gives an (N, C)
    score matrix's mAP on the images and on every resample, so that any two methods scored here are
    compared on the same resampled images and classes (paired): ``interval(x, y)``.

    targets, ignore: (N, C) (targets > 0 positive; ignore bool or None). ``indices``: explicit (B, M)
    resamples (rows of image indices, e.g. an enumeration) instead of ``resample_indices(N, resamples,
    seed)``. The bookkeeping of the stacked targets is prepared on first use and kept.
    """

    def __init__(self, targets, ignore=None, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 indices: Optional[np.ndarray] = None, block_entries: int = _BLOCK_ENTRIES):
        pos, ign = _masks(targets, ignore, np.shape(targets))
        self.n, self.n_classes = pos.shape
        #: the classes ranked on the images themselves: the only ones a resample can rank
        self.classes = np.flatnonzero(ranked_classes(pos, ign))
        self.pos = pos[:, self.classes]
        self.ign = None if ign is None or not ign[:, self.classes].any() else ign[:, self.classes]
        self.indices = (resample_indices(self.n, resamples, seed) if indices is None
                        else np.asarray(indices, np.int64))
        if self.indices.ndim != 2 or not self.indices.size or self.indices.min() < 0 \
                or self.indices.max() >= self.n:
            raise ValueError(f"indices must be (B, M) image indices in [0, {self.n}), got shape "
                             f"{self.indices.shape}")
        self.seed = None if indices is not None else seed
        self.block = max(1, int(block_entries) // max(1, self.indices.shape[1] * len(self.classes)))
        self._blocks: Optional[list] = None

    @property
    def resamples(self) -> int:
        return len(self.indices)

    def _prepare(self) -> list:
        """Per block of resamples: (rows (b, M), ranker over the stacked b·K columns; its ``cls`` are the
        columns it ranks: ``metrics.ranked_classes`` of each resample)."""
        blocks, k = [], len(self.classes)
        for start in range(0, self.resamples, self.block):
            idx = self.indices[start:start + self.block]
            b, m = idx.shape
            pos = self.pos[idx]  # (b, M, K)
            ign = None if self.ign is None else self.ign[idx]

            def stack(x):  # (b, M, K) → (M, b·K): column j·K + c is class c of resample j
                return np.ascontiguousarray(x.transpose(1, 0, 2).reshape(m, b * k))

            blocks.append((idx, _Ranker(stack(pos), None if ign is None else stack(ign))))
        return blocks

    def _check(self, scores) -> np.ndarray:
        s = _float_scores(scores)
        if s.shape != (self.n, self.n_classes):
            raise ValueError(f"scores shape {s.shape} != targets shape {(self.n, self.n_classes)}")
        return s

    def aps(self, scores) -> np.ndarray:
        """(B, C) AP of scores (N, C) on every resample; NaN where a class is not ranked."""
        s = self._check(scores)[:, self.classes]
        if self._blocks is None:
            self._blocks = self._prepare()
        k = len(self.classes)
        out = np.full((self.resamples, k), np.nan)
        start = 0
        for idx, ranker in self._blocks:
            b, m = idx.shape
            # (K, b, M) → (b, K, M) → the ranker's columns (b·K, M), in its order
            sK = s.T[:, idx].transpose(1, 0, 2).reshape(b * k, m)[ranker.cls]
            out[start:start + b].reshape(-1)[ranker.cls] = ranker.ap(sK)  # a view of out
            start += b
        full = np.full((self.resamples, self.n_classes), np.nan)
        full[:, self.classes] = out
        return full

    def maps(self, scores) -> np.ndarray:
        """(B,) mAP (%) of scores (N, C) on every resample (NaN for a resample without a ranked class)."""
        return _mean_percent(self.aps(scores))

    def full_map(self, scores) -> float:
        """mAP (%) of scores (N, C) on the images themselves, over the classes ``self.classes``."""
        s = self._check(scores)[:, self.classes]
        return float(_mean_percent(average_precision(s, self.pos, self.ign)[None])[0])

    def score(self, scores) -> Scored:
        """The method of scores (N, C) on the images and on every resample."""
        return Scored(self.full_map(scores), self.maps(scores))


def _mean_percent(ap: np.ndarray) -> np.ndarray:
    """(B, C) AP with NaN for classes not ranked → (B,) mean in %, NaN where none is."""
    counted = (~np.isnan(ap)).sum(1)
    total = np.where(np.isnan(ap), 0.0, ap).sum(1)
    return np.where(counted > 0, 100 * total / np.maximum(counted, 1), np.nan)


def interval(x: Scored, y: Scored, level: float = LEVEL) -> Interval:
    """mAP(x) − mAP(y) and its paired percentile interval; x and y scored on the same ``Resamples``."""
    if x.resampled.shape != y.resampled.shape:
        raise ValueError("x and y were not scored on the same resamples")
    d = x.resampled - y.resampled
    d = d[~np.isnan(d)]
    if not len(d):
        return Interval(x.map - y.map, math.nan, math.nan, 0, level)
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(x.map - y.map), float(lo), float(hi), len(d), level)


def paired_interval(a, b, targets, ignore=None, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                    level: float = LEVEL) -> Interval:
    """mAP(a) − mAP(b) of score matrices a, b (N, C) on targets (N, C), with its paired bootstrap
    percentile interval (the same resampled images and classes for both)."""
    rs = Resamples(targets, ignore, resamples=resamples, seed=seed)
    return interval(rs.score(a), rs.score(b), level)
