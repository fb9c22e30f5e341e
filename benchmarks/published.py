"""The published results: every real model in ../shared/weights on the real images in ../shared.

    python benchmarks/published.py                          # writes benchmarks/results/*, updates README
    python benchmarks/published.py --quick --out /tmp/pub   # smoke run: a few images, two models, no README

* PASCAL VOC2007 (2,000 trainval images, official classification labels; ImageNet classes pooled into VOC
  classes through the shipped WordNet map), the paper's protocol: the whole image resized to S×S, no
  centre crop, at each model's own size and at 448 px;
* MS-COCO 2017 val (the shared 500 images, image-level labels; ImageNet classes pooled into COCO classes;
  ``person``, positive in every image, is not counted), full frame, own size and 448 px;
* ImageNet-ReaL natural images at each model's own size (timm's centre crop);
* 2×2 mosaics of them at the model's own size and at 448 px (full frame);
* the paper's own setting: a 20-class head trained multi-label (logistic loss) on the frozen, average-pooled
  448 px features of part 1/2 of the VOC images (``benchmarks/fit_multilabel_head.py``), evaluated on the
  disjoint part 2/2 in logit space with no class map (all 20 classes).

Every model of the manifest, including ``tf_mobilenetv3_small_100`` whose head is not pool→linear (its
per-location path is an approximation, ``exact=False``; the mean of its per-location scores is published
beside it). Heads {1, 4, 8}, every method (the model, CSRA, timm's max / avgmax / test-time pooling); each
method's setting (for CSRA λ and heads) chosen on the validation half, mAP reported on the disjoint test
half (mosaic halves share no tile image). Every Δ gets a paired bootstrap 95 % interval over the test images
(``posthoc_csra.bootstrap``: the same resampled images for both methods, seeded), computed from the cached
statistics; wins, ties and losses are decided by whether that interval excludes 0.

Files (in ``--out``, default benchmarks/results): ``published.csv.gz`` (every table row, gzip CSV),
``published.md`` (the headline table and its computed summary, also the README block), ``headline.csv`` (the
headline table with numeric intervals), ``lambda_bands.csv`` (Δ and its interval against λ ≤ 1 for every head set,
VOC, COCO and the multi-label head at 448 px), ``per_class.csv`` (per-class test AP of the model and of CSRA at
the val-chosen setting, same datasets), ``approximate_heads.csv`` (non-exact models: the location mean and its
rank agreement with the model), ``voc_lambda.png`` and ``coco_lambda.png``. The statistics cache makes re-runs
cheap (no backbone pass).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
MARK_START, MARK_END = "<!-- published:start -->", "<!-- published:end -->"
LAMS = "0:1:0.05,1.5,2,3,5"
HEADS = "1,4,8"
BASELINE_METHODS = ("max-pool", "avgmax-pool", "test-time-pool")
BAND_SIZE = 448  # λ bands, per-class AP and λ plots at this size
BAND_MAX_LAM = 1.0
BAND_STEP = 0.1  # λ bands every 0.1 (plus the val choice): each point is a bootstrap of its own
QUICK_MODELS = ("tf_efficientnet_lite0", "tf_mobilenetv3_small_100")
ML_LABEL = "voc2007 multi-label head"
#: Which random halving of the VOC images trains / evaluates the multi-label head (``part:K/2:SEED``; the
#: part draws from its own random stream, so the evaluation part holds val and test images of the VOC split).
ML_PART_SEED = 0


@dataclass(frozen=True)
class Suite:
    """One dataset of the published table: its label there, spec, sizes (None: each model's own), where the
    models come from, which spaces, and whether it gets λ bands, per-class AP and a λ plot."""

    label: str
    spec: str
    sizes: Tuple[Optional[int], ...]
    source: object  # ModelSource
    models: Optional[Tuple[str, ...]] = None  # None: every manifest entry
    spaces: str = "logit,prob"
    curves: bool = False
    plot: Optional[str] = None


def _fit_module():
    spec = importlib.util.spec_from_file_location("fit_multilabel_head", HERE / "fit_multilabel_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def suites(shared: Path, args, fixture_dir: Path) -> List[Suite]:
    """The published datasets, in table order (the multi-label head's checkpoint is fitted here when missing)."""
    from posthoc_csra.options import ModelSource

    coco_root = shared / "data" / "coco2017"
    if not (coco_root / "annotations" / "instances_val2017.json").is_file() or not (coco_root / "val2017").is_dir():
        sys.exit(f"no COCO 2017 val under {coco_root} (annotations/instances_val2017.json and val2017/): the "
                 f"published table needs it; put the shared assets' data/coco2017 there or pass --shared")
    wrap = (lambda spec: f"subset:{args.quick_images}:0:{spec}") if args.quick else (lambda spec: spec)
    natural = f"imagenet-real:{shared / 'data' / 'imagenet-val-real' / 'images'}"
    manifest = ModelSource(checkpoint=shared / "weights" / "manifest.json")
    models = tuple(args.models.split(",")) if args.models else (QUICK_MODELS if args.quick else None)
    fit = _fit_module()
    ml_models = tuple(fit.DEFAULT_MODELS[:1] if args.quick else fit.DEFAULT_MODELS)
    _, eval_spec = fit.part_specs(shared, ML_PART_SEED)
    _check_halves(eval_spec)
    ml_manifest = fit.fit_heads(shared, fixture_dir, ml_models, BAND_SIZE, ML_PART_SEED,
                                **(dict(max_images=32, l2=1e-2) if args.quick else {}), workers=args.workers)
    return [
        Suite("voc2007", wrap(f"voc2007:{shared / 'data' / 'voc2007'}@trainval"), (None, BAND_SIZE), manifest,
              models, curves=True, plot="voc_lambda.png"),
        Suite("coco", wrap(f"coco:{coco_root}@val2017"), (None, BAND_SIZE), manifest, models, curves=True,
              plot="coco_lambda.png"),
        Suite("natural", wrap(natural), (None,), manifest, models),
        Suite("mosaic 2×2", f"mosaic:{natural}", (None, BAND_SIZE), manifest, models),
        Suite(ML_LABEL, wrap(eval_spec), (BAND_SIZE,), ModelSource(checkpoint=ml_manifest), ml_models,
              spaces="logit", curves=True),
    ]


def _check_halves(spec: str) -> None:
    """The evaluation part must have validation and test images (λ is chosen on one, reported on the other)."""
    from posthoc_csra.datasets import dataset_split, parse_dataset

    val, test = dataset_split(parse_dataset(spec))
    if not len(val) or not len(test):
        sys.exit(f"{spec}: {len(val)} validation and {len(test)} test images; the multi-label head's evaluation "
                 f"part needs both (change ML_PART_SEED)")


# ---------------------------------------------------------------- bootstrap intervals from the cache
def _asked_size(suite: Suite, img_size: int) -> Optional[int]:
    """The size run_bench was asked for that gave ``img_size`` (None: the model's own)."""
    return img_size if img_size in suite.sizes else None


def _head_set(row):
    """A csra row's head set for ``method_scores``: its temperatures when the table has them, else its count."""
    temps = row.get("temperatures")
    if temps is not None and not (isinstance(temps, float) and math.isnan(temps)) and str(temps) not in ("", "<NA>"):
        return tuple(float(x) for x in str(temps).split(","))
    return int(row["heads"])


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K,) Spearman correlation per column of a, b (N, K); NaN for a constant column."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    den = np.sqrt((ra ** 2).sum(0) * (rb ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / den, np.nan)


def _location_mean(stats, space: str, classifier) -> np.ndarray:
    """The model as its per-location path sees it (model classes): the mean over locations of the
    per-location logits, ``mean_k z_kc`` (logit space), or its softmax (prob space). For a pool→linear
    (exact) head these are exactly the model's logits and probabilities. The cache holds the logit mean
    bias-free and normalised when the final layer is linear; ‖w_c‖ and b_c restore the model's units."""
    z = np.asarray(stats["logit_mean"], np.float64)
    if classifier is not None:
        z = z * classifier.weight_norm.double().numpy()[None] + classifier.bias.double().numpy()[None]
    if space == "logit":
        return z
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class Intervals:
    """Everything computed from the cached statistics: per headline key the intervals, plus the λ-band,
    per-class and approximate-head rows."""

    def __init__(self, resamples: int, seed: int):
        self.resamples, self.seed = resamples, seed
        self.head: Dict[tuple, dict] = {}
        self.bands: List[dict] = []
        self.per_class: List[dict] = []
        self.approx: List[dict] = []
        self._classifiers: Dict[tuple, object] = {}

    def classifier(self, model: str, source):
        """The model's final linear classifier (bias, ‖w_c‖), for its logit-space location mean."""
        key = (model, str(source.checkpoint))
        if key not in self._classifiers:
            from posthoc_csra.heads import linear_classifier
            from posthoc_csra.models import load_model

            self._classifiers[key] = linear_classifier(load_model(model, checkpoint=source.checkpoint))
        return self._classifiers[key]

    def add_pass(self, suite: Suite, rows, stats, info, ds, evaluation) -> None:
        """One (model, size, dataset) pass: its test rows of the table and its cached statistics."""
        from posthoc_csra.bootstrap import Interval, Resamples, interval
        from posthoc_csra.classmaps import class_map_for
        from posthoc_csra.datasets import dataset_split
        from posthoc_csra.evaluation import method_scores
        from posthoc_csra.metrics import average_precision

        first = rows.iloc[0]
        model, img_size, dataset = first["model"], int(first["img_size"]), first["dataset"]
        order = int(rows.index[0])  # rows are written in table order
        cmap = class_map_for(int(info["num_classes"]), ds)
        _, test = dataset_split(ds, evaluation.val_fraction, evaluation.split_seed)
        targets, ignore, classes = ds.targets() > 0, ds.ignore_mask(), np.array(ds.classes)
        if cmap is not None:
            targets, ignore, classes = targets[:, cmap.mapped], ignore[:, cmap.mapped], classes[cmap.mapped]
        targets, ignore = targets[test], ignore[test]
        exact = bool(info.get("exact"))

        def scores(space, method="model", heads=1, lam=0.0, statistics=stats):
            return method_scores(statistics, space, method, heads=heads, lam=lam, class_map=cmap,
                                 pool=evaluation.pool)[test]

        for space, sr in rows.groupby("space", sort=False):
            rs = Resamples(targets, ignore, resamples=self.resamples, seed=self.seed)
            by_method = {m: g for m, g in sr.groupby("method", sort=False)}
            picked = by_method["csra"][by_method["csra"]["selected"].fillna(False).astype(bool)]
            if picked.empty:
                print(f"warning: {model} {dataset} {img_size} {space}: no setting chosen on val (no ranked class "
                      f"there?); no intervals", file=sys.stderr)
                continue
            chosen = picked.iloc[0]
            heads, lam = int(chosen["heads"]), float(chosen["lam"])
            model_scores, csra_scores = scores(space), scores(space, "csra", _head_set(chosen), lam)
            x_model, x_csra = rs.score(model_scores), rs.score(csra_scores)
            d = interval(x_csra, x_model)
            if abs(d.delta - float(chosen["delta"])) > 1e-6:
                print(f"warning: {model} {dataset} {img_size} {space}: the table's Δ {float(chosen['delta']):+.4f} "
                      f"≠ {d.delta:+.4f} over the classes the bootstrap counts (a positive and a negative)",
                      file=sys.stderr)
            entry = {"Δ": d, "exact": exact, "n_counted": len(rs.classes)}
            pools = [(float(by_method[m]["mAP"].iloc[0]), m) for m in BASELINE_METHODS
                     if m in by_method and by_method[m]["mAP"].notna().any()]
            if pools:
                best = max(pools)[1]
                entry["best pool"] = best
                entry["pool"] = interval(x_csra, rs.score(scores(space, best)))
            if not exact:
                mean = {f"{space}_base": _location_mean(stats, space, self.classifier(model, suite.source))}
                mean_scores = scores(space, statistics=mean)
                m = interval(rs.score(mean_scores), x_model)
                rho = _spearman(model_scores, mean_scores)
                entry["mean"] = m
                self.approx.append(dict(_order=order, model=model, dataset=suite.label, img_size=img_size, space=space,
                                        n_test=len(test), the_model=x_model.map, location_mean=x_model.map + m.delta,
                                        delta=m.delta, delta_lo=m.lo, delta_hi=m.hi,
                                        spearman_mean=float(np.nanmean(rho)), spearman_min=float(np.nanmin(rho)),
                                        csra=x_csra.map, csra_delta=d.delta, csra_lo=d.lo, csra_hi=d.hi))
            self.head[(suite.label, model, img_size, space)] = entry
            if not suite.curves or img_size != BAND_SIZE:
                continue
            ap_model = average_precision(model_scores, targets, ignore)
            ap_csra = average_precision(csra_scores, targets, ignore)
            for c in rs.classes:
                self.per_class.append(dict(_order=order, model=model, dataset=dataset, img_size=img_size, space=space,
                                           **{"class": classes[c]}, ap_model=100 * ap_model[c],
                                           ap_csra=100 * ap_csra[c], delta=100 * (ap_csra[c] - ap_model[c])))
            curve = by_method["csra"]
            on_grid = np.isclose(curve["lam"] / BAND_STEP, np.round(curve["lam"] / BAND_STEP))
            curve = curve[((curve["lam"] <= BAND_MAX_LAM) & on_grid) | ((curve["heads"] == heads) & (curve["lam"] == lam))]
            for _, r in curve.iterrows():
                iv = (Interval(0.0, 0.0, 0.0, self.resamples) if r["lam"] == 0 else
                      interval(rs.score(scores(space, "csra", _head_set(r), float(r["lam"]))), x_model))
                self.bands.append(dict(_order=order, model=model, dataset=dataset, img_size=img_size, space=space,
                                       heads=int(r["heads"]), lam=float(r["lam"]), mAP=float(r["mAP"]),
                                       delta=float(r["delta"]), delta_lo=iv.lo, delta_hi=iv.hi))


def bootstrap_all(table, suite_list: List[Suite], evaluations: dict, loading, cache_dir, resamples: int,
                  seed: int) -> Intervals:
    """Intervals for every pass of the table, from the statistics cache (no backbone pass). Passes are
    visited model by model (each model is loaded once, for its weights identity), not table order."""
    from posthoc_csra.bench import load_statistics

    out = Intervals(resamples, seed)
    quiet = replace(loading, progress=False)
    passes = []
    for suite in suite_list:
        rows = table[(table["suite"] == suite.label) & table["error"].isna() & (table["split"] == "test")]
        for (model, img_size), pass_rows in rows.groupby(["model", "img_size"], sort=False):
            asked = _asked_size(suite, int(img_size))
            passes.append(((str(suite.source.checkpoint), model, asked or 0), suite, pass_rows))
    for (_, model, asked), suite, pass_rows in sorted(passes, key=lambda p: p[0]):
        started = time.perf_counter()
        stats, info, ds = load_statistics(model, suite.spec, quiet, img_size=asked or None, source=suite.source,
                                          cache_dir=cache_dir)
        out.add_pass(suite, pass_rows, stats, info, ds, evaluations[suite.label])
        del stats
        print(f"intervals: {model} @{pass_rows['img_size'].iloc[0]} on {suite.label}: "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return out


# ---------------------------------------------------------------- the headline table and its summary
def _ci(iv) -> str:
    return "" if iv is None or math.isnan(iv.lo) else f"[{iv.lo:+.2f}, {iv.hi:+.2f}]"


def headline(table, intervals: Intervals):
    """Per dataset × model × size × space: test mAP of every method at its own val choice, with intervals."""
    import pandas as pd

    ok = table[table["error"].isna() & (table["split"] == "test") & table["selected"].fillna(False).astype(bool)]
    keys = ["suite", "model", "img_size", "preprocessing", "space"]
    rows = []
    for key, group in ok.groupby(keys, sort=False):
        suite, model, img_size, preprocessing, space = key
        by = group.set_index("method")
        itself, csra = by.loc["model"], by.loc["csra"]
        entry = intervals.head.get((suite, model, int(img_size), space), {})
        d, pool, mean = entry.get("Δ"), entry.get("pool"), entry.get("mean")
        row = dict(model=model, dataset=suite, img_size=int(img_size), preprocessing=preprocessing, space=space,
                   exact=entry.get("exact"), n_test=int(itself["n_images"]), **{
                       "the model": itself["mAP"], "CSRA": csra["mAP"], "Δ": csra["mAP"] - itself["mAP"],
                       "Δ 95% CI": _ci(d), "Δ lo": d.lo if d else math.nan, "Δ hi": d.hi if d else math.nan,
                       "Δ verdict": d.verdict if d else "", "λ (val)": csra["lam"], "heads (val)": csra["heads"]})
        for method in BASELINE_METHODS:
            row[method] = by.loc[method, "mAP"] if method in by.index else math.nan
        best = max((row[m] for m in BASELINE_METHODS if not math.isnan(row[m])), default=math.nan)
        row.update({"best pool": entry.get("best pool", ""), "CSRA − best pool": row["CSRA"] - best,
                    "CSRA − best pool 95% CI": _ci(pool), "pool lo": pool.lo if pool else math.nan,
                    "pool hi": pool.hi if pool else math.nan, "pool verdict": pool.verdict if pool else "",
                    "location mean": row["the model"] + mean.delta if mean else math.nan,
                    "location mean − the model 95% CI": _ci(mean)})
        rows.append(row)
    return pd.DataFrame(rows)


def _counts(verdicts) -> Tuple[int, int, int]:
    v = list(verdicts)
    return v.count("win"), v.count("tie"), v.count("loss")


def _setting(row) -> str:
    size = "448 px" if row["img_size"] == BAND_SIZE else "own size"
    return f"{row['dataset']} {size} {row['space']}"


def summary(head) -> str:
    """Plain-words bullets computed from the headline table: per dataset, size and space CSRA's gain over the
    model and against the best pooling baseline, wins / ties / losses by the paired bootstrap interval; then
    the approximate head and the multi-label head."""
    lines = []
    sized = head.assign(size_kind=head["img_size"].map(lambda v: "448 px" if v == BAND_SIZE else "own size"))
    for (dataset, size_kind), group in sized.groupby(["dataset", "size_kind"], sort=False):
        for space, g in group.groupby("space", sort=False):
            gain, tie, loss = _counts(g["Δ verdict"])
            lams = ", ".join(f"{v:g}" for v in sorted(set(g["λ (val)"])))
            text = (f"* {dataset}, {size_kind}, {space} space: CSRA − the model {g['Δ'].min():+.2f} to "
                    f"{g['Δ'].max():+.2f} mAP (λ chosen on val: {lams}); by the 95 % interval it gains for {gain}, "
                    f"ties for {tie} and loses for {loss} of {len(g)} models")
            pooled = g[g["pool verdict"] != ""]
            if len(pooled):
                w, t, lo = _counts(pooled["pool verdict"])
                margin = pooled["CSRA − best pool"]
                text += (f"; against the best pooling baseline it wins {w}, ties {t} and loses {lo} of {len(pooled)} "
                         f"({margin.min():+.2f} to {margin.max():+.2f})")
            without = g.loc[g["pool verdict"] == "", "model"].tolist()
            if without:
                text += f" (no pooling baseline applies to {', '.join(without)})"
            lines.append(text + ".")
    return "\n".join(lines) + "\n"


def approximate_summary(head, approx) -> str:
    """Plain words on the non-exact models: what the approximation costs and whether the rule helps them."""
    lines = []
    for model, g in head[head["exact"] == False].groupby("model", sort=False):  # noqa: E712
        a = approx[approx["model"] == model]
        gain, tie, loss = _counts(g["Δ verdict"])
        gains = [_setting(r) for _, r in g.iterrows() if r["Δ verdict"] == "win"]
        losses = [_setting(r) for _, r in g.iterrows() if r["Δ verdict"] == "loss"]
        far = a.loc[a["delta"].abs().idxmax()]
        below, above = int((a["delta_hi"] < 0).sum()), int((a["delta_lo"] > 0).sum())
        lines.append(
            f"* **{model}** (`exact=False`: layers after its pool, so its per-location logits approximate the "
            f"head). λ = 0 is still exactly the model (its `the model` column). What the approximation costs: the "
            f"model rebuilt from its per-location logits (their mean over locations, in prob space its softmax; "
            f"for a pool→linear head exactly the model) is {a['delta'].min():+.2f} to {a['delta'].max():+.2f} "
            f"mAP from the model (interval below 0 in {below}, above 0 in {above} of {len(a)} settings; farthest "
            f"{_setting(far)}: {far['location_mean']:.2f} vs {far['the_model']:.2f}), and its per-class ranking "
            f"agrees with the model's at Spearman {a['spearman_mean'].min():.2f} to {a['spearman_mean'].max():.2f} "
            f"(mean over classes; worst class {a['spearman_min'].min():.2f}); every setting in "
            f"`approximate_heads.csv`. Does the rule help this head? By the interval it gains in {gain} of {len(g)} "
            f"settings" + (f" ({', '.join(gains)})" if gains else "") + f", ties in {tie} and loses in {loss}"
            + (f" ({', '.join(losses)})" if losses else "") + ".")
    return "\n".join(lines) + ("\n" if lines else "")


def multilabel_summary(head) -> str:
    """Plain words on the paper's own setting (the multi-label head)."""
    g = head[head["dataset"] == ML_LABEL]
    if g.empty:
        return ""
    parts = [f"{r['model']} {r['the model']:.2f} → {r['CSRA']:.2f} ({r['Δ']:+.2f} {r['Δ 95% CI']}, "
             f"λ {r['λ (val)']:g}, {int(r['heads (val)'])} head(s); vs {r['best pool']} "
             f"{r['CSRA − best pool']:+.2f} {r['CSRA − best pool 95% CI']})" for _, r in g.iterrows()]
    gain, tie, loss = _counts(g["Δ verdict"])
    w, t, lo = _counts(g.loc[g["pool verdict"] != "", "pool verdict"])
    return (f"* **The paper's setting** ({ML_LABEL}: trained multi-label with average pooling, logit space, all "
            f"20 classes): {'; '.join(parts)}. CSRA gains for {gain}, ties for {tie} and loses for {loss} of "
            f"{len(g)} models over the model itself, and against the best pooling baseline wins {w}, ties {t}, "
            f"loses {lo}.\n")


# ---------------------------------------------------------------- the λ plots
def lambda_plot(table, path: Path, suite: str, title: str, img_size: int = BAND_SIZE) -> None:
    """mAP (test half) against λ per model (rows) and space (columns) on one dataset at ``img_size``, one
    curve per head set, the baselines as horizontal lines, the val-chosen λ marked; the y-limits hold every
    line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part_all = table[table["error"].isna() & (table["suite"] == suite) & (table["split"] == "test")
                     & (table["img_size"] == img_size)]
    models = list(dict.fromkeys(part_all["model"]))
    spaces = [s for s in ("logit", "prob") if s in set(part_all["space"])]
    if not models:
        return
    fig, axes = plt.subplots(len(models), len(spaces), figsize=(5.5 * len(spaces), 3.3 * len(models)), dpi=120,
                             squeeze=False)
    styles = {"model": ("black", "-"), "max-pool": ("tab:red", "--"), "avgmax-pool": ("tab:purple", "-."),
              "test-time-pool": ("tab:brown", ":")}
    for r, model in enumerate(models):
        for c, space in enumerate(spaces):
            ax = axes[r][c]
            part = part_all[(part_all["model"] == model) & (part_all["space"] == space)]
            csra = part[part["method"] == "csra"]
            shown = []
            for heads, curve in csra.groupby("heads", sort=True):
                curve = curve[curve["lam"] <= BAND_MAX_LAM].sort_values("lam")
                ax.plot(curve["lam"], curve["mAP"], marker=".", lw=1.5, label=f"CSRA, {heads} head(s)")
                shown += curve["mAP"].tolist()
            chosen = csra[csra["selected"].fillna(False).astype(bool)]
            if len(chosen) and float(chosen["lam"].iloc[0]) <= BAND_MAX_LAM:
                ax.plot(chosen["lam"], chosen["mAP"], "k*", ms=12, label="λ, heads chosen on val")
                shown += chosen["mAP"].tolist()
            for method, (colour, dash) in styles.items():
                row = part[(part["method"] == method) & part["mAP"].notna()]
                if len(row):
                    value = float(row["mAP"].iloc[0])
                    ax.axhline(value, color=colour, ls=dash, lw=1.2,
                               label="the model (λ = 0)" if method == "model" else method)
                    shown.append(value)
            if shown:  # axhline does not widen the y-limits: hold every line, with a margin
                lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
                pad = max(0.08 * (hi - lo), 0.25)
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(f"{model}, {space} space, {title} at {img_size} px", fontsize=10)
            ax.set_xlabel("λ", fontsize=10)
            ax.set_ylabel("test-half mAP (%)", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:  # one legend entry per line kind, from every panel (a baseline may be absent in one)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=4, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- the published text
COLUMNS = ["model", "dataset", "img_size", "preprocessing", "space", "n_test", "the model", "CSRA", "Δ", "Δ 95% CI",
           "λ (val)", "heads (val)", *BASELINE_METHODS, "CSRA − best pool", "CSRA − best pool 95% CI"]


def describe(table, head, approx, resamples: int, seed: int) -> str:
    """The published block: what the datasets and columns are, the computed summary, the table, the plots."""
    from posthoc_csra.tables import to_markdown

    formats = {c: ".2f" for c in ("the model", "CSRA", *BASELINE_METHODS)}
    formats.update({"Δ": "+.2f", "CSRA − best pool": "+.2f"})
    counted = table[table["error"].isna() & (table["method"] == "model") & (table["split"] != "all")]
    n = {s: f"{int(g.groupby(['model', 'img_size', 'space'])['n_images'].sum().iloc[0]):,}"
         for s, g in counted.groupby("suite")}
    return (
        f"Produced by `python benchmarks/published.py` (statistics cache: re-runs make no backbone pass); all rows "
        f"in `benchmarks/results/published.csv.gz`; the table below with numeric intervals in `headline.csv`, Δ "
        f"against λ with its interval in `lambda_bands.csv`, per-class AP in `per_class.csv`, the approximate "
        f"head in `approximate_heads.csv`.\n\n"
        f"Test-half mAP (%) of every method at the setting chosen on the disjoint validation half. Datasets from "
        f"`../shared`: **voc2007**, the {n.get('voc2007')} real VOC2007 trainval images with the official "
        f"classification labels (difficult entries ignored; ImageNet classes pooled into the 19 VOC classes the "
        f"WordNet map covers — `person` has no ImageNet class), evaluated the paper's way: the whole image resized "
        f"to img_size, no centre crop; **coco**, {n.get('coco')} real MS-COCO 2017 val images with their "
        f"image-level labels, the same way, ImageNet classes pooled into the COCO classes the map covers (`person`, "
        f"positive in every image, is ranked by no mAP); **natural**, {n.get('natural')} ImageNet-val images with "
        f"ReaL labels (timm's centre crop); **mosaic 2×2**, {n.get('mosaic 2×2')} mosaics of them composed at "
        f"img_size; **{ML_LABEL}**, the paper's own setting: for each model a 20-class linear head trained "
        f"multi-label (per-class logistic loss) on the frozen, globally average-pooled 448 px features of part 1/2 "
        f"of the VOC images (`benchmarks/fit_multilabel_head.py`), evaluated on the disjoint part 2/2 "
        f"({n.get(ML_LABEL)} images, halved into val and test) with no class map, all 20 classes. Its rows are "
        f"logit space only: that is where the paper's λ applies, while a softmax across independently trained "
        f"sigmoid outputs means nothing; the sigmoid is monotone per class, so the logit mAP of the model and of "
        f"the pooling baselines is also their sigmoid-probability mAP. `the model`: the model itself (λ = 0: "
        f"exactly its output, for every head); `CSRA`: λ from `{LAMS}` and heads from {{{HEADS}}}; `max-pool`, "
        f"`avgmax-pool`, `test-time-pool`: timm's training-free pooling from the same backbone pass (test-time "
        f"pooling is the model itself at the native size; none applies to a head with layers after the pool, such "
        f"as MobileNetV3's); `CSRA − best pool`: CSRA minus the best of the three. `space` says whether logits or "
        f"softmax probabilities are ranked. **Intervals**: paired bootstrap 95 % percentile intervals over the test "
        f"images ({resamples:,} resamples, seed {seed}; both methods on the same resampled images; per resample, "
        f"mAP over the classes with a positive and a negative in it); CSRA gains / wins when the interval lies "
        f"above 0, loses when it lies below, and ties otherwise.\n\n"
        + summary(head) + approximate_summary(head, approx) + multilabel_summary(head) + "\n"
        + to_markdown(head, columns=COLUMNS, formats=formats)
        + "\n![mAP against λ on VOC2007 at 448 px](benchmarks/results/voc_lambda.png)\n"
        + "\n![mAP against λ on COCO 2017 at 448 px](benchmarks/results/coco_lambda.png)\n")


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", help="the shared assets folder (default: posthoc_csra.paths.shared_dir())")
    parser.add_argument("--cache-dir", help="statistics cache (default: the per-user cache; with --quick: OUT/cache)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--mosaics", type=int, default=None, help="number of 2×2 mosaics (default 508; --quick 16)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--models", default=None, help="comma-separated manifest entries (default: all)")
    parser.add_argument("--fixture-dir", type=Path, default=None,
                        help="where the multi-label head is fitted (default: fit_multilabel_head's; --quick: OUT)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_MODELS} on a subset of each dataset; never touches README")
    parser.add_argument("--quick-images", type=int, default=48, help="images per dataset with --quick")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args = parser.parse_args(argv)
    if args.resamples < 1000 and not args.quick:
        parser.error("published intervals use at least 1,000 resamples")

    import pandas as pd

    from posthoc_csra.bench import run_bench
    from posthoc_csra.options import EvalOptions, LoadOptions
    from posthoc_csra.paths import shared_dir
    from posthoc_csra.tables import write_table, write_text

    started = time.perf_counter()
    shared = Path(args.shared).expanduser().resolve() if args.shared else shared_dir()
    if shared is None:
        sys.exit("no shared assets: set POSTHOC_CSRA_SHARED or pass --shared")
    out = (args.out or RESULTS).expanduser().resolve()
    if args.quick and out == RESULTS.resolve():
        sys.exit("--quick writes smoke results: pass --out DIR (not benchmarks/results)")
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir or (out / "cache" if args.quick else None)
    fixture_dir = args.fixture_dir or (out / "multilabel-fixture" if args.quick else None)
    mosaics = args.mosaics or (16 if args.quick else 508)
    loading = LoadOptions(workers=args.workers, mosaic_count=mosaics)
    suite_list = suites(shared, args, fixture_dir)

    tables, evaluations = [], {}
    for suite in suite_list:
        evaluation = EvalOptions(lams=LAMS, heads=HEADS, spaces=suite.spaces, select_on="val")
        evaluations[suite.label] = evaluation
        t = run_bench(list(suite.models) if suite.models else None, [suite.spec], evaluation, loading,
                      img_sizes=list(suite.sizes), source=suite.source, cache_dir=cache_dir)
        tables.append(t.assign(suite=suite.label))
    table = pd.concat(tables, ignore_index=True)
    intervals = bootstrap_all(table, suite_list, evaluations, loading, cache_dir, args.resamples, args.seed)

    published = table.drop(columns="suite")
    for path in {str(shared), str(shared.resolve())}:
        published["dataset_spec"] = published["dataset_spec"].str.replace(path, "../shared", regex=False)
    write_table(published, out / "published.csv.gz")
    for suite in suite_list:
        if suite.plot:
            lambda_plot(table, out / suite.plot, suite.label, "VOC2007" if suite.label == "voc2007" else "COCO 2017")
    head = headline(table, intervals)

    def in_table_order(rows: list, columns: Optional[list] = None):
        frame = pd.DataFrame(rows, columns=None if columns is None else ["_order", *columns])
        return frame.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)

    approx = in_table_order(intervals.approx) if intervals.approx else pd.DataFrame()
    write_table(head, out / "headline.csv")
    write_table(in_table_order(intervals.bands, ["model", "dataset", "img_size", "space", "heads", "lam", "mAP",
                                                 "delta", "delta_lo", "delta_hi"]), out / "lambda_bands.csv")
    write_table(in_table_order(intervals.per_class, ["model", "dataset", "img_size", "space", "class", "ap_model",
                                                     "ap_csra", "delta"]), out / "per_class.csv")
    write_table(approx, out / "approximate_heads.csv")

    errors = table[table["error"].notna()]
    body = describe(table, head, approx, args.resamples, args.seed)
    if len(errors):
        body += "\nErrors:\n\n" + "\n".join(f"* {r.model} {r.dataset}: {r.error}" for r in errors.itertuples()) + "\n"
    write_text(out / "published.md", "# Published results\n\n" + body.replace("](benchmarks/results/", "]("))
    print(body)
    if not args.no_readme and not args.quick and out == RESULTS.resolve():
        text = README.read_text(encoding="utf-8")
        if MARK_START in text and MARK_END in text:
            start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
            write_text(README, text[:start] + "\n" + body + text[end:])
    print(f"published.py: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 1 if len(errors) == len(table) else 0


if __name__ == "__main__":
    sys.exit(main())
