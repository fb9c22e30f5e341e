"""The published results: every real model in ../shared/weights on the real ImageNet-ReaL images.

    python benchmarks/published.py            # writes benchmarks/results/published.{csv,md}, updates README

Natural images at each model's default size, and 2×2 mosaics of them at the default size and at
448 px, both score spaces, heads {1, 4, 8}; λ (and the head set) chosen on the validation half, mAP reported on the
disjoint test half (mosaic halves share no tile image). The statistics cache makes re-runs cheap.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
MARK_START, MARK_END = "<!-- published:start -->", "<!-- published:end -->"
LAMS = "0:1:0.05,1.5,2,3,5"
HEADS = "1,4,8"


def headline(table):
    """Per model × dataset × size × space: test mAP at λ=0 and at the λ / head set chosen on val."""
    import pandas as pd

    ok = table[table["error"].isna()]
    test, val = ok[ok["split"] == "test"], ok[ok["split"] == "val"]
    keys = ["model", "dataset", "img_size", "space"]
    rows = []
    for key, group in val.groupby(keys, sort=False):
        best = group.sort_values(["mAP", "lam"], ascending=[False, True]).iloc[0]  # ties → smaller λ
        t = test.set_index(keys + ["heads", "lam"])
        chosen = t.loc[(*key, best["heads"], best["lam"])]
        baseline = t.loc[(*key, best["heads"], 0.0)]
        rows.append(dict(zip(keys, key), n_test=int(chosen["n_images"]), **{
            "mAP λ=0": round(float(baseline["mAP"]), 2), "mAP CSRA": round(float(chosen["mAP"]), 2),
            "Δ": round(float(chosen["mAP"] - baseline["mAP"]), 2), "λ (val)": best["lam"],
            "heads (val)": best["heads"]}))
    out = pd.DataFrame(rows)
    out["dataset"] = out["dataset"].map(lambda s: "mosaic 2×2" if s.startswith("mosaic") else "natural")
    return out


def markdown(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(f"{v:+.2f}" if c == "Δ" else f"{v:g}" if isinstance(v, float) else str(v)
                                       for c, v in zip(cols, row)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", help="the shared assets folder (default: posthoc_csra.config.shared_dir())")
    parser.add_argument("--cache-dir", help="statistics cache (default: the per-user cache)")
    parser.add_argument("--mosaics", type=int, default=508, help="number of 2×2 mosaics")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args = parser.parse_args(argv)

    import pandas as pd

    from posthoc_csra.bench import EvalOptions, LoadOptions, ModelSource, run_bench
    from posthoc_csra.config import shared_dir
    from posthoc_csra.tables import write_table

    shared = Path(args.shared) if args.shared else shared_dir()
    if shared is None:
        sys.exit("no shared assets: set POSTHOC_CSRA_SHARED or pass --shared")
    images = shared / "data" / "imagenet-val-real" / "images"
    natural = f"imagenet-real:{images}"
    evaluation = EvalOptions(lams=LAMS, heads=HEADS, spaces="logit,prob", select_on="val")
    common = dict(source=ModelSource(checkpoint=shared / "weights" / "manifest.json"), cache_dir=args.cache_dir)
    # natural images at each model's own size; mosaics also at 448 px (each tile then near the models' scale)
    table = pd.concat([run_bench(None, [natural], evaluation, LoadOptions(workers=args.workers), img_sizes=[None],
                                 **common),
                       run_bench(None, [f"mosaic:{natural}"], evaluation,
                                 LoadOptions(workers=args.workers, mosaic_count=args.mosaics), img_sizes=[None, 448],
                                 **common)], ignore_index=True)
    table["dataset"] = table["dataset"].str.replace(str(shared), "../shared", regex=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_table(table, RESULTS / "published.csv")
    errors = table[table["error"].notna()]
    head = headline(table)
    command = "python benchmarks/published.py"
    body = (f"Produced by `{command}` (statistics cache: re-runs make no backbone pass).\n\n"
            f"Test-half mAP (%) on ImageNet-ReaL images from `../shared` (natural: the images with ReaL labels; "
            f"mosaic 2×2: {args.mosaics} mosaics of them composed at the evaluation size, no centre crop; "
            f"img_size: the model's own, and 448 for mosaics). "
            f"λ from `{LAMS}` and heads from {{{HEADS}}} chosen on the disjoint validation half; "
            f"`space` says whether logits or softmax probabilities are ranked.\n\n" + markdown(head) + "\n")
    if len(errors):
        body += "\nErrors:\n\n" + "\n".join(f"* {r.model} {r.dataset}: {r.error}" for r in errors.itertuples()) + "\n"
    (RESULTS / "published.md").write_text("# Published results\n\n" + body)
    print(body)
    if not args.no_readme:
        text = README.read_text()
        if MARK_START in text and MARK_END in text:
            start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
            README.write_text(text[:start] + "\n" + body + text[end:])
    return 1 if len(errors) == len(table) else 0


if __name__ == "__main__":
    sys.exit(main())
