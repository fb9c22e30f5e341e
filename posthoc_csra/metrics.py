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

Which classes a ranking says something about is decided in one place, ``ranked_classes``: a class
needs a (non-ignored) positive and a (non-ignored) negative. A class without a positive has no AP;
a class positive in every non-ignored image has AP 1 whatever the scores. Both get NaN per-class AP
and are left out of the macro means (mAP, and CF1 with ``positive_classes``);
``always_positive_classes`` says which were left out for the second reason.

F1 comes as P/R/F1 per class (macro: CP, CR, CF1) and over all entries (micro: OP, OR, OF1) for
predictions made by a threshold (``f1_scores``) or by the k highest scores of each image
(``topk_f1_scores``); ``best_f1_threshold`` picks the threshold that maximises OF1 on given
(validation) scores, to be applied unchanged to other data.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .errors import InputError

__all__ = [
    "ranked_classes",
    "always_positive_classes",
    "average_precision",
    "average_precision_sweep",
    "f1_scores",
    "topk_predictions",
    "topk_f1_scores",
    "best_f1_threshold",
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


def _ranked(pos: np.ndarray, ign: Optional[np.ndarray]) -> np.ndarray:
    """(C,) bool: a non-ignored positive and a non-ignored negative (pos: (N, C) non-ignored positives)."""
    neg = ~pos if ign is None else ~(pos | ign)
    return pos.any(0) & neg.any(0)


def ranked_classes(targets, ignore=None) -> np.ndarray:
    """(C,) bool: the classes a ranking metric averages over, those with at least one non-ignored
    positive and at least one non-ignored negative in targets (N, C) (ignore (N, C) bool drops entries).

    The one rule for mAP (``average_precision`` gives NaN elsewhere), for CF1 with
    ``positive_classes`` and for the benchmark table's ``n_classes``.
    """
    t = _np(targets)
    pos, ign = _masks(t, ignore, t.shape)
    return _ranked(pos, ign)


def always_positive_classes(targets, ignore=None) -> np.ndarray:
    """(C,) bool: classes positive in every non-ignored entry of targets (N, C) (at least one):
    left out by ``ranked_classes`` because their AP is 1 whatever the scores."""
    t = _np(targets)
    pos, ign = _masks(t, ignore, t.shape)
    return pos.any(0) & ~_ranked(pos, ign)


class _Ranker:
    """Fixed targets/ignore; ``ap(sK)`` gives AP of (K, N) scores of the K ranked classes."""

    def __init__(self, pos: np.ndarray, ign: Optional[np.ndarray]):
        n, c = pos.shape
        counts = pos.sum(0)
        self.n, self.n_classes = n, c
        self.cls = np.flatnonzero(_ranked(pos, ign))  # (K,) ranked classes (``ranked_classes``)
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
        """(..., K) -> (..., C), NaN for the classes that are not ranked."""
        out = np.full(apK.shape[:-1] + (self.n_classes,), np.nan)
        out[..., self.cls] = apK
        return out


def average_precision(scores, targets, ignore=None) -> np.ndarray:
    """Per-class AP (C,) of scores (N, C) vs targets (N, C); ignore (N, C) bool drops entries.

    Equals ``sklearn.metrics.average_precision_score`` per class on the non-ignored
    entries; classes that are not ranked (``ranked_classes``: no non-ignored positive, or no
    non-ignored negative, where sklearn's AP is 1 whatever the scores) get NaN, so ``np.nanmean``
    of the result is the mAP.
    """
    s = _float_scores(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got {s.shape}")
    pos, ign = _masks(targets, ignore, s.shape)
    rk = _Ranker(pos, ign)
    return rk.scatter(rk.ap(np.ascontiguousarray(s.T[rk.cls])))


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


def _prf(pred: np.ndarray, pos: np.ndarray, ign: Optional[np.ndarray], positive_classes: bool) -> Dict[str, float]:
    """CP, CR, CF1 (macro) and OP, OR, OF1 (micro) of predictions pred vs positives pos, both (N, C) bool
    (ign: the ignored entries, or None); macro over all classes, or the ranked ones with positive_classes."""
    tp = (pred & pos).sum(0)
    n_pred, n_pos = pred.sum(0), pos.sum(0)
    cls = _ranked(pos, ign) if positive_classes else slice(None)
    if positive_classes and not cls.any():
        cp = cr = float("nan")
    else:
        cp, cr = float(_ratio(tp[cls], n_pred[cls]).mean()), float(_ratio(tp[cls], n_pos[cls]).mean())
    op, orec = float(_ratio(tp.sum(), n_pred.sum())), float(_ratio(tp.sum(), n_pos.sum()))
    cf1 = float("nan") if np.isnan(cp) else _f1(cp, cr)
    return {"CP": cp, "CR": cr, "CF1": cf1, "OP": op, "OR": orec, "OF1": _f1(op, orec)}


def _check_no_nan(s: np.ndarray, ign: Optional[np.ndarray]) -> None:
    nan = np.isnan(s)
    if (nan.any() if ign is None else (nan & ~ign).any()):
        raise ValueError("scores contain NaN")


def f1_scores(scores, targets, threshold, ignore=None, positive_classes: bool = False) -> Dict[str, float]:
    """Multi-label P/R/F1 of predictions ``scores >= threshold`` (scalar or (C,)); fractions in [0, 1].

    scores, targets, ignore (N, C); ignored entries are neither predictions nor positives. Per class
    (macro, 0 for an empty denominator like sklearn's ``zero_division=0``): CP, CR and
    CF1 = 2·CP·CR/(CP+CR), averaged over all C classes, or with ``positive_classes`` over the ranked
    classes (``ranked_classes``: a non-ignored positive and a non-ignored negative; NaN if none).
    Overall (micro, every entry): OP, OR, OF1.
    """
    s = _float_scores(scores)
    pos, ign = _masks(targets, ignore, s.shape)
    pred = s >= _np(threshold)
    if ign is not None:
        pred &= ~ign
    return _prf(pred, pos, ign, positive_classes)


def topk_predictions(scores, k: int, ignore=None) -> np.ndarray:
    """(N, C) bool: the k highest non-ignored scores of each image of scores (N, C).

    Ties at the k-th score go to the lower class index; an image with fewer than k non-ignored
    entries predicts all of them.
    """
    s = _float_scores(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got {s.shape}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InputError(f"top-k predictions: k must be a positive integer, got {k!r}")
    ign = None if ignore is None else _np(ignore).astype(bool, copy=False)
    _check_no_nan(s, ign)
    c = s.shape[1]
    k = min(int(k), c)
    if ign is not None:
        s = np.where(ign, -np.inf, s)
    if not s.size:
        return np.zeros(s.shape, bool)
    kth = np.partition(s, c - k, axis=1)[:, c - k, None]  # (N, 1) k-th highest score
    above = s > kth
    tie = s == kth if ign is None else (s == kth) & ~ign
    need = k - above.sum(1, keepdims=True)  # how many of the tied entries still fit
    return above | (tie & (np.cumsum(tie, axis=1) <= need))


def topk_f1_scores(scores, targets, k: int = 3, ignore=None, positive_classes: bool = False) -> Dict[str, float]:
    """P/R/F1 (as ``f1_scores``) when each image predicts its k highest scores (``topk_predictions``).

    Ignored entries are excluded: never predicted, never positives.
    """
    s = _float_scores(scores)
    pos, ign = _masks(targets, ignore, s.shape)
    return _prf(topk_predictions(s, k, ignore), pos, ign, positive_classes)


def best_f1_threshold(scores, targets, ignore=None) -> float:
    """The threshold t whose predictions ``scores >= t`` maximise the micro F1 (OF1) of scores (N, C).

    Ignored entries are left out. One sort of all N·C scores; candidate cuts are the distinct
    scores of positives (adding only negatives never raises F1). Among equal F1 the higher cut wins
    (fewer predictions); t is the midpoint between the chosen score and the next lower distinct
    score (the chosen score itself when none is lower, or when the midpoint is not strictly between
    them in the scores' dtype). ``math.inf`` when there is no positive.
    """
    s = _float_scores(scores)
    pos, ign = _masks(targets, ignore, s.shape)
    _check_no_nan(s, ign)
    values = s[~ign] if ign is not None else s.ravel()
    positives, counts = np.unique(s[pos], return_counts=True)  # ascending distinct scores of positives
    if not len(positives):
        return float("inf")
    ranked = np.sort(values)
    n_ge = len(ranked) - np.searchsorted(ranked, positives, side="left")  # entries scored >= cut
    tp_ge = np.cumsum(counts[::-1])[::-1]  # positives scored >= cut
    f1 = 2 * tp_ge / (n_ge + counts.sum()).astype(np.float64)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # last maximum = the highest cut
    cut = positives[best]
    below = int(np.searchsorted(ranked, cut, side="left"))
    if below == 0:
        return float(cut)
    lower = ranked[below - 1]
    with np.errstate(over="ignore", invalid="ignore"):
        mid = lower + (cut - lower) / s.dtype.type(2)
    return float(mid if lower < mid <= cut else cut)
