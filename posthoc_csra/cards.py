"""Scorer cards: the choice ``bench --select-on val`` made, kept as one small JSON file per (model, dataset).

A card holds what is needed to rebuild the chosen scorer and to know where it came from:
the model and the identity of its weights, the preprocessing (img size, crop or full frame,
crop_pct...), the method ("csra", "model" = λ 0, or a baseline such as "max-pool"), the score
space, the heads' temperatures (a list, ``math.inf`` written as ``"inf"``: ``[1]`` is T = 1 alone, the official
CSRA code's one head, ``["inf"]`` this library's ``heads=1``), λ, and the val and test mAP it
was chosen with, on which dataset (short name + fingerprint), with which timm.

    cards = cards_from_table(table)                  # the selected rows of a bench table
    write_cards(cards, "cards/")
    scorer = scorer_from_card("cards/x.json", model) # refuses a model with other weights
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from .baselines import METHODS
from .errors import InputError, MissingInputError
from .attention import parse_head
from .choices import (HEAD_SETS, SPACES, describe_temperatures, parse_temperatures, preprocessing_mode,
                      resolve_temperatures)

if TYPE_CHECKING:  # torch stays out of import time
    from torch import nn

    from .options import LoadOptions, ModelSource
    from .scorer import CSRAScorer

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
        """The λ the scorer uses: the card's for method "csra", else 0 (the model, a pooling baseline)."""
        return self.rule.lam if self.rule.method == "csra" else 0.0

    def file_name(self) -> str:
        """``{model}__{dataset}.json`` with each run of characters other than ``A-Za-z0-9._@-`` replaced by one
        ``_`` (none at the end: ``subset12(voc2007@trainval)`` → ``subset12_voc2007@trainval``)."""
        return re.sub(r"[^A-Za-z0-9._@-]+", "_", f"{self.model}__{self.chosen_with.dataset}").rstrip("_") + ".json"

    def describe(self) -> str:
        rule = (f"{self.rule.method}, λ={self.lam:g}, {describe_temperatures(self.rule.temperatures)}"
                if self.rule.method == "csra" else self.rule.method)
        test = "" if self.chosen_with.test_mAP is None else f", test mAP {self.chosen_with.test_mAP:.2f}"
        return (f"{self.model} ({self.weights.label}) at {self.preprocessing.describe()}: {rule}, {self.rule.space} "
                f"space; chosen on {self.chosen_with.dataset} val mAP {self.chosen_with.val_mAP:.2f}{test}")


# ---------------------------------------------------------------- JSON
def _card_temperatures(heads) -> tuple:
    """A card's "heads": the list of heads it writes (``[1.0, "inf"]``, ``AttentionHead.card_value``), or, written
    by hand, a head set in ``choices.HEADS_SYNTAX`` (``4``, ``"T1"``); every spelling is read by ``choices``."""
    return resolve_temperatures(tuple(heads) if isinstance(heads, list) else heads)


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


# ---------------------------------------------------------------- card → scorer
def scorer_from_card(card: Union[ScorerCard, PathLike], model: "nn.Module") -> "CSRAScorer":
    """The ``CSRAScorer`` a card describes (its method, space, heads and λ) on ``model``, built for the card's
    input size; feed it images through ``card.preprocessing.transform()`` (the card's size, crop or full frame).

    The weights are checked by identity (``models.weights_of``), which ignores the size the model was built
    for: a CNN loaded with a plain ``load_model(name)`` runs a card made at 448 px. InputError for a model
    with other weights, or for a token model built for another size (the fix: ``load_model(name,
    img_size=<card's size>)``); UnsupportedModelError for a baseline that does not apply to the model."""
    from .heads import UnsupportedModelError, default_input_size
    from .scorer import CSRAScorer

    source = "card" if isinstance(card, ScorerCard) else f"--card {card}"
    card = card if isinstance(card, ScorerCard) else read_card(card)
    check_weights(card, model, source)
    size = card.preprocessing.img_size
    try:
        return CSRAScorer(model, lam=card.lam, heads=card.rule.temperatures, space=card.rule.space,
                          input_size=(3, size, size), method=card.rule.method)
    except UnsupportedModelError as err:
        built = default_input_size(model)[-2:]
        if tuple(built) == (size, size):
            raise
        raise InputError(f"{source} runs {card.model} at {size} px, but this model was built for "
                         f"{built[0]}×{built[1]} px inputs and cannot take {size} px ones ({err}). Fix: load it at "
                         f"the card's size, load_model({card.model!r}, img_size={size}, ...): the same weights, "
                         f"the same identity") from None


def load_card_scorer(card: Union[ScorerCard, PathLike], checkpoint=None, pretrained: Optional[bool] = None):
    """(model, scorer) for a card: the model loaded once, built for the card's size (as ``bench`` builds it;
    random weights with bench's seed), then checked against the card's weights identity."""
    from .runner import prepare_model

    card = card if isinstance(card, ScorerCard) else read_card(card)
    prepared = prepare_model(card.model, card.preprocessing.img_size, checkpoint, pretrained)
    return prepared.net, scorer_from_card(card, prepared.net)


# ---------------------------------------------------------------- bench table → cards
def _temperatures(row: dict) -> Tuple[float, ...]:
    """A table row's head set: its ``temperatures`` cell ("1,2,4,inf", read by ``choices``), else (a table from
    before that column) its heads cell (a paper head count, also as 4.0 after a CSV round trip, or temperatures
    "1,inf"); missing (method model or a baseline) → H=1."""
    if not _is_missing(row.get("temperatures")):
        return parse_temperatures(str(row["temperatures"]))
    heads = row.get("heads")
    if _is_missing(heads):
        return HEAD_SETS[1]
    text = str(heads)
    try:
        count = float(text)
    except ValueError:
        return parse_temperatures(text)
    return HEAD_SETS[int(count)] if count in HEAD_SETS else resolve_temperatures((count,))


