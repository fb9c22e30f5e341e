"""``posthoc-csra explain IMAGE``: per-class score maps over one image (torch is imported inside the command)."""
from __future__ import annotations

import click

from .cli import _report_errors, main, model_options, rule_options, runtime_options


def _table(result) -> str:
    """One line per class: rank, short name, base and CSRA scores, peak location in image pixels."""
    width = max(len("class"), *(len(n) for n in result.short_names))
    lines = [f"{'rank':>4}  {'class':<{width}}  {'base':>8}  {'CSRA':>8}  peak (x, y)"]
    digits = 2 if result.space == "logit" else 4
    for i, name in enumerate(result.short_names):
        x, y = result.peak(i)
        lines.append(f"{i + 1:>4}  {name:<{width}}  {result.base[i]:>8.{digits}f}  {result.csra[i]:>8.{digits}f}"
                     f"  ({x:.0f}, {y:.0f})")
    return "\n".join(lines)


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@model_options
@rule_options
@runtime_options
@click.option("--classes", "-c", "class_names", multiple=True, metavar="NAME",
              help="Explain this class (any synonym of its label, case-insensitive; repeat for several). "
                   "Default: the top-k classes by CSRA score.")
@click.option("--topk", "-k", type=int, default=3, show_default=True, help="How many top classes to show.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Figure file (.png, .jpg, .pdf, .svg). Default: <image stem>_csra.png in the current directory.")
@_report_errors
def explain(image, model, checkpoint, random_weights, lam, heads, temperatures, space, img_size, batch_size,
            workers, device, amp, channels_last, compile, class_names, topk, output):
    """Draw where each class score comes from: per-location score maps over IMAGE.

    For the top-k classes (or --classes), a PNG overlays the per-location scores s (in --space)
    on the region of IMAGE the model sees (its own resize / center-crop), with the base and CSRA
    scores in each title; heads with a finite temperature T add a row of attention weights
    softmax(T·s). --batch-size, --workers and --compile do not apply to one image.

    \b
    Examples:
      posthoc-csra explain ../shared/data/photos/pets.jpg --space prob -k 5
      posthoc-csra explain photo.jpg -c "Boston bull" -c "Italian greyhound" --heads 2 -o maps.png
    """
    from .explain import explain_image
    from .images import ImageLoadError

    try:
        result = explain_image(
            image, model=model, checkpoint=checkpoint, pretrained=False if random_weights else None,
            classes=list(class_names) or None, topk=topk, lam=lam, heads=temperatures or int(heads), space=space,
            img_size=img_size, device=device, output=output, amp=amp, channels_last=channels_last)
    except ImageLoadError as err:
        raise click.ClickException(str(err)) from err
    click.echo(_table(result))
    left, top, right, bottom = result.crop_box
    click.echo(f"{result.grid[0]}×{result.grid[1]} locations over the crop ({left:.0f}, {top:.0f})–"
               f"({right:.0f}, {bottom:.0f}) of the {result.image_size[0]}×{result.image_size[1]} image "
               f"[{space} space, λ={lam:g}]; wrote {result.output}", err=True)
