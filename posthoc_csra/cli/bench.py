"""``posthoc-csra bench``: the command line of ``bench.run_bench`` (torch-free until it runs)."""
from __future__ import annotations

from pathlib import Path

import click

from ..methods import METHODS
from ..bench import parse_methods
from ..choices import DEFAULT_HEADS
from ..datasets import DATASETS
from ..errors import InputError
from ..evaluation import COLUMN_HELP, TOPK
from ..executors import EXECUTORS
from ..parsing import parse_heads, parse_img_sizes, parse_lams, parse_spaces
from ..tables import TABLE_FORMATS, check_table_path, describe_formats, table_format, with_format
from .options import HEADS_HELP, HEADS_METAVAR, OptionError, OptionGroup, checked, device_options, loader_options, \
    progress_option, weights_options

#: --output formats: a data table (a Markdown .md is written beside it) or Markdown only.
OUTPUT_FORMATS = TABLE_FORMATS + (".md",)
#: The Markdown view of the benchmark table: which columns, and how numbers are written.
MARKDOWN_COLUMNS = ["model", "dataset", "img_size", "preprocessing", "split", "n_images", "method", "space", "heads",
                    "temperatures", "lam", "selected", "mAP", "delta", f"CF1@top{TOPK}", f"OF1@top{TOPK}", "CF1@t",
                    "OF1@t", "error"]
MARKDOWN_FORMATS = {"mAP": ".2f", "delta": "+.2f", f"CF1@top{TOPK}": ".2f", f"OF1@top{TOPK}": ".2f", "CF1@t": ".2f",
                    "OF1@t": ".2f", "lam": "g"}


def _columns_epilog(width: int = 78) -> str:
    """What every table column means, from ``evaluation.COLUMN_HELP`` (the one list)."""
    import textwrap

    lines = ["\b", "Table columns (mAP, delta and F1 figures are percentages):"]
    for column, meaning in COLUMN_HELP.items():
        lines += textwrap.wrap(meaning, width, initial_indent=f"  {column:<14} ", subsequent_indent=" " * 17)
    return "\n".join(lines)


def markdown_table(table) -> str:
    """The benchmark table as GitHub Markdown (``MARKDOWN_COLUMNS``; an empty error column is dropped)."""
    from ..tables import to_markdown

    return to_markdown(table, MARKDOWN_COLUMNS, MARKDOWN_FORMATS)


def passes_summary(table) -> str:
    """What the run computed: images through a backbone, passes read from the statistics cache, passes that
    failed (a failed pass came from neither)."""
    keys = ["model", "img_size", "dataset"]
    passes = table.drop_duplicates(keys)
    failed = int(passes["error"].notna().sum()) if "error" in passes else 0
    cached = int(passes["cached"].fillna(False).astype(bool).sum()) if "cached" in passes else 0
    text = f"backbone pass over {table.attrs.get('backbone_images', 0)} image(s)"
    text += f", {cached} of {len(passes)} pass(es) from the statistics cache"
    return text + (f", {failed} failed (see the error column)" if failed else "")


def _output_path(path):
    return check_table_path(path, OUTPUT_FORMATS)


#: → ``sweep``: what is evaluated (run_bench's lams, heads, spaces, img_sizes).
sweep_options = OptionGroup("sweep", (
    click.option("--lam", "lams", default="0:1:0.1", show_default=True, callback=checked(parse_lams),
                 help="λ list, each ≥ 0: numbers and start:stop:step ranges (stop included), e.g. 0,0.1,0.3 or "
                      "0:1:0.1. λ=0 (the model itself) is always added as the baseline."),
    click.option("--heads", default=str(DEFAULT_HEADS), show_default=True, callback=checked(parse_heads),
                 metavar=HEADS_METAVAR + ",..",
                 help="Head sets to evaluate, comma-separated, e.g. 1,4,8,T1 (default: score's --heads). Each as "
                      "score's --heads: " + HEADS_HELP + " (the cache holds T = 1..7 and inf; other heads are stored "
                      "besides, under a cache key of their own). "
                      "The table's heads column is the number of heads, its temperatures column which ones."),
    click.option("--space", "spaces", default="logit,prob", show_default=True, callback=checked(parse_spaces),
                 help="Score spaces to evaluate: logit, prob or both."),
    click.option("--img-size", "img_sizes", multiple=True, callback=checked(parse_img_sizes), metavar="N|default",
                 help="Input size (32..4096, or 'default': the model's own); repeatable or comma-separated "
                      "(e.g. --img-size default,448). Part of the cache key."),
))

