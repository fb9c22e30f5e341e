"""The benchmark's metric rows, from cached statistics alone (numpy here; pandas imported when a table is built).

For every score space, ``evaluate_stats`` scores the images with each *method* — the model itself,
the CSRA rule at every (heads, λ), and each pooling baseline whose scores the statistics hold — and
reports, per split, mAP and F1 the way the multi-label literature does for models that were not
trained with sigmoids: top-3 F1 (each image predicts its 3 highest scores) on every row, and F1 at a
threshold chosen on the validation half (never a fixed default) when ``select_on="val"``.
``COLUMN_HELP`` says what every column of the benchmark table means (the CLI and README render it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from .options import EvalOptions

from .classmaps import pool_members
from .errors import InputError
from .methods import METHODS
from .metrics import (always_positive_classes, average_precision, average_precision_sweep, best_f1_threshold,
                      f1_scores, ranked_classes, topk_f1_scores)
from .spaces import get_space
from .choices import STORED_HEADS, check_lam, format_temperatures, resolve_heads

#: Top-k F1: each image predicts its TOPK highest-scoring classes.
TOPK = 3

#: Every column of the benchmark table, in table order, with its one-line meaning.
COLUMN_HELP: Dict[str, str] = {
    "model": "timm model name",
    "weights": "where the model's weights came from (e.g. manifest:NAME, a checkpoint file, the HF hub, random)",
    "dataset": "the dataset's short name (e.g. voc2007@trainval, imagenet-real, mosaic2x2(imagenet-real))",
    "dataset_spec": "the --dataset spec the rows were computed from (KIND:PATH)",
    "img_size": "input size in pixels (square) the model was evaluated at",
    "preprocessing": "how images were fed to the model: its own timm preprocessing with centre crop, or, for "
                     "full-frame datasets (VOC, COCO, mosaics), the whole image resized to img_size",
    "split": "the images of the row: all, or with --select-on val the validation half (val) or the "
             "disjoint test half (test)",
    "n_images": "images in the split",
    "n_classes": "ranked classes of the split, those with at least one (non-ignored) positive and one (non-ignored) "
                 "negative: mAP and CF1 average over these; classes without a positive, and the n_always_positive "
                 "ones, are left out",
    "n_always_positive": "classes positive in every (non-ignored) image of the split (e.g. person on COCO person "
                         "images): their AP is 1 whatever the scores, so they are left out of n_classes, mAP and CF1",
    "method": "model: the model's own scores; csra: the CSRA rule at lam with heads; max-pool, avgmax-pool, "
              "test-time-pool: timm's training-free pooling baselines from the same backbone pass",
    "space": "what is ranked: logit (the model's logits, the paper's rule) or prob (softmax probabilities)",
    "heads": "csra only: number of heads H (λ is shared as λ/H); temperatures says which: --heads 1 is T = ∞ (max "
             "over locations, the paper's 'four lines'), --heads T1 is T = 1 (the official CSRA code's "
             "MHA(num_heads=1)), both 1 head",
    "temperatures": "csra only: the head set's temperatures T, comma-separated, inf for max over locations "
                    "(e.g. inf for --heads 1, 1 for --heads T1, 1,2,4,inf for --heads 4)",
    "lam": "csra only: λ, the weight of the residual attention (0 reproduces the model)",
    "selected": "with --select-on val: True on the val and test rows of the choice with the best val mAP per "
                "method and space (csra: over heads × λ, ties → smaller λ, then fewer heads); report its "
                "test row",
    "mAP": "mean average precision in % (non-interpolated per-class AP, mean over n_classes)",
    "delta": "mAP minus the model's own mAP on the same split and space, in percentage points",
    f"CF1@top{TOPK}": f"per-class F1 in % (macro over n_classes), each image predicting its {TOPK} "
                      f"highest-scoring classes",
    f"OF1@top{TOPK}": f"overall F1 in % (micro over every image and class), each image predicting its {TOPK} "
                      f"highest-scoring classes",
    "threshold": "with --select-on val: the score threshold t (in the space's units) that maximises OF1 on "
                 "the val split for this method, space, heads and λ; empty otherwise",
    "CF1@t": "per-class F1 in % (macro over n_classes) predicting score >= threshold (t from val, applied "
             "unchanged to test); empty without --select-on val",
    "OF1@t": "overall F1 in % (micro) predicting score >= threshold; empty without --select-on val",
    "pool": "ImageNet model on VOC/COCO classes: how a class map pools member classes into a dataset class "
            "(prob: --pool max or sum; logit: always max); empty without a class map",
    "exact": "True when the per-location path is exact for this head (mean of per-location logits = model "
             "logits); False: an approximation",
    "seconds": "time spent on the statistics of this model, dataset and size: chunk task time (summed over "
               "workers, which may run in parallel) plus loading the cached arrays",
    "cached": "True when the statistics came from the cache (no backbone pass)",
    "error": "why this model or dataset gave no metrics (its other metric columns are empty)",
    "note": "why a method has no metrics for this model (e.g. a pooling baseline on a head that pools tokens)",
}
#: Column order of the benchmark table.
COLUMNS: List[str] = list(COLUMN_HELP)


@dataclass(frozen=True)
class _Split:
    """One split's images: ``rows`` into the N images, targets and ignore (n, C) bool."""

    rows: object  # slice or index array
    targets: np.ndarray
    ignore: np.ndarray

    @property
    def n_classes(self) -> int:
        """The ranked classes (``metrics.ranked_classes``): the classes mAP and CF1 average over."""
        return int(ranked_classes(self.targets, self.ignore).sum())

    @property
    def n_always_positive(self) -> int:
        """Classes positive in every non-ignored image: left out of n_classes (``metrics.always_positive_classes``)."""
        return int(always_positive_classes(self.targets, self.ignore).sum())


