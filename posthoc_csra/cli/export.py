"""``posthoc-csra export``: the command line of ``export.export_card`` / ``export.export_model``."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .options import (card_option, checked, heads_text, refuse_with_card, scorer_options)


def _program_path(value) -> Path:
    path = Path(value)
    if path.suffix != ".pt2":
        raise InputError(f"{path}: a torch.export program file must end in .pt2 (e.g. scorer.pt2)")
    return path


@click.command("export")
@card_option
@scorer_options
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), callback=checked(_program_path),
              help="The program file to write (.pt2).")
@click.option("--check-images", type=click.Path(exists=True), metavar="FILE|DIR",
              help="Real images to check the exported program on (a folder: its first 3). "
                   "Default: $POSTHOC_CSRA_SHARED/data/photos.")
@click.option("--onnx", type=click.Path(dir_okay=False), metavar="FILE.onnx",
              help="Also write an ONNX model of the same program (dynamic batch), checked with onnxruntime; "
                   "needs `pip install 'posthoc-csra[onnx]'`.")
def command(card, model, weights, rule, img_size, full_frame, output, check_images, onnx):
    """Export the whole scorer — backbone, per-location head and rule — as one torch.export program.

    The program takes (B, 3, S, S) images with any batch size B, preprocessed as its metadata's
    "preprocessing" records (img_size S, full frame or centre crop, interpolation, mean, std; the
    card's, else --img-size and --full-frame/--center-crop as `score`), and returns the (B, C) scores.
    Before the file is written it is loaded back with torch.export.load and its scores on real images
    are compared with the eager scorer's at batch 1 and 3; a mismatch is an error.

    \b
    Load it with:
      extra = {"posthoc_csra.json": ""}
      program = torch.export.load("scorer.pt2", extra_files=extra).module()
      meta = json.loads(extra["posthoc_csra.json"])     # preprocessing, classes, rule, weights...
      transform = posthoc_csra.cards.Preprocessing.from_dict(meta["preprocessing"]).transform()
      scores = program(torch.stack([transform(image) for image in images]))

    \b
    Examples:
      posthoc-csra export --card cards/tf_efficientnet_lite0__voc2007@trainval.json -o scorer.pt2
      posthoc-csra export -m tf_efficientnet_lite0 --img-size 448 -o scorer.pt2
      posthoc-csra export -m tf_efficientnet_lite0 --space prob --lam 0.3 --heads 4 -o scorer.pt2
    """
    from .. import export

    refuse_with_card(card)
    if card is not None:
        result = export.export_card(card, output, images=check_images, onnx=onnx, **weights)
    else:
        from ..cards import Rule
        from ..choices import resolve_heads

        chosen = Rule("csra", rule["space"], resolve_heads(rule["heads"]), rule["lam"])
        result = export.export_model(output, chosen, model, img_size=img_size, images=check_images, onnx=onnx,
                                     full_frame=full_frame, **weights)
    from ..cards import Preprocessing

    meta, check = result.metadata, result.check
    size_mb = result.path.stat().st_size / 2 ** 20
    rule = (f"csra λ={meta['lam']:g} heads {heads_text(meta['heads'])}"
            if meta["method"] == "csra" else meta["method"])
    click.echo(f"wrote {result.path} ({size_mb:.1f} MiB): {meta['model']} ({meta['weights']['label']}) at "
               f"{Preprocessing.from_dict(meta['preprocessing']).describe()}, {rule}, {meta['space']} space, any "
               f"batch size; checked against the eager scorer on {', '.join(check.images)} at batch "
               f"{' and '.join(map(str, check.batch_sizes))}: max |Δ| = {check.max_abs_diff:.2g} (≤ {check.atol:g})",
               err=True)
    if result.onnx is not None:
        click.echo(f"wrote {result.onnx}: the same scorer as ONNX; checked with onnxruntime: max |Δ| = "
                   f"{result.onnx_check.max_abs_diff:.2g} (≤ {result.onnx_check.atol:g})", err=True)
