"""Scorer cards: the choice ``bench --select-on val`` made, kept as one small JSON file per (model, dataset).

A card holds what is needed to rebuild the chosen scorer and to know where it came from:
the model and the identity of its weights, the preprocessing (img size, crop or full frame,
crop_pct...), the method ("csra", "model" = λ 0, or a baseline such as "max-pool"), the score
space, the heads' temperatures (a list, ``math.inf`` written as ``"inf"``: ``[1]`` is T = 1 alone, the official
CSRA code's one head, ``["inf"]`` this library's ``heads=1``), λ, and the val and test mAP it
was chosen with, on which dataset (short name + fingerprint), with which timm.

    cards = bench.cards_from_table(table)            # the selected rows of a bench table (bench.py)
    write_cards(cards, "cards/")
    scorer = CSRAScorer.from_card("cards/x.json", model)  # refuses a model with other weights
    prepared = prepare.prepare_scorer(card="cards/x.json")  # or: load the card's model too (prepare.py)
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from .methods import METHODS
from .errors import InputError, MissingInputError
from .attention import parse_head
from .choices import SPACES, describe_temperatures, preprocessing_mode, resolve_heads

if TYPE_CHECKING:  # torch stays out of import time
    from torch import nn

CARD_FORMAT = "posthoc-csra scorer card"
#: Bumped when a field changes meaning; a card of another version is refused with the reason.
CARD_VERSION = 1

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Weights:
    """The weights a card was made with: a label for people and an identity that is compared."""

    label: str
    identity: str


@dataclass(frozen=True)
class Preprocessing:
    """timm's eval data config the rule was chosen with (``full_frame``: no centre crop of the dataset)."""

    img_size: int
    full_frame: bool
    crop_pct: float
    crop_mode: str
    interpolation: str
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @classmethod
    def from_data_config(cls, config: dict, full_frame: bool) -> "Preprocessing":
        return cls(img_size=int(config["input_size"][-1]), full_frame=bool(full_frame),
                   crop_pct=float(config["crop_pct"]), crop_mode=str(config.get("crop_mode", "center")),
                   interpolation=str(config["interpolation"]), mean=tuple(float(v) for v in config["mean"]),
                   std=tuple(float(v) for v in config["std"]))

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        """The inverse of ``to_dict`` (a card's or an exported program's ``preprocessing``)."""
        return cls(img_size=int(data["img_size"]), full_frame=bool(data["full_frame"]),
                   crop_pct=float(data["crop_pct"]), crop_mode=str(data["crop_mode"]),
                   interpolation=str(data["interpolation"]), mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]))

    def to_dict(self) -> dict:
        return {"img_size": self.img_size, "full_frame": self.full_frame, "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode, "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std)}

    @property
    def mode(self) -> str:
        """``"full frame"`` or ``"crop 0.875 (center)"``, as bench's ``preprocessing`` column writes it."""
        return preprocessing_mode(self.full_frame, self.crop_pct, self.crop_mode)

    def describe(self) -> str:
        """``"448 px, full frame"``: for closing lines and figure titles."""
        return f"{self.img_size} px, {self.mode}"

    def data_config(self) -> dict:
        return {"input_size": (3, self.img_size, self.img_size), "interpolation": self.interpolation,
                "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    def transform(self):
        """The eval transform: PIL image → (3, img_size, img_size) tensor."""
        from timm.data import create_transform

        return create_transform(**self.data_config(), is_training=False)


@dataclass(frozen=True)
class Rule:
    """The chosen rule. ``pool``: how ImageNet classes were pooled into the dataset's classes (None: no map)."""

    method: str
    space: str
    temperatures: Tuple[float, ...]
    lam: float
    pool: Optional[str] = None


@dataclass(frozen=True)
class Choice:
    """What the rule was chosen on (val) and reported on (test), mAP in percent."""

    dataset: str
    fingerprint: str
    val_mAP: float
    test_mAP: Optional[float]
    n_val: Optional[int] = None
    n_test: Optional[int] = None


@dataclass(frozen=True)
class ScorerCard:
    model: str
    num_classes: int
    weights: Weights
    preprocessing: Preprocessing
    rule: Rule
    chosen_with: Choice
    timm: str
    version: int = CARD_VERSION

    @property
    def lam(self) -> float:
        """The λ the scorer uses: the card's for a method that takes the rule (csra), else 0 (the model, a
        pooling baseline)."""
        return self.rule.lam if self._takes_rule else 0.0

    @property
    def _takes_rule(self) -> bool:
        method = METHODS.get(self.rule.method)
        return method is not None and method.takes_rule

    def file_name(self) -> str:
        """``{model}__{dataset}.json`` with each run of characters other than ``A-Za-z0-9._@-`` replaced by one
        ``_`` (none at the end: ``subset12(voc2007@trainval)`` → ``subset12_voc2007@trainval``)."""
        return re.sub(r"[^A-Za-z0-9._@-]+", "_", f"{self.model}__{self.chosen_with.dataset}").rstrip("_") + ".json"

    def describe(self) -> str:
        rule = (f"{self.rule.method}, λ={self.lam:g}, {describe_temperatures(self.rule.temperatures)}"
                if self._takes_rule else self.rule.method)
        test = "" if self.chosen_with.test_mAP is None else f", test mAP {self.chosen_with.test_mAP:.2f}"
        return (f"{self.model} ({self.weights.label}) at {self.preprocessing.describe()}: {rule}, {self.rule.space} "
                f"space; chosen on {self.chosen_with.dataset} val mAP {self.chosen_with.val_mAP:.2f}{test}")


# ---------------------------------------------------------------- JSON
def _card_temperatures(heads) -> tuple:
    """A card's "heads": the list of heads it writes (``[1.0, "inf"]``, ``AttentionHead.card_value``), or, written
    by hand, a head set in ``choices.HEADS_SYNTAX`` (``4``, ``"T1"``); every spelling is read by ``choices``."""
    return resolve_heads(tuple(heads) if isinstance(heads, list) else heads)


def _number(value) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def card_to_dict(card: ScorerCard) -> dict:
    p, r, c = card.preprocessing, card.rule, card.chosen_with
    return {
        "format": CARD_FORMAT, "version": card.version,
        "model": card.model, "num_classes": card.num_classes,
        "weights": {"label": card.weights.label, "identity": card.weights.identity},
        "preprocessing": p.to_dict(),
        "method": r.method, "space": r.space, "heads": [parse_head(t).card_value for t in r.temperatures],
        "lam": r.lam, "pool": r.pool,
        "val_mAP": c.val_mAP, "test_mAP": _number(c.test_mAP), "n_val": c.n_val, "n_test": c.n_test,
        "dataset": {"name": c.dataset, "fingerprint": c.fingerprint},
        "timm": card.timm,
    }


def card_from_dict(data: dict, source: str = "card") -> ScorerCard:
    """The inverse of ``card_to_dict``; InputError naming ``source`` and the bad field otherwise."""
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        raise InputError(f"{source}: not a posthoc-csra scorer card (no \"format\": \"{CARD_FORMAT}\"); "
                         f"make cards with `posthoc-csra bench --select-on val --save-cards DIR`")
    if data.get("version") != CARD_VERSION:
        raise InputError(f"{source}: card format version {data.get('version')!r}, this posthoc-csra reads "
                         f"version {CARD_VERSION}; re-make the card with `bench --save-cards` of this version")
    try:
        p, ds = data["preprocessing"], data["dataset"]
        card = ScorerCard(
            model=str(data["model"]), num_classes=int(data["num_classes"]),
            weights=Weights(str(data["weights"]["label"]), str(data["weights"]["identity"])),
            preprocessing=Preprocessing.from_dict(p),
            rule=Rule(method=str(data["method"]), space=str(data["space"]),
                      temperatures=_card_temperatures(data["heads"]),
                      lam=float(data["lam"]), pool=data.get("pool")),
            chosen_with=Choice(dataset=str(ds["name"]), fingerprint=str(ds["fingerprint"]),
                               val_mAP=float(data["val_mAP"]), test_mAP=_number(data.get("test_mAP")),
                               n_val=data.get("n_val"), n_test=data.get("n_test")),
            timm=str(data["timm"]), version=int(data["version"]))
    except (KeyError, TypeError, ValueError) as err:  # InputError (a bad "heads") is a ValueError too
        raise InputError(f"{source}: malformed scorer card ({type(err).__name__}: {err}); "
                         f"re-make it with `posthoc-csra bench --select-on val --save-cards DIR`") from None
    if card.rule.method not in METHODS:
        raise InputError(f"{source}: unknown method {card.rule.method!r}; known: {', '.join(METHODS)}")
    if card.rule.space not in SPACES:
        raise InputError(f"{source}: unknown space {card.rule.space!r}; known: {', '.join(SPACES)}")
    return card


def write_card(card: ScorerCard, path: PathLike) -> Path:
    """Write one card as indented JSON (atomically); returns its path."""
    from .tables import write_text

    return write_text(path, json.dumps(card_to_dict(card), indent=1, allow_nan=False) + "\n")


def write_cards(cards: Sequence[ScorerCard], directory: PathLike) -> List[Path]:
    """One ``card.file_name()`` per card under ``directory``."""
    names = [card.file_name() for card in cards]
    if len(set(names)) != len(names):
        raise InputError(f"two cards would share a file name in {directory}: {names}")
    return [write_card(card, Path(directory) / name) for card, name in zip(cards, names)]


def read_card(path: PathLike) -> ScorerCard:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"--card {path}: no such file; make cards with "
                                f"`posthoc-csra bench --select-on val --save-cards DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--card {path}: not JSON ({err})") from None
    return card_from_dict(data, source=f"--card {path}")