def _split_metrics(scores: np.ndarray, splits: Dict[str, _Split], aps: Optional[Dict[str, np.ndarray]] = None):
    """Per split: the metric fields of one scoring (N, K). aps: per split AP (K,), computed when None.

    With a "val" split, the OF1-maximising threshold is chosen on it and applied to every split.
    """
    t = math.nan
    val = splits.get("val")
    if val is not None and (val.targets & ~val.ignore).any():  # OF1 needs a positive, not a ranked class
        t = best_f1_threshold(scores[val.rows], val.targets, val.ignore)
    out = []
    for name, sp in splits.items():
        s = scores[sp.rows]
        ap = aps[name] if aps is not None else average_precision(s, sp.targets, sp.ignore)
        n_classes = sp.n_classes
        top = topk_f1_scores(s, sp.targets, TOPK, sp.ignore, positive_classes=True)
        at = (f1_scores(s, sp.targets, t, sp.ignore, positive_classes=True) if not math.isnan(t)
              else {"CF1": math.nan, "OF1": math.nan})
        out.append({"split": name, "n_images": len(s), "n_classes": n_classes,
                    "n_always_positive": sp.n_always_positive,
                    "mAP": 100 * float(np.nanmean(ap)) if n_classes else math.nan,
                    f"CF1@top{TOPK}": 100 * top["CF1"], f"OF1@top{TOPK}": 100 * top["OF1"],
                    "threshold": t, "CF1@t": 100 * at["CF1"], "OF1@t": 100 * at["OF1"]})
    return out


def _members(class_map) -> Optional[list]:
    """The member lists of the dataset classes a class map covers (None without a class map)."""
    return None if class_map is None else [m for m, ok in zip(class_map.members, class_map.mapped) if ok]


def _pooled(scores, members, member_pool):
    """Model-class scores (N, C) → the dataset classes' (N, K) (unchanged without a class map)."""
    return scores if members is None else pool_members(scores, members, member_pool)


def _stored_heads(stats) -> tuple:
    """The heads along the ``_att`` arrays' axis 1: ``stats.heads`` (``cache.Statistics``), else the default."""
    return tuple(getattr(stats, "heads", STORED_HEADS))


def _heads_att(att, temps, stored) -> np.ndarray:
    """(N, H, C) attention terms of the ``stored`` heads → their sum over the head set ``temps`` (N, C), picked
    by head."""
    return att[:, [stored.index(t) for t in temps]].sum(axis=1)