#: → ``evaluation``: how rows are split and scored (run_bench's select_on, val_fraction, split_seed, pool, threshold).
evaluation_options = OptionGroup("evaluation", (
    click.option("--select-on", type=click.Choice(["val"]),
                 help="Choose λ on a validation half and report it on the disjoint test half "
                      "(rows split=val/test, the chosen λ has selected=True)."),
    click.option("--val-fraction", type=float, default=0.5, show_default=True, help="Validation share (--select-on)."),
    click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the val/test split."),
    click.option("--pool", type=click.Choice(["max", "sum"]), default="max", show_default=True,
                 help="Prob-space pooling of ImageNet classes into VOC/COCO classes (logit space: always max)."),
))

#: → ``data``: the statistics cache and how mosaic datasets are built (run_bench's cache_dir, chunk_size,
#: dataset_seed, mosaic_count).
data_options = OptionGroup("data", (
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Statistics cache folder (default: $POSTHOC_CSRA_CACHE or ~/.cache/posthoc-csra)."),
    click.option("--chunk-size", type=int, default=128, show_default=True,
                 help="Images per cache chunk (for a new cache)."),
    click.option("--dataset-seed", type=int, default=0, show_default=True, help="Seed of mosaic datasets."),
    click.option("--mosaic-count", type=int, help="Number of mosaics (default: as many as the images allow)."),
))


def _cards(save_cards, card_methods) -> dict:
    return dict(directory=save_cards, methods=card_methods)


#: → ``cards``: where ``bench --select-on val`` writes one scorer card per (model, dataset) (``cards.py``).
card_options = OptionGroup("cards", (
    click.option("--save-cards", type=click.Path(file_okay=False), metavar="DIR",
                 help="With --select-on val: write one scorer card per (model, dataset) into DIR: the choice "
                      "(method, space, heads, λ, img size) with the best val mAP, its val and test mAP, the "
                      "weights identity and preprocessing; use it with `score --card` and `export --card`."),
    click.option("--card-methods", default=",".join(METHODS), show_default=True, callback=checked(parse_methods),
                 help="The methods a card may choose from, e.g. csra to keep the best CSRA choice even where a "
                      "pooling baseline or the model itself scores higher on val."),
), _cards)


def _executor(executor, ray, **options):
    from ..executors import make_executor

    if ray and executor != "ray" and click.get_current_context().get_parameter_source("executor") \
            != click.core.ParameterSource.DEFAULT:
        raise OptionError(f"--ray is short for --executor ray; it contradicts --executor {executor}")
    try:
        return make_executor("ray" if ray else executor, **options)
    except InputError as err:
        raise OptionError(str(err)) from None


#: → ``executor``: the ``executors.Executor`` that runs the chunk tasks, from the registry ``executors.EXECUTORS``
#: (each executor's options are its own: given with another executor they are refused).
executor_options = OptionGroup("executor", (
    click.option("--executor", type=click.Choice(list(EXECUTORS)), default="local", show_default=True,
                 help="Where the cache chunks are computed: " + "; ".join(
                     f"{kind.name}: {kind.summary}" for kind in EXECUTORS.values()) + "."),
    click.option("--ray", is_flag=True, help="Short for --executor ray."),
    click.option("--ray-address", metavar="ADDR|auto",
                 help="Ray cluster to join (auto: the running one). Default: start a local Ray instance."),
    click.option("--gpus-per-task", type=float, help="GPUs per Ray task (with --device cuda). Default: 0."),
    click.option("--cpus-per-task", type=float,
                 help="CPUs per Ray task; a task starts up to N-1 DataLoader workers (at most --workers). Default: 1."),
    click.option("--pool-workers", type=click.IntRange(min=1),
                 help="Processes or threads of --executor process-pool / thread-pool. Default: 2."),
), _executor)


