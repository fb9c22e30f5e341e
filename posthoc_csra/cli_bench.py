"""``posthoc-csra bench``: the command line of ``bench.run_bench`` (torch-free until it runs)."""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Sequence

import click

from .cli import _report_errors, main
from .spec import AMP_CHOICES

TABLE_FORMATS = (".csv", ".parquet", ".json", ".md")
MARKDOWN_COLUMNS = ["model", "dataset", "img_size", "split", "n_images", "space", "heads", "lam", "selected",
                    "mAP", "delta", "CF1", "OF1", "error"]


def to_markdown(table, columns: Sequence[str] = MARKDOWN_COLUMNS) -> str:
    """A GitHub Markdown table (mAP, delta, CF1, OF1 to 2 decimals; empty error column dropped)."""
    import pandas as pd

    columns = [c for c in columns if c in table and not (c == "error" and table[c].isna().all())]

    def cell(column, value):
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        if column in ("mAP", "delta", "CF1", "OF1"):
            return f"{value:+.2f}" if column == "delta" else f"{value:.2f}"
        if column == "lam":
            return f"{value:g}"
        return re.sub(r"\s+", " ", str(value)).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _img_size(ctx, param, values):
    sizes = []
    for value in values:
        for item in (v.strip() for v in value.split(",") if v.strip()):
            if item.lower() == "default":
                sizes.append(None)
            elif item.isdigit() and int(item) > 0:
                sizes.append(int(item))
            else:
                raise click.BadParameter(f"{item!r}: a positive integer or 'default'")
    return list(dict.fromkeys(sizes)) or None


def _parsed(parser):
    def callback(ctx, param, value):
        try:
            return parser(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return callback


def _lams(value):
    from .bench import parse_lams
    return parse_lams(value)


def _heads(value):
    from .bench import parse_heads
    return parse_heads(value)


def _spaces(value):
    from .bench import parse_spaces
    return parse_spaces(value)


@main.command("bench")
@click.option("--models", "-m", "models", multiple=True, metavar="NAMES",
              help="Model names, wildcards (fnmatch over timm.list_models(), or over the manifest's entries "
                   "with a manifest --checkpoint) or @FILE (one name per line); comma-separated, repeatable. "
                   "Default with a manifest --checkpoint: all its entries.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=True),
              help="A weights file (.safetensors / state dict) or a weights manifest.json (or its folder).")
@click.option("--random-weights", is_flag=True, help="Random weights, seeded (for testing only).")
@click.option("--dataset", "-d", "datasets", multiple=True, required=True, metavar="SPEC",
              help="imagenet-real:DIR, mosaic:SPEC, voc2007:DIR, coco2014:DIR, csv:FILE; repeatable.")
@click.option("--lam", "lams", default="0:1:0.1", show_default=True, callback=_parsed(_lams),
              help="λ list: numbers and start:stop:step ranges (stop included), e.g. 0,0.1,0.3 or 0:1:0.1. "
                   "λ=0 (the model itself) is always added as the baseline.")
@click.option("--heads", default="1", show_default=True, callback=_parsed(_heads),
              help="Paper head sets to evaluate, e.g. 1,4,8.")
@click.option("--space", "spaces", default="logit,prob", show_default=True, callback=_parsed(_spaces),
              help="Score spaces to evaluate: logit, prob or both.")
@click.option("--img-size", "img_sizes", multiple=True, callback=_img_size, metavar="N|default",
              help="Input size; repeatable (e.g. --img-size default --img-size 448). Part of the cache key.")
@click.option("--select-on", type=click.Choice(["val"]),
              help="Choose λ on a validation half and report it on the disjoint test half "
                   "(rows split=val/test, the chosen λ has selected=True).")
@click.option("--val-fraction", type=float, default=0.5, show_default=True, help="Validation share (--select-on).")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the val/test split.")
@click.option("--pool", type=click.Choice(["max", "sum"]), default="max", show_default=True,
              help="Prob-space pooling of ImageNet classes into VOC/COCO classes (logit space: always max).")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="CF1/OF1: predict when sigmoid(score) >= t (logit space) or score >= t (prob space).")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the table: .csv, .parquet or .json (plus a Markdown .md beside it), or .md only.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Write the Markdown table here instead.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Statistics cache folder (default: $POSTHOC_CSRA_CACHE or ~/.cache/posthoc-csra).")