def _rule_parts(base, att, members, member_pool):
    """(base, att, linear): sum pooling commutes with the rule, so it pools first (``linear``)."""
    linear = members is None or member_pool == "sum"
    if linear and members is not None:
        base, att = pool_members(base, members, "sum"), pool_members(att, members, "sum")
    return base, att, linear


def _rule_scores(base, att, scale: float, linear: bool, members, member_pool):
    """``base + scale·att`` in the inputs' dtype (what the sweep ranks, to the bit), class-pooled after
    the rule unless ``linear`` (then base and att are pooled already)."""
    s = base + np.result_type(base, att).type(scale) * att if scale else base
    return s if linear else pool_members(s, members, member_pool)


def _csra_metrics(base, att, lams: Sequence[float], n_heads: int, members, member_pool, splits):
    """Per λ: ``_split_metrics`` of ``base + (λ/H)·att`` (N, C), class-pooled after the rule."""
    base, att, linear = _rule_parts(base, att, members, member_pool)
    scale = np.asarray(lams, np.float64) / n_heads
    aps = ({name: average_precision_sweep(base[sp.rows], att[sp.rows], scale, sp.targets, sp.ignore)
            for name, sp in splits.items()} if linear else None)
    for i, lam in enumerate(scale):
        s = _rule_scores(base, att, lam, linear, members, member_pool)
        yield _split_metrics(s, splits, None if aps is None else {k: v[i] for k, v in aps.items()})


def method_scores(stats, space: str, method: str = "model", *, heads=1, lam: float = 0.0, class_map=None,
                  pool: str = "max") -> np.ndarray:
    """The (N, K) scores ``evaluate_stats`` ranks for one method and setting, from cached statistics.

    method: a registered method (``methods.METHODS``): "model", "csra" (at ``heads``, ``lam``) or a baseline;
    K: the dataset's classes, or with ``class_map`` the ones it covers (``class_map.mapped``), pooled
    the way ``evaluate_stats`` pools them (``pool``, as the space allows). Use with the rows of a
    benchmark table (e.g. for bootstrap intervals or per-class AP).
    """
    space = get_space(space)
    members = _members(class_map)
    member_pool = None if members is None else space.member_pool(pool)
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if METHODS[method].takes_rule:
        temps = resolve_heads(heads)
        parts = _rule_parts(_stat(stats, f"{space.name}_base"),
                            _heads_att(_stat(stats, f"{space.name}_att"), temps, _stored_heads(stats)), members,
                            member_pool)
        return _rule_scores(*parts[:2], float(np.float64(check_lam(lam)) / len(temps)), parts[2], members,
                            member_pool)
    return _pooled(_stat(stats, METHODS[method].stat_key(space.name)), members, member_pool)


def _stat(stats, key: str) -> np.ndarray:
    if key not in stats:
        raise InputError(f"the statistics have no {key!r} array (they hold {sorted(stats)}); recompute them "
                         f"with this version (clear the statistics cache)")
    return np.asarray(stats[key])


