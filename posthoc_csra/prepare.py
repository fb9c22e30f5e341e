"""One way to prepare a model: (name, weights, size, rule or card, runtime) → (model, preprocessing, scorer).

Every entry point calls it — ``score`` (``folder.py``), ``explain``, ``export``, ``bench``'s chunk tasks
(``runner.py``) and the cards ``bench`` makes (``bench.py``) — so they load weights, build the model at the
asked size, choose the preprocessing (timm's centre crop or the full frame) and build the scorer the same
way. Random weights (``pretrained=False``) are always drawn with ``RANDOM_WEIGHTS_SEED``. Reading a scorer
card into a scorer is here too; choosing cards from a bench table is ``bench.py``'s.

Torch and timm are imported inside the functions (``--help`` stays instant).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Union

from .choices import DEFAULT_FULL_FRAME, DEFAULT_MODEL, MULTI_OBJECT_IMG_SIZE
from .errors import PosthocCsraError, is_out_of_memory

if TYPE_CHECKING:
    from .cards import Preprocessing, ScorerCard

#: The seed of random weights (``pretrained=False``), wherever a model is prepared: the same random model in
#: ``score``, ``explain``, ``export``, ``bench`` and its cards.
RANDOM_WEIGHTS_SEED = 0


class OutOfMemoryError(PosthocCsraError, MemoryError):
    """The backbone did not fit in memory at this input size and batch size; the message names the options."""


@contextlib.contextmanager
def memory_guard(img_size: Optional[int], batch_size: Optional[int] = None):
    """Turn an allocator failure inside the block into one ``OutOfMemoryError`` line naming ``--img-size``
    (None: the model's own) and ``--batch-size``; every other exception passes unchanged."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        size = f"--img-size {img_size}" if img_size else "the model's own input size"
        batch = f", --batch-size {batch_size}" if batch_size else ""
        raise OutOfMemoryError(f"out of memory running the model at {size}{batch}: pass a smaller --img-size "
                               f"(the model's own size, or {MULTI_OBJECT_IMG_SIZE} for multi-object photos)"
                               f"{' or a smaller --batch-size' if batch_size else ''}") from None


def data_transform(model, img_size: Optional[int] = None, full_frame: bool = False):
    """(transform, data config): timm's own eval preprocessing for the model, at ``img_size`` when given.

    ``full_frame``: the whole image resized to img_size × img_size (timm's ``crop_mode="squash"`` with
    ``crop_pct=1``), no centre crop — how the paper evaluates VOC and COCO, whose labels cover the whole frame.
    """
    from timm.data import create_transform, resolve_model_data_config

    config = resolve_model_data_config(model)
    if img_size is not None:
        config["input_size"] = (3, img_size, img_size)
    if full_frame:
        config.update(crop_pct=1.0, crop_mode="squash")
    return create_transform(**config, is_training=False), config


def make_runtime(runtime: Union["Runtime", Mapping, None]) -> "Runtime":  # noqa: F821
    """A ``runtime.Runtime``: as given, built from its fields (a dict: the CLI's device options, so torch is
    imported only after the inputs are checked), or the default (CPU)."""
    from .runtime import Runtime

    if runtime is None:
        return Runtime()
    return Runtime(**runtime) if isinstance(runtime, Mapping) else runtime


# ---------------------------------------------------------------- the model
@dataclass
class PreparedModel:
    """A loaded model with its two preprocessings: ``preprocessing[full_frame]`` = (transform, timm data config),
    ``False`` timm's centre crop, ``True`` the whole frame."""

    name: str
    net: "torch.nn.Module"  # noqa: F821
    preprocessing: dict
    weights_label: str
    weights_key: str
    scorers: dict = field(default_factory=dict)  # bench: (full_frame, runtime) → CSRAScorer, built on first use

    @property
    def img_size(self) -> int:
        return int(self.preprocessing[False][1]["input_size"][-1])


def prepare_model(name: str, img_size: Optional[int] = None, source: "ModelSource" = None) -> PreparedModel:  # noqa: F821
    """``name`` loaded with ``source``'s weights (``options.ModelSource``; random ones seeded with
    ``RANDOM_WEIGHTS_SEED``), built for ``img_size`` (None: its own), with both preprocessings."""
    import torch

    from .models import load_model, weights_of
    from .options import ModelSource

    source = source or ModelSource()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        net = load_model(name, checkpoint=source.checkpoint, pretrained=source.pretrained,
                         **({"img_size": img_size} if img_size else {}))
    preprocessing = {False: data_transform(net, img_size), True: data_transform(net, img_size, full_frame=True)}
    label, identity = weights_of(net)
    return PreparedModel(name, net, preprocessing, label, identity)


# ---------------------------------------------------------------- the scorer
@dataclass
class PreparedScorer:
    """What an entry point runs: the model, its scorer (on the runtime's device), and how images reach it."""

    model: str
    net: "torch.nn.Module"  # noqa: F821
    scorer: "CSRAScorer"  # noqa: F821
    preprocessing: "Preprocessing"
    transform: Callable
    runtime: "Runtime"  # noqa: F821
    card: Optional["ScorerCard"] = None

    @property
    def data_config(self) -> dict:
        """timm's data config of ``transform`` (input_size, crop_pct, crop_mode, interpolation, mean, std)."""
        return self.preprocessing.data_config()


def prepare_scorer(model: str = DEFAULT_MODEL, rule=None, *, source: "ModelSource" = None,  # noqa: F821
                   img_size: Optional[int] = None, full_frame: bool = DEFAULT_FULL_FRAME,
                   runtime: Union["Runtime", Mapping, None] = None,  # noqa: F821
                   card: Union["ScorerCard", str, Path, None] = None) -> PreparedScorer:
    """The scorer of ``rule`` (``options.RuleOptions`` or a card's ``cards.Rule``: λ, heads, space and
    method) on ``model`` at ``img_size`` (None: its own), fed full frame or centre-cropped — or, with
    ``card`` (a ``ScorerCard`` or its file), the card's model, size, preprocessing and rule on ``source``'s
    weights, refused when they are not the card's. On ``runtime``'s device (default CPU).

    An allocator failure while building becomes one ``OutOfMemoryError`` line naming ``--img-size``."""
    from .cards import Preprocessing, ScorerCard, read_card
    from .options import ModelSource, RuleOptions
    from .scorer import CSRAScorer

    source, runtime = source or ModelSource(), make_runtime(runtime)
    if card is not None:
        named = "card" if isinstance(card, ScorerCard) else f"--card {card}"
        card = card if isinstance(card, ScorerCard) else read_card(card)
        preprocessing = card.preprocessing
        with memory_guard(preprocessing.img_size):
            prepared = prepare_model(card.model, preprocessing.img_size, source)
            scorer = CSRAScorer.from_card(card, prepared.net, named)
        return PreparedScorer(card.model, prepared.net, runtime.prepare(scorer), preprocessing,
                              preprocessing.transform(), runtime, card)
    from .models import check_model_name

    rule = rule or RuleOptions()
    check_model_name(model)
    with memory_guard(img_size):
        prepared = prepare_model(model, img_size, source)
        transform, config = prepared.preprocessing[bool(full_frame)]
        scorer = CSRAScorer(prepared.net, lam=rule.lam, heads=rule.temperatures, space=rule.space,
                            input_size=config["input_size"], method=getattr(rule, "method", "csra"))
    return PreparedScorer(model, prepared.net, runtime.prepare(scorer),
                          Preprocessing.from_data_config(config, full_frame), transform, runtime)


__all__ = ["RANDOM_WEIGHTS_SEED", "OutOfMemoryError", "memory_guard", "data_transform", "make_runtime",
           "PreparedModel", "prepare_model", "PreparedScorer", "prepare_scorer"]
