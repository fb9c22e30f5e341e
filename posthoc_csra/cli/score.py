"""``posthoc-csra score IMAGE_DIR``: the command line of ``folder.score_folder``."""
from __future__ import annotations

import click

from ..options import ScoreTableOptions
from ..tables import check_table_path, describe_formats
from .options import (OptionGroup, card_option, checked, device_options, heads_text, loader_options, progress_option,
                      refuse_with_card, scorer_options, topk_option)


def terminal_view(table) -> str:
    """Image, top-k columns with short labels (the first synonym) and errors, for reading in a terminal."""
    columns = [c for c in table.columns if c in ("image", "error") or c.startswith("top")]
    view = table[columns].copy()
    for column in columns:
        if column.startswith("top") and not column.endswith("_score"):
            view[column] = view[column].str.split(",").str[0].fillna("")
    if view["error"].isna().all():
        view = view.drop(columns="error")
    else:
        view["error"] = view["error"].fillna("")
    return view.to_string(index=False, na_rep="", float_format="{:.4f}".format)


def _table(topk, output, all_scores) -> ScoreTableOptions:
    return ScoreTableOptions(topk=topk, all_scores=all_scores, output=output)  # --strict: the exit status, below


#: → ``table``: ``options.ScoreTableOptions`` (what score writes).
score_table_options = OptionGroup("table", (
    topk_option(5, "Top classes per image (at most the model's class count)."),
    click.option("--output", "-o", type=click.Path(dir_okay=False), callback=checked(check_table_path),
                 help=f"Write all rows to FILE: {describe_formats()} (by extension). Every row records the "
                      "model, weights, img_size, preprocessing (full frame or crop), space, λ and temperatures "
                      "(Parquet: also in the file's metadata)."),
    click.option("--all-scores", is_flag=True, help="One column per class, named by class label, in class order "
                                                     "(scores in --space units: prob scores can exceed 1)."),
), _table)


@click.command("score")
@click.argument("image_dir", type=click.Path())
@card_option
@scorer_options
@device_options
@loader_options
@score_table_options
@click.option("--strict", is_flag=True, help="Exit non-zero if any file could not be scored.")
@progress_option
def command(image_dir, card, model, weights, rule, img_size, full_frame, device, loader, table, strict, no_progress):
    """Score every image under IMAGE_DIR (recursive; every format Pillow reads).

    Each photo is fed to the model full frame by default — the whole image resized to the input
    size, as the benchmark evaluates VOC2007 and as the default rule (--space prob --lam 0.1
    --heads 4) was chosen — so objects near the borders count. --center-crop gives timm's own eval
    crop. For photos of several objects add --img-size 448 (README, Defaults).

    Bad files (truncated, empty, not an image, too large, unreadable) never stop the run: each
    gets a row with an `error` column. Exit status is 0 when at least one image was scored.

    \b
    Examples:
      posthoc-csra score ../shared/data/photos --img-size 448
      posthoc-csra score photos/ --space prob --lam 0.3 --heads 4 -o scores.parquet
      posthoc-csra score photos/ --center-crop       # timm's eval crop (one object per photo)
      posthoc-csra score photos/ -m resnet50 --checkpoint resnet50.safetensors --all-scores -o s.csv
      posthoc-csra score photos/ --card cards/tf_efficientnet_lite0__voc2007@trainval.json -o s.csv
    """
    from ..folder import score_folder
    from ..options import LoadOptions, ModelSource, RuleOptions

    refuse_with_card(card)
    compile_backbone = loader.pop("compile")
    result = score_folder(image_dir, model, RuleOptions(**rule), source=ModelSource(**weights),
                          loading=LoadOptions(**loader, progress=not no_progress),
                          runtime=dict(**device, compile=compile_backbone), img_size=img_size, full_frame=full_frame,
                          card=card, table_options=table)
    output = table.output
    if output is None:
        click.echo(terminal_view(result.table))
    settings = result.settings
    click.echo(f"scored {result.n_scored} image(s), {result.n_failed} failed" + (f"; wrote {output}" if output else "")
               + f" [{settings['model']} ({settings['weights']}) at {settings['img_size']} px, "
                 f"{settings['preprocessing']}, {settings['space']} space, λ={settings['lam']:g}, heads "
                 f"{heads_text(result.temperatures)}"
               + (f", {settings['method']} from card {card}" if card else "") + "]", err=True)
    if strict and result.n_failed:
        raise click.ClickException(f"--strict: {result.n_failed} file(s) could not be scored (see the error column)")