def evaluate_stats(stats, targets, ignore, options: "EvalOptions" = None, *, class_map=None, split=None,
                   notes: Optional[Dict[str, Optional[str]]] = None):
    """Metric rows (columns of ``COLUMNS`` from split to pool) from cached statistics alone.

    stats: per space ``{space}_base`` (N, C), ``{space}_att`` (N, H, C) of the heads ``stats.heads``
    (default ``STORED_HEADS``), and
    optionally ``{space}@{method}`` (N, C) per pooling baseline (all-NaN: the baseline does not apply).
    targets, ignore: (N, C_dataset); class_map: a ``classmaps.ClassMap`` from the model's classes to the
    dataset's (its unmapped classes are left out). options: ``options.EvalOptions`` (already checked): λ values
    (0 is always added), head sets (a csra row's ``heads`` is its set's size, ``temperatures`` which
    temperatures), spaces, how ImageNet classes pool, and ``select_on="val"``: rows for a val and a test split
    (``split`` = (val_idx, test_idx), else ``datasets.split_indices(N, val_fraction, split_seed)``), with
    ``selected`` and val-chosen thresholds.
    notes: per baseline method, why it does not apply to the model (``CSRAScorer.baseline_notes()``); such a
    method gets rows with that reason in ``note``.
    """
    import pandas as pd

    from .options import EvalOptions

    options = options or EvalOptions()
    lams, spaces, pool, select_on = sorted(set(options.lams) | {0.0}), options.spaces, options.pool, options.select_on
    targets, ignore = np.asarray(targets) > 0, np.asarray(ignore, bool)
    members = _members(class_map)
    if class_map is not None:
        targets, ignore = targets[:, class_map.mapped], ignore[:, class_map.mapped]
    n = len(targets)
    if select_on == "val":
        if split is None:
            from .datasets import split_indices
            split = split_indices(n, options.val_fraction, options.split_seed)
        parts = dict(zip(("val", "test"), split))
    else:
        parts = {"all": slice(None)}
    splits = {name: _Split(rows, targets[rows], ignore[rows]) for name, rows in parts.items()}
    heads_sets = [(h, resolve_heads(h)) for h in options.heads]
    stored = _stored_heads(stats)
    for heads, temps in heads_sets:
        if any(t not in stored for t in temps):
            raise InputError(f"heads {heads}: the statistics hold T in ({format_temperatures(stored)}) only; "
                             f"bench stores other heads when asked for them")

    rows: List[dict] = []

    def add(config: dict, per_split: list) -> None:
        config_id = len(rows) // len(splits)
        rows.extend({**config, **m, "_config": config_id} for m in per_split)

    for space_name in spaces:
        space = get_space(space_name)
        member_pool = None if members is None else space.member_pool(pool)
        base, att = _stat(stats, f"{space.name}_base"), _stat(stats, f"{space.name}_att")
        if base.shape[0] != n or (members is None and base.shape[1] != targets.shape[1]):
            raise InputError(f"statistics {base.shape} do not match targets {targets.shape}")

        def pooled(scores):
            return _pooled(scores, members, member_pool)

        common = dict(space=space.name, pool=member_pool)
        for method in METHODS.values():  # table order: the model, csra, the baselines
            if method.takes_rule:
                for heads, temps in heads_sets:
                    att_h = _heads_att(att, temps, stored)
                    label = format_temperatures(temps)  # heads: how many; temperatures: which (1 and T1 differ)
                    for lam, per_split in zip(lams, _csra_metrics(base, att_h, lams, len(temps), members,
                                                                  member_pool, splits)):
                        add(dict(method=method.name, heads=len(temps), temperatures=label, lam=lam,
                                 _n_heads=len(temps), **common), per_split)
                continue
            key = method.stat_key(space.name)
            scores = np.asarray(stats[key]) if key in stats else None
            if scores is None or np.isnan(scores).all():  # absent, or all-NaN: not applicable to this model
                reason = (notes or {}).get(method.name)
                if reason:  # say why instead of leaving a gap
                    add(dict(method=method.name, heads=None, lam=math.nan, _n_heads=0, note=f"not applicable: {reason}",
                             **common), [dict(split=name, n_images=len(sp.targets), mAP=math.nan)
                                         for name, sp in splits.items()])
                continue
            add(dict(method=method.name, heads=None, lam=math.nan, _n_heads=0, **common),
                _split_metrics(pooled(scores), splits))

    df = pd.DataFrame(rows)
    model = df[df["method"] == "model"].set_index(["split", "space"])["mAP"]
    df["delta"] = df["mAP"].to_numpy() - model.reindex(pd.MultiIndex.from_frame(df[["split", "space"]])).to_numpy()
    df["selected"] = pd.array([pd.NA] * len(df), dtype="boolean")
    if select_on == "val":
        df["selected"] = _selected(df)
    df = df[[c for c in COLUMNS if c in df.columns]]
    return df.reset_index(drop=True)


def _selected(df):
    """(rows,) bool: the val and test rows of the best val-mAP configuration per (method, space)."""
    val = df[(df["split"] == "val") & df["mAP"].notna()]
    order = val.sort_values(["mAP", "lam", "_n_heads", "_config"], ascending=[False, True, True, True],
                            kind="stable")
    best = order.groupby(["method", "space"], sort=False)["_config"].first()
    return df["_config"].isin(best.to_numpy()).to_numpy()


__all__ = ["COLUMN_HELP", "COLUMNS", "TOPK", "evaluate_stats", "method_scores"]