def parse_methods(text: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``"model,csra"`` (or a list) → the methods a card may keep, each one of ``METHODS``."""
    items = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m) for m in text]
    items = [m for m in items if m]
    unknown = [m for m in items if m not in METHODS]
    if not items or unknown:
        raise InputError(f"bad method list {text!r}: comma-separated methods from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(items))


#: On equal val mAP the simpler choice wins: the model itself, then CSRA (the table's order within: smaller λ,
#: fewer heads), then the baselines.
_METHOD_RANK = {"model": 0, "csra": 1}


def chosen_rows(table, methods: Sequence[str]) -> List[Tuple[dict, Optional[dict]]]:
    """Per (model, dataset): the selected val row with the best val mAP among ``methods``, and its test row
    (same img_size, method, space, heads, temperatures and λ)."""
    needed = {"model", "dataset", "dataset_spec", "img_size", "split", "method", "space", "heads", "lam", "selected",
              "mAP"}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise InputError(f"the bench table has no column(s) {', '.join(missing)}; pass the table run_bench returns")
    table = table[table["error"].isna()] if "error" in table else table
    val = table[(table["split"] == "val") & table["selected"].fillna(False).astype(bool) & table["mAP"].notna()
                & table["method"].isin(list(methods))]
    if val.empty:
        raise InputError(f"the bench table has no selected validation rows of method {', '.join(methods)}: "
                         f"cards keep a choice made on a validation split; run bench with --select-on val")
    rank = val["method"].map(lambda m: _METHOD_RANK.get(m, len(_METHOD_RANK)))
    val = val.assign(_rank=rank).sort_values(["mAP", "_rank"], ascending=[False, True], kind="stable")
    chosen = []
    for _, group in val.groupby(["model", "dataset"], sort=False):
        best = group.iloc[0].to_dict()
        test = table[(table["split"] == "test") & (table["model"] == best["model"])
                     & (table["dataset"] == best["dataset"])]
        for key in ("img_size", "method", "space", "heads", "temperatures", "lam"):
            if key not in best:  # a table from before the temperatures column
                continue
            test = test[test[key].isna()] if _is_missing(best[key]) else test[test[key] == best[key]]
        chosen.append((best, test.iloc[0].to_dict() if len(test) else None))
    return chosen


def _is_missing(value) -> bool:
    """None, NaN or pandas' NA (a table cell)."""
    import pandas as pd

    return value is None or (not isinstance(value, (str, tuple, list)) and bool(pd.isna(value)))


def cards_from_table(table, source: Optional["ModelSource"] = None, loading: Optional["LoadOptions"] = None,
                     methods: Sequence[str] = METHODS) -> List[ScorerCard]:
    """One card per (model, dataset) of a ``run_bench(..., select_on="val")`` table.

    The card keeps the selected row with the best validation mAP over img sizes, methods (only
    ``methods``), spaces and head sets, with the test mAP of the same choice. ``source`` and
    ``loading``: the run's (as given to ``run_bench``); its models are loaded and its datasets built
    again the way the run did, to record the weights identity, preprocessing and fingerprint.
    """
    import timm

    from .options import LoadOptions, ModelSource
    from .runner import build_dataset, prepare_model

    source, loading = source or ModelSource(), loading or LoadOptions()
    models, cards = {}, []
    for best, test in chosen_rows(table, methods):
        size = None if _is_missing(best["img_size"]) else int(best["img_size"])
        if (best["model"], size) not in models:
            models[best["model"], size] = prepare_model(best["model"], size, source.checkpoint, source.pretrained)
        prepared = models[best["model"], size]
        ds = build_dataset(str(best["dataset_spec"]), prepared.img_size, loading)
        full_frame = bool(getattr(ds, "full_frame", False))
        method, lam = str(best["method"]), _number(best["lam"])
        if method == "csra" and lam == 0:
            method = "model"
        rule = Rule(method=method, space=str(best["space"]), temperatures=_temperatures(best),
                    lam=lam or 0.0, pool=None if _is_missing(best.get("pool")) else str(best["pool"]))
        choice = Choice(dataset=str(ds.short_name), fingerprint=ds.fingerprint(), val_mAP=float(best["mAP"]),
                        test_mAP=None if test is None else _number(test["mAP"]), n_val=_count(best.get("n_images")),
                        n_test=None if test is None else _count(test.get("n_images")))
        cards.append(ScorerCard(
            model=str(best["model"]), num_classes=int(prepared.net.num_classes),
            weights=Weights(prepared.weights_label, prepared.weights_key),
            preprocessing=Preprocessing.from_data_config(prepared.preprocessing[full_frame][1], full_frame),
            rule=rule, chosen_with=choice, timm=timm.__version__))
    return cards


def _count(value) -> Optional[int]:
    return None if _is_missing(value) else int(value)


__all__ = ["CARD_FORMAT", "CARD_VERSION", "Weights", "Preprocessing", "Rule",
           "Choice", "ScorerCard", "card_to_dict", "card_from_dict", "write_card", "write_cards",
           "read_card", "card_record", "check_weights", "scorer_from_card", "load_card_scorer",
           "parse_methods", "chosen_rows", "cards_from_table"]
