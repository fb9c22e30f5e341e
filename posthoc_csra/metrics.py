"""Ranking and classification metrics (numpy in, numpy out; torch tensors accepted).

Shapes: N images, C classes, L lambda values.

AP is scikit-learn's ``average_precision_score`` (non-interpolated, tied scores
grouped at distinct thresholds), computed for all classes at once. With P positives
in a class, AP = (1/P) * sum over positives p of precision at the end of p's tie
group, i.e. ``#(positives with score >= s_p) / #(entries with score >= s_p)``.
Both counts come from one values-only sort of the (C, N) score matrix plus a
binary search vectorised over all positives (no loop over classes or images);
ignored entries are pushed to -inf and clamped out of the counts, so they leave
the ranking entirely.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = [
    "average_precision",
    "mean_average_precision",
    "average_precision_sweep",
    "f1_scores",
    "topk_accuracy",
    "real_accuracy",
]


def _np(x) -> np.ndarray:
    """Array from a numpy array, torch tensor or sequence."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _float_scores(x) -> np.ndarray:
    """Scores as float32/float64 (float16 and ints are widened exactly)."""
    x = _np(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32 if x.dtype == np.float16 else np.float64)
    return x


def _masks(targets, ignore, shape) -> tuple:
    """(positives, ignore) as (N, C) bool; ignore may be None. Targets > 0 are positive."""
    t = _np(targets)
    t = t if t.dtype == bool else t > 0
    if t.shape != tuple(shape):
        raise ValueError(f"targets shape {t.shape} != scores shape {tuple(shape)}")
    if ignore is None:
        return t, None
    ign = _np(ignore).astype(bool, copy=False)
    if ign.shape != t.shape:
        raise ValueError(f"ignore shape {ign.shape} != scores shape {t.shape}")
    return t & ~ign, (ign if ign.any() else None)


def _lower_bound(flat: np.ndarray, start: np.ndarray, width: int, q: np.ndarray) -> np.ndarray:
    """Per query, first index i in [start, start + width) with flat[i] >= q (else start + width).

    Branchless binary search, vectorised over all queries; each segment sorted ascending.
    """
    base, n = start.copy(), width
    while n > 1:
        half = n // 2
        base += np.where(flat[base + half] < q, half, 0)
        n -= half
    return base + (flat[base] < q) if width else base


class _Ranker:
    """Fixed targets/ignore; ``ap(sK)`` gives AP of (K, N) scores of the K classes with positives."""

    def __init__(self, pos: np.ndarray, ign: Optional[np.ndarray]):
        n, c = pos.shape
        counts = pos.sum(0)
        self.n, self.n_classes = n, c
        self.cls = np.flatnonzero(counts)  # (K,) classes with a positive
        self.pk = counts[self.cls]
        self.ignK = None if ign is None else np.ascontiguousarray(ign.T[self.cls])
        self.r, self.col = np.nonzero(pos.T[self.cls])  # (T,) positives, grouped by class
        self.seg_end = np.cumsum(self.pk)[self.r]  # end of each positive's class segment
        nign = np.zeros(len(self.cls), np.int64) if ign is None else self.ignK.sum(1)
        self.nign = nign[self.r]

    def ap(self, sK: np.ndarray) -> np.ndarray:
        """AP (K,) float64 of scores sK (K, N) in ``self.cls`` order; sK is overwritten."""
        r, t = self.r, len(self.r)
        v = sK[r, self.col]
        v = v[np.lexsort((v, r))]  # class segments kept, scores ascending within each
        new = np.ones(t, bool)
        new[1:] = (v[1:] != v[:-1]) | (r[1:] != r[:-1])
        first = np.maximum.accumulate(np.where(new, np.arange(t), 0))  # start of tie group
        tp_ge = self.seg_end - first  # positives with score >= v
        if self.ignK is not None:
            np.copyto(sK, -np.inf, where=self.ignK)  # below every real score; clamped out below
        sK.sort(axis=1)
        if sK.size and np.isnan(sK[:, -1]).any():  # NaN sorts last
            raise ValueError("scores contain NaN")
        below = _lower_bound(sK.ravel(), r * self.n, self.n, v) - r * self.n
        n_ge = self.n - np.maximum(below, self.nign)  # non-ignored entries with score >= v
        prec = tp_ge / n_ge.astype(np.float64)
        return np.bincount(r, weights=prec, minlength=len(self.cls)) / self.pk

    def scatter(self, apK: np.ndarray) -> np.ndarray:
        """(..., K) -> (..., C), NaN for classes without positives."""
        out = np.full(apK.shape[:-1] + (self.n_classes,), np.nan)
        out[..., self.cls] = apK
        return out