def card_record(path: PathLike) -> Dict[str, str]:
    """``{"card": path, "card_sha256": sha256 of the file}``: how outputs record the card they used."""
    path = Path(path)
    return {"card": str(path), "card_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# ---------------------------------------------------------------- weights identity
def check_weights(card: ScorerCard, model: "nn.Module", source: str = "card") -> None:
    """InputError unless ``model`` holds the weights ``card`` was made with (``models.weights_of``)."""
    from .models import weights_of

    label, identity = weights_of(model)
    if identity != card.weights.identity:
        raise InputError(
            f"{source} was made with {card.model} weights {card.weights.label} (identity {card.weights.identity}), "
            f"but the model it is applied to holds {label} (identity {identity}). Fix: load {card.model} with the "
            f"weights the card names, {card.weights.label} (command line: --checkpoint FILE or the local weights "
            f"it was made with; library: load_model({card.model!r}, checkpoint=FILE)); the input size does not "
            f"matter, the card sets it. Or make a card for these weights: `posthoc-csra bench -m {card.model} "
            f"--select-on val --save-cards DIR ...` with them")


__all__ = ["CARD_FORMAT", "CARD_VERSION", "Weights", "Preprocessing", "Rule",
           "Choice", "ScorerCard", "card_to_dict", "card_from_dict", "write_card", "write_cards",
           "read_card", "card_record", "check_weights"]