@click.option("--chunk-size", type=int, default=128, show_default=True, help="Images per cache chunk (for a new cache).")
@click.option("--dataset-seed", type=int, default=0, show_default=True, help="Seed of mosaic datasets.")
@click.option("--mosaic-count", type=int, help="Number of mosaics (default: as many as the images allow).")
@click.option("--batch-size", "-b", type=int, default=32, show_default=True)
@click.option("--workers", "-j", type=int, default=2, show_default=True, help="DataLoader workers.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1...")
@click.option("--amp", type=click.Choice(AMP_CHOICES), default="none", show_default=True,
              help="Autocast dtype (GPU); part of the cache key.")
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--compile", is_flag=True, help="torch.compile the backbone.")
@click.option("--ray", is_flag=True, help="Fan models out to Ray workers (needs `pip install ray`).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_report_errors
def bench(models, checkpoint, random_weights, datasets, lams, heads, spaces, img_sizes, select_on, val_fraction,
          split_seed, pool, threshold, output, markdown, cache_dir, chunk_size, dataset_seed, mosaic_count,
          batch_size, workers, device, amp, channels_last, compile, ray, no_progress):
    """Benchmark models × datasets × λ × head sets × spaces; print and save a tidy mAP table.

    One backbone pass per model, weights, dataset and preprocessing is cached in --cache-dir; any
    other λ, head set or space is then evaluated from the cache, without the model.

    \b
    Examples:
      posthoc-csra bench -m tf_efficientnet_lite0 --checkpoint ../shared/weights/manifest.json \\
          -d imagenet-real:../shared/data/imagenet-val-real/images --lam 0,0.1,0.3 --space logit,prob
      posthoc-csra bench --checkpoint ../shared/weights -d voc2007:VOCdevkit --heads 1,4,8 \\
          --lam 0:1:0.1 --select-on val -o voc.parquet
    """
    from .bench import run_bench
    from .scoring import write_table

    if ray and importlib.util.find_spec("ray") is None:
        raise click.ClickException("--ray needs Ray, which is not installed: pip install 'posthoc-csra[ray]' "
                                   "(or run without --ray)")
    if random_weights and checkpoint:
        raise click.UsageError("pass either --checkpoint or --random-weights, not both")
    out = Path(output) if output else None
    if out is not None and out.suffix.lower() not in TABLE_FORMATS:
        raise click.BadParameter(f"{out}: unknown format {out.suffix!r}; use one of {', '.join(TABLE_FORMATS)}",
                                 param_hint="--output")
    table = run_bench(list(models), list(datasets), lams=lams, heads=heads, spaces=spaces, img_sizes=img_sizes,
                      checkpoint=checkpoint, pretrained=False if random_weights else None, select_on=select_on,
                      val_fraction=val_fraction, split_seed=split_seed, cache_dir=cache_dir, device=device,
                      batch_size=batch_size, workers=workers, amp=amp, channels_last=channels_last,
                      compile=compile, pool=pool, threshold=threshold, chunk_size=chunk_size,
                      dataset_seed=dataset_seed, mosaic_count=mosaic_count, progress=not no_progress, ray=ray)
    text = to_markdown(table)
    click.echo(text, nl=False)
    written = []
    if out is not None and out.suffix.lower() != ".md":
        write_table(table, out)
        written.append(str(out))
    md_path = Path(markdown) if markdown else (out.with_suffix(".md") if out is not None else None)
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(text, encoding="utf-8")
        written.append(str(md_path))
    n_errors = int(table["error"].notna().sum())
    click.echo(f"{len(table)} row(s), {n_errors} error row(s); backbone pass over "
               f"{table.attrs.get('backbone_images', 0)} image(s) (the rest came from the statistics cache)"
               + (f"; wrote {', '.join(written)}" if written else ""), err=True)
    if n_errors and n_errors == len(table):
        raise click.ClickException(f"every model/dataset failed; first error: {table['error'].iloc[0]}")