def average_precision(scores, targets, ignore=None) -> np.ndarray:
    """Per-class AP (C,) of scores (N, C) vs targets (N, C); ignore (N, C) bool drops entries.

    Equals ``sklearn.metrics.average_precision_score`` per class on the non-ignored
    entries; classes with no (non-ignored) positive get NaN.
    """
    s = _float_scores(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got {s.shape}")
    pos, ign = _masks(targets, ignore, s.shape)
    rk = _Ranker(pos, ign)
    return rk.scatter(rk.ap(np.ascontiguousarray(s.T[rk.cls])))


def mean_average_precision(scores, targets, ignore=None) -> float:
    """mAP in [0, 1]: mean AP over classes with at least one positive (NaN if none)."""
    ap = average_precision(scores, targets, ignore)
    return float(np.mean(ap[~np.isnan(ap)])) if (~np.isnan(ap)).any() else float("nan")


def average_precision_sweep(base, att, lams, targets, ignore=None) -> np.ndarray:
    """AP (L, C) of ``base + lam * att`` for each lam; base, att (N, C), lams (L,).

    Scores are formed in the inputs' float dtype (float32 stays float32, lam rounded
    to it), bit-identical to numpy's ``base + lam * att`` for a Python-float lam.
    Targets/ignore bookkeeping is done once; each lam costs one (C, N) sort.
    """
    b, a = _float_scores(base), _float_scores(att)
    if b.ndim != 2 or b.shape != a.shape:
        raise ValueError(f"base {b.shape} and att {a.shape} must both be (N, C)")
    dt = np.result_type(b, a)
    pos, ign = _masks(targets, ignore, b.shape)
    rk = _Ranker(pos, ign)
    bK = np.ascontiguousarray(b.T[rk.cls], dtype=dt)
    aK = np.ascontiguousarray(a.T[rk.cls], dtype=dt)
    lams = np.atleast_1d(_np(lams)).astype(dt)
    out = np.empty((len(lams), len(rk.cls)))
    sK = np.empty_like(bK)
    for i, lam in enumerate(lams):  # one (K, N) sort per lam; memory stays 3 x (C, N)
        np.multiply(aK, lam, out=sK)
        sK += bK
        out[i] = rk.ap(sK)
    return rk.scatter(out)


def _ratio(num, den) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _f1(p, r) -> float:
    return float(_ratio(2 * p * r, p + r))


def f1_scores(scores, targets, threshold=0.5, ignore=None) -> Dict[str, float]:
    """Multi-label P/R/F1 of predictions ``scores >= threshold`` (scalar or (C,)).

    scores, targets, ignore (N, C); ignored entries are excluded. Per class
    (macro, over all C classes, 0 for an empty denominator like sklearn's
    ``zero_division=0``): CP, CR and CF1 = 2·CP·CR/(CP+CR). Overall (micro): OP, OR, OF1.
    """
    s = _float_scores(scores)
    pos, ign = _masks(targets, ignore, s.shape)
    pred = s >= _np(threshold)
    if ign is not None:
        pred = pred & ~ign
    tp = (pred & pos).sum(0)
    n_pred, n_pos = pred.sum(0), pos.sum(0)
    cp, cr = float(_ratio(tp, n_pred).mean()), float(_ratio(tp, n_pos).mean())
    op, orec = float(_ratio(tp.sum(), n_pred.sum())), float(_ratio(tp.sum(), n_pos.sum()))
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orec, "OF1": _f1(op, orec)}


def _rank_of(s: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) position of each label in a descending, lower-index-first ordering of s (N, C)."""
    own = np.take_along_axis(s, labels[:, None], axis=1)
    before = np.arange(s.shape[1])[None, :] < labels[:, None]
    return (s > own).sum(1) + ((s == own) & before).sum(1)


def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Fraction of images (N,) whose int label is among the top k of scores (N, C).

    Ties go to the lower class index, so k=1 agrees with ``argmax``.
    """
    s = _float_scores(scores)
    y = _np(labels).astype(np.int64).reshape(-1)
    if s.ndim != 2 or len(y) != len(s):
        raise ValueError(f"scores (N, C) and labels (N,) expected, got {s.shape}, {y.shape}")
    if not len(y):
        return float("nan")
    return float((_rank_of(s, y) < k).mean())


def real_accuracy(scores, real_label_sets) -> float:
    """ImageNet-ReaL accuracy: top-1 (argmax) of scores (N, C) is in the image's ReaL set.

    real_label_sets: N iterables of ints, or an (N, C) bool matrix. Images with an
    empty set are excluded; NaN if none remain.
    """
    s = _float_scores(scores)
    pred = s.argmax(1)
    if (isinstance(real_label_sets, np.ndarray) or hasattr(real_label_sets, "detach")) \
            and _np(real_label_sets).ndim == 2:
        m = _np(real_label_sets).astype(bool)
        if m.shape != s.shape:
            raise ValueError(f"label matrix {m.shape} != scores {s.shape}")
        valid, hit = m.any(1), m[np.arange(len(s)), pred]
    else:
        sets = [np.asarray(list(x), np.int64).reshape(-1) for x in real_label_sets]
        if len(sets) != len(s):
            raise ValueError(f"{len(sets)} label sets for {len(s)} images")
        lengths = np.array([len(x) for x in sets], np.int64)
        flat = np.concatenate(sets) if sets else np.zeros(0, np.int64)
        img = np.repeat(np.arange(len(s)), lengths)
        valid = lengths > 0
        hit = np.bincount(img, weights=flat == pred[img], minlength=len(s)) > 0
    return float(hit[valid].mean()) if valid.any() else float("nan")
