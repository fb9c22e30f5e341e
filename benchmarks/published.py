"""The published results: every real model in ../shared/weights on the real images in ../shared.

    python benchmarks/published.py     # writes benchmarks/results/published.{csv,md}, voc_lambda.png, updates README

* PASCAL VOC2007 (2,000 trainval images, official classification labels; ImageNet classes pooled into VOC
  classes through the shipped WordNet map), the paper's protocol: the whole image resized to S×S, no
  centre crop, at each model's own size and at 448 px;
* ImageNet-ReaL natural images at each model's own size (timm's centre crop);
* 2×2 mosaics of them at the model's own size and at 448 px (full frame).

Both score spaces, heads {1, 4, 8}, every method (the model, CSRA, timm's max / avgmax / test-time
pooling); each method's setting (for CSRA λ and heads) chosen on the validation half, mAP reported on
the disjoint test half (mosaic halves share no tile image). The statistics cache makes re-runs cheap.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
MARK_START, MARK_END = "<!-- published:start -->", "<!-- published:end -->"
LAMS = "0:1:0.05,1.5,2,3,5"
HEADS = "1,4,8"
BASELINE_METHODS = ("max-pool", "avgmax-pool", "test-time-pool")
PLOT = "voc_lambda.png"


def _kind(dataset: str) -> str:
    return dataset.split("@")[0].split("(")[0].replace("mosaic2x2", "mosaic 2×2").replace("imagenet-real", "natural")


def headline(table):
    """Per model × dataset × size × space: test mAP of every method at its own val choice."""
    import pandas as pd

    ok = table[table["error"].isna() & (table["split"] == "test") & table["selected"].fillna(False).astype(bool)]
    keys = ["model", "dataset", "img_size", "preprocessing", "space"]
    rows = []
    for key, group in ok.groupby(keys, sort=False):
        by = group.set_index("method")
        itself, csra = by.loc["model"], by.loc["csra"]
        row = dict(zip(keys, key), n_test=int(itself["n_images"]), **{
            "the model": itself["mAP"], "CSRA": csra["mAP"], "Δ": csra["mAP"] - itself["mAP"],
            "λ (val)": csra["lam"], "heads (val)": csra["heads"]})
        for method in BASELINE_METHODS:
            row[method] = by.loc[method, "mAP"] if method in by.index else math.nan
        best_baseline = max((row[m] for m in BASELINE_METHODS if not math.isnan(row[m])), default=math.nan)
        row["CSRA − best pool"] = row["CSRA"] - best_baseline
        rows.append(row)
    out = pd.DataFrame(rows)
    out["dataset"] = out["dataset"].map(_kind)
    return out


def summary(head) -> str:
    """Plain-words bullets computed from the headline table: CSRA's gain over the model, and how it compares
    with the best pooling baseline (win / tie within ±0.25 / lose), per dataset, size and space."""
    lines = []
    for (dataset, size_kind), group in head.assign(
            size_kind=lambda d: d["img_size"].map(lambda v: "448 px" if v == 448 else "own size")).groupby(
            ["dataset", "size_kind"], sort=False):
        for space, g in group.groupby("space", sort=False):
            margin = g["CSRA − best pool"].dropna()
            wins, ties = int((margin > 0.25).sum()), int((margin.abs() <= 0.25).sum())
            lines.append(f"* {dataset}, {size_kind}, {space} space: CSRA {g['Δ'].min():+.2f} to {g['Δ'].max():+.2f} "
                         f"mAP over the model (λ chosen on val: {', '.join(f'{v:g}' for v in sorted(set(g['λ (val)'])))}); "
                         f"against the best pooling baseline it wins {wins}, ties {ties} (±0.25) and loses "
                         f"{len(margin) - wins - ties} of {len(margin)} models ({margin.min():+.2f} to {margin.max():+.2f}).")
    return "\n".join(lines) + "\n"


def lambda_plot(table, path: Path, img_size: int = 448) -> None:
    """mAP (test half) against λ per model (rows) and space (columns) on VOC at ``img_size``, one curve per
    head set, the baselines as horizontal lines, the val-chosen λ marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    voc = table[table["error"].isna() & table["dataset"].str.startswith("voc2007") & (table["split"] == "test")
                & (table["img_size"] == img_size)]
    models, spaces = list(dict.fromkeys(voc["model"])), ["logit", "prob"]
    fig, axes = plt.subplots(len(models), len(spaces), figsize=(11, 3.3 * len(models)), dpi=120, squeeze=False)
    styles = {"model": ("black", "-"), "max-pool": ("tab:red", "--"), "avgmax-pool": ("tab:purple", "-."),
              "test-time-pool": ("tab:brown", ":")}
    for r, model in enumerate(models):
        for c, space in enumerate(spaces):
            ax = axes[r][c]
            part = voc[(voc["model"] == model) & (voc["space"] == space)]
            csra = part[part["method"] == "csra"]
            for heads, curve in csra.groupby("heads", sort=True):
                curve = curve.sort_values("lam")
                curve = curve[curve["lam"] <= 1.0]
                ax.plot(curve["lam"], curve["mAP"], marker=".", lw=1.5, label=f"CSRA, {heads} head(s)")
            chosen = csra[csra["selected"].fillna(False).astype(bool)]
            if len(chosen) and float(chosen["lam"].iloc[0]) <= 1.0:
                ax.plot(chosen["lam"], chosen["mAP"], "k*", ms=12, label="λ, heads chosen on val")
            for method, (colour, dash) in styles.items():
                row = part[part["method"] == method]
                if len(row):
                    ax.axhline(float(row["mAP"].iloc[0]), color=colour, ls=dash, lw=1.2,
                               label="the model (λ = 0)" if method == "model" else method)
            ax.set_title(f"{model}, {space} space, VOC2007 at {img_size} px", fontsize=11)
            ax.set_xlabel("λ", fontsize=10)
            ax.set_ylabel("test-half mAP (%)", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1))
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", help="the shared assets folder (default: posthoc_csra.paths.shared_dir())")
    parser.add_argument("--cache-dir", help="statistics cache (default: the per-user cache)")
    parser.add_argument("--mosaics", type=int, default=508, help="number of 2×2 mosaics")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args = parser.parse_args(argv)

    import pandas as pd

    from posthoc_csra.bench import EvalOptions, LoadOptions, ModelSource, run_bench
    from posthoc_csra.paths import shared_dir
    from posthoc_csra.tables import to_markdown, write_table

    shared = Path(args.shared) if args.shared else shared_dir()
    if shared is None:
        sys.exit("no shared assets: set POSTHOC_CSRA_SHARED or pass --shared")
    natural = f"imagenet-real:{shared / 'data' / 'imagenet-val-real' / 'images'}"
    voc = f"voc2007:{shared / 'data' / 'voc2007'}@trainval"
    evaluation = EvalOptions(lams=LAMS, heads=HEADS, spaces="logit,prob", select_on="val")
    common = dict(source=ModelSource(checkpoint=shared / "weights" / "manifest.json"), cache_dir=args.cache_dir)
    loading = LoadOptions(workers=args.workers, mosaic_count=args.mosaics)
    # VOC the paper's way (full frame) at the models' own size and 448; natural images at the own size;
    # mosaics at the own size and 448 (each tile then near the models' scale)
    table = pd.concat([run_bench(None, [voc], evaluation, loading, img_sizes=[None, 448], **common),
                       run_bench(None, [natural], evaluation, loading, img_sizes=[None], **common),
                       run_bench(None, [f"mosaic:{natural}"], evaluation, loading, img_sizes=[None, 448], **common)],
                      ignore_index=True)
    table["dataset_spec"] = table["dataset_spec"].str.replace(str(shared), "../shared", regex=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_table(table, RESULTS / "published.csv")
    lambda_plot(table, RESULTS / PLOT)
    errors = table[table["error"].notna()]
    head = headline(table)
    formats = {c: ".2f" for c in ("the model", "CSRA", *BASELINE_METHODS)}
    formats.update({"Δ": "+.2f", "CSRA − best pool": "+.2f"})
    body = (f"Produced by `python benchmarks/published.py` (statistics cache: re-runs make no backbone pass); "
            f"all rows in `benchmarks/results/published.csv`.\n\n"
            f"Test-half mAP (%) of every method at the setting chosen on the disjoint validation half. Datasets "
            f"from `../shared`: **voc2007**, the 2,000 real VOC2007 trainval images with the official "
            f"classification labels (difficult entries ignored; ImageNet classes pooled into the 19 VOC classes "
            f"the WordNet map covers — `person` has no ImageNet class), evaluated the paper's way: the whole "
            f"image resized to img_size, no centre crop; **natural**, the ImageNet-val images with ReaL labels "
            f"(timm's centre crop); **mosaic 2×2**, {args.mosaics} mosaics of them composed at img_size. "
            f"`the model`: the model itself (λ = 0); `CSRA`: λ from `{LAMS}` and heads from {{{HEADS}}}; "
            f"`max-pool`, `avgmax-pool`, `test-time-pool`: timm's training-free pooling from the same backbone "
            f"pass (test-time pooling is the model itself at the native size); `CSRA − best pool`: CSRA minus "
            f"the best of the three. `space` says whether logits or softmax probabilities are ranked.\n\n"
            + summary(head) + "\n" + to_markdown(head, formats=formats)
            + f"\n![mAP against λ on VOC2007 at 448 px](benchmarks/results/{PLOT})\n")
    if len(errors):
        body += "\nErrors:\n\n" + "\n".join(f"* {r.model} {r.dataset}: {r.error}" for r in errors.itertuples()) + "\n"
    (RESULTS / "published.md").write_text("# Published results\n\n" + body.replace("](benchmarks/results/", "]("))
    print(body)
    if not args.no_readme:
        text = README.read_text()
        if MARK_START in text and MARK_END in text:
            start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
            README.write_text(text[:start] + "\n" + body + text[end:])
    return 1 if len(errors) == len(table) else 0


if __name__ == "__main__":
    sys.exit(main())