#: → ``table_files``: dict(output, markdown): where the table is written.
table_options = OptionGroup("table_files", (
    click.option("--output", "-o", type=click.Path(dir_okay=False), callback=checked(_output_path),
                 help=f"Write the table: {describe_formats()} (plus a Markdown .md beside it), or .md only."),
    click.option("--markdown", type=click.Path(dir_okay=False), help="Write the Markdown table here instead."),
))


@click.command("bench", epilog=_columns_epilog())
@click.option("--models", "-m", "models", multiple=True, metavar="NAMES",
              help="Model names, wildcards (fnmatch over timm.list_models(), or over the manifest's entries "
                   "with a manifest --checkpoint) or @FILE (one name per line); comma-separated, repeatable. "
                   "Default with a manifest --checkpoint: all its entries.")
@weights_options
@click.option("--dataset", "-d", "datasets", multiple=True, required=True, metavar="SPEC",
              help=", ".join(kind.syntax for kind in DATASETS.values()) + "; repeatable. VOC and COCO are "
                   "evaluated the paper's way: the whole image resized to the input size, no centre crop.")
@sweep_options
@evaluation_options
@table_options
@card_options
@data_options
@device_options
@loader_options
@executor_options
@progress_option
def command(models, weights, datasets, sweep, evaluation, table_files, cards, data, device, loader, executor,
            no_progress):
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
    from ..bench import run_bench
    from ..options import EvalOptions, LoadOptions, ModelSource
    from ..runtime import Runtime
    from ..tables import write_table, write_text

    if cards["directory"] is not None and evaluation["select_on"] != "val":
        raise OptionError("--save-cards keeps a choice made on validation images: add --select-on val")
    options = EvalOptions(lams=sweep["lams"], heads=sweep["heads"], spaces=sweep["spaces"], **evaluation)
    loading = LoadOptions(batch_size=loader["batch_size"], workers=loader["workers"], chunk_size=data["chunk_size"],
                          dataset_seed=data["dataset_seed"], mosaic_count=data["mosaic_count"],
                          progress=not no_progress)
    runtime = Runtime(**device, compile=loader["compile"])
    with executor:
        table = run_bench(list(models), list(datasets), options, loading, runtime, img_sizes=sweep["img_sizes"],
                          source=ModelSource(**weights), cache_dir=data["cache_dir"], executor=executor)
    output, markdown = table_files["output"], table_files["markdown"]
    text = markdown_table(table)
    click.echo(text, nl=False)
    written = []
    if output is not None and table_format(output, OUTPUT_FORMATS) != ".md":
        written.append(str(write_table(table, output)))
    md_path = Path(markdown) if markdown else None
    if md_path is None and output is not None:
        md_path = with_format(output, ".md", OUTPUT_FORMATS)  # t.csv.gz → t.md
    if md_path is not None:
        written.append(str(write_text(md_path, text)))
    n_errors = int(table["error"].notna().sum())
    click.echo(f"{len(table)} row(s), {n_errors} error row(s); {passes_summary(table)}"
               + (f"; wrote {', '.join(written)}" if written else ""), err=True)
    if n_errors and n_errors == len(table):
        raise click.ClickException(f"every model/dataset failed; first error: {table['error'].iloc[0]}")
    if cards["directory"] is not None:
        from ..bench import cards_from_table
        from ..cards import write_cards

        made = cards_from_table(table, ModelSource(**weights), loading, cards["methods"])
        for path, card in zip(write_cards(made, cards["directory"]), made):
            click.echo(f"wrote card {path}: {card.describe()}", err=True)
