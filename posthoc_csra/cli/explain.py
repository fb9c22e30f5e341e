"""``posthoc-csra explain IMAGE``: per-class score maps over one image (``explain.explain_image`` + ``render``)."""
from __future__ import annotations

import click

from ..spaces import get_space
from .options import (checked, device_options, heads_text, scorer_options, topk_option)


def score_table(result) -> str:
    """One line per class: rank, short name, base and CSRA scores, peak location in image pixels."""
    width = max(len("class"), *(len(n) for n in result.short_names))
    lines = [f"{'rank':>4}  {'class':<{width}}  {'base':>8}  {'CSRA':>8}  peak (x, y)"]
    digits = get_space(result.space).digits
    for i, name in enumerate(result.short_names):
        x, y = result.peak(i)
        lines.append(f"{i + 1:>4}  {name:<{width}}  {result.base[i]:>8.{digits}f}  {result.csra[i]:>8.{digits}f}"
                     f"  ({x:.0f}, {y:.0f})")
    return "\n".join(lines)


def _figure_path(path):
    from ..explain import check_figure_path

    return check_figure_path(path)


@click.command("explain")
@click.argument("image", type=click.Path(dir_okay=False))
@scorer_options
@device_options
@click.option("--classes", "-c", "class_names", multiple=True, metavar="NAME",
              help="Explain this class (any synonym of its label, case-insensitive; repeat for several). "
                   "Default: the top-k classes by CSRA score.")
@topk_option(3, "How many top classes to show (at most the model's class count).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), callback=checked(_figure_path),
              help="Figure file (.png, .jpg, .pdf, .svg). Default: <image stem>_csra.png in the current directory.")
def command(image, model, weights, rule, img_size, full_frame, device, class_names, topk, output):
    """Draw where each class score comes from: per-location score maps over IMAGE.

    For the top-k classes (or --classes), a figure overlays the per-location scores s (in --space)
    on the region of IMAGE the model sees — the whole photo (full frame, the default, as `score`)
    or timm's centre crop (--center-crop) — with the base and CSRA scores in each title and the
    input size and preprocessing in the figure's title; heads with a finite temperature T add a row
    of attention weights softmax(T·s).

    \b
    Examples:
      posthoc-csra explain ../shared/data/photos/kite_and_cold.jpg --img-size 448 -k 5
      posthoc-csra explain ../shared/data/photos/pets.jpg --space prob -k 5
      posthoc-csra explain photo.jpg -c "Boston bull" -c "Italian greyhound" --heads 2 -o maps.png
    """
    from ..explain import default_figure_path, explain_image, render
    from ..options import ModelSource, RuleOptions

    output = output or default_figure_path(image)
    result = explain_image(image, model, RuleOptions(**rule), source=ModelSource(**weights), runtime=device,
                           img_size=img_size, full_frame=full_frame, classes=list(class_names) or None, topk=topk)
    written = render(result, output)
    click.echo(score_table(result))
    left, top, right, bottom = result.crop_box
    width, height = result.image_size
    whole = max(abs(a - b) for a, b in zip(result.crop_box, (0, 0, width, height))) < 0.5
    region = (f"the whole {width}×{height} image" if whole else
              f"the crop ({left:.0f}, {top:.0f})–({right:.0f}, {bottom:.0f}) of the {width}×{height} image")
    click.echo(f"{result.grid[0]}×{result.grid[1]} locations over {region} [{result.preprocessing}, {result.space} "
               f"space, λ={result.lam:g}, heads {heads_text(result.temperatures)}]; wrote {written}", err=True)
