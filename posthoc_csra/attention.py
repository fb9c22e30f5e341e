"""Attention heads: how one head pools the (B, C, L) location scores ``s`` into its (B, C) term.

A head is a small registered object (as score spaces are in ``spaces.py``; torch is imported inside the
methods, so ``--help`` stays instant). Each kind says in ONE place

* how it is written: its ``token`` (``"1"``, ``"inf"``) and ``parse`` (the text → a head, or None when
  the text is not of this kind), used by every head-set spelling (``choices``: ``T1+inf``, the tables'
  ``temperatures`` column, a card's ``"heads"``, the statistics cache);
* what it means for people (``describe``, ``HELP``);
* how its terms are computed: ``terms(s, heads, scale, bounded)`` gets every head of its kind in one
  head set at once (several temperatures in one call), ``(B, C, L)`` → one ``(B, C)`` per head;
* which heads the statistics cache stores by default (``STORED``).

Kinds: ``SoftmaxHead(T)`` = Σ_k s_k·softmax(T·s)_k (the paper's head at temperature T), ``MaxHead()``
= max_k s_k (T = ∞) and ``TopKHead(k)`` = the mean of the k highest s_k (``top5``, ``top0.1``).
``parse_head`` tries every kind of ``HEAD_KINDS``. A softmax or max head equals its temperature as a number
(``SoftmaxHead(1.0) == 1.0``, ``MaxHead() == math.inf``), so the numeric spellings of head sets keep working.

How ``SoftmaxHead.terms`` computes — the formula's numbers up to float rounding (tests/test_rule.py,
tests/test_paper_rule.py), never a (B, C, L) tensor per temperature streamed through memory:

* on the CPU: every temperature of a block of images at once (``_exp_terms``): weights
  ``exp(T·(s_k − max_l s_l))`` (probabilities, ``bounded`` in [0, 1], need no max), their sums and
  weighted sums over L, in blocks that stay in the CPU caches, a few tensor operations per block;
* on other devices and while compiling or exporting: the formula itself.

Every path treats each (image, class) row on its own: a row's terms do not depend on the other
rows of the batch (tested bit for bit).

Adding a kind is one ``AttentionHead`` subclass, ``register``-ed here, plus its tests: the CLI, cards,
tables, the statistics cache (``bench`` stores heads outside ``STORED`` under their own key), export and
explain ask the heads.
"""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Type

from .errors import InputError

if TYPE_CHECKING:  # torch stays out of import time (instant CLI --help)
    from torch import Tensor

#: (temperature, image, class, location) values per block of the CPU path (2 MiB of fp32: in the CPU caches).
BLOCK_ELEMENTS = 1 << 19
#: The smallest exponent of a CPU-path weight: e^-87 is a normal fp32 number (``_exp_terms``).
MIN_EXPONENT = -87.0
#: The highest temperature at which scores in [0, 1] are weighted without subtracting their max (``_exp_terms``).
MAX_UNSHIFTED = 64.0


class AttentionHead:
    """One head. Subclasses set ``KIND``/``HELP``/``SYNTAX``, and implement ``token``, ``parse`` and ``terms``."""

    #: the kind's name (registry key)
    KIND = ""
    #: how one head of this kind is written, for ``--help`` (e.g. ``"<t>"``)
    SYNTAX = ""
    #: what it computes, for ``--help``
    HELP = ""
    #: written as a number: a head set that starts with it is written with the ``T`` prefix (``T1+inf``),
    #: since a bare number names a paper head count
    NUMERIC = False
    #: the heads of this kind the statistics cache stores by default (``stored_heads``)
    STORED: Tuple["AttentionHead", ...] = ()

    @property
    def token(self) -> str:
        """The text of this head; ``parse_head`` reads it back to an equal head."""
        raise NotImplementedError

    @classmethod
    def parse(cls, text: str) -> Optional["AttentionHead"]:
        """``text`` (stripped, lower case) → a head of this kind; None when it is not of this kind.
        Raises ValueError (a message for people) when it is of this kind but invalid."""
        raise NotImplementedError

    @classmethod
    def terms(cls, s: "Tensor", heads: Sequence["AttentionHead"], scale: Optional["Tensor"] = None,
              bounded: bool = False, maxima: Optional["Tensor"] = None) -> List["Tensor"]:
        """(B, C, L) scores → one (B, C) term per head of ``heads`` (all of this kind, distinct).

        ``scale``: an optional positive (C,) per-class factor of the temperature (logit space: class c's
        term at T is ``att_{T·scale_c}``); a head whose term commutes with a positive affine map of ``s``
        (max, top-k) ignores it. ``bounded``: every s lies in [0, 1] (probabilities). ``maxima``: the (B, C)
        max of s over L when the caller has it (``head_terms`` shares it between the kinds that need it)."""
        raise NotImplementedError

    def weights(self, s: "Tensor") -> Optional["Tensor"]:
        """(…, L) scores → (…, L) the weights the head puts on each location (``explain`` draws them), or
        None when the head has no such map."""
        return None

    def describe(self) -> str:
        """The head for people: ``"1"``, ``"∞"`` (inside ``T={...}``)."""
        return self.token

    def weights_title(self) -> str:
        """What ``explain`` writes over this head's map of ``weights``."""
        return f"attention weights of head {self.describe()}"

    @property
    def card_value(self):
        """A card's / an exported program's JSON ``"heads"`` entry: the token (numbers stay JSON numbers)."""
        return self.token

    @property
    def meta_text(self) -> str:
        """The statistics cache's ``meta.json`` spelling of a stored head."""
        return self.token

    def sort_key(self) -> tuple:
        """Orders heads: by kind (registry order), then within the kind."""
        return (list(HEAD_KINDS).index(self.KIND), self.token)

    def __eq__(self, other) -> bool:
        if isinstance(other, AttentionHead):
            return (self.KIND, self.token) == (other.KIND, other.token)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.KIND, self.token))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.token!r})"


class SoftmaxHead(AttentionHead):
    """The paper's head at temperature T > 0 (finite): ``Σ_k s_k·softmax(T·s)_k``. Equals the number T."""

    KIND = "softmax"
    SYNTAX = "<t>"
    HELP = "a number T > 0: Σ s·softmax(T·s) over locations"
    NUMERIC = True

    def __init__(self, temperature: float):
        t = float(temperature)
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"a temperature must be a finite number > 0 (inf for max), got {temperature!r}")
        self.temperature = t

    @property
    def token(self) -> str:
        short = repr(self.temperature)  # the shortest exact decimal
        return short[:-2] if short.endswith(".0") else short

    @property
    def card_value(self):
        return self.temperature

    @property
    def meta_text(self) -> str:
        return str(self.temperature)  # cache format 2 wrote str(float): existing caches stay valid

    def sort_key(self) -> tuple:
        return (list(HEAD_KINDS).index(self.KIND), self.temperature)

    def __float__(self) -> float:
        return self.temperature

    def __eq__(self, other) -> bool:
        if isinstance(other, SoftmaxHead):
            return self.temperature == other.temperature
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self.temperature == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.temperature)

    @classmethod
    def parse(cls, text):
        try:
            value = float(text)
        except ValueError:
            return None
        if value == math.inf:
            return None  # MaxHead's
        if not value > 0:
            raise ValueError("temperatures must be positive")
        return cls(value)

    @classmethod
    def terms(cls, s, heads, scale=None, bounded=False, maxima=None):
        import torch

        temperatures = [h.temperature for h in heads]
        if s.device.type != "cpu" or torch.compiler.is_compiling() or (torch.is_grad_enabled() and s.requires_grad):
            return _formula_terms(s, temperatures, scale)  # (the CPU paths write in place: no autograd)
        return _exp_terms(s, temperatures, scale, bounded, maxima)

    def weights(self, s):
        import torch

        return torch.softmax(self.temperature * s, dim=-1)

    def weights_title(self) -> str:
        return f"attention softmax(T·s), T={self.describe()}"

    def describe(self) -> str:
        return self.token


class MaxHead(AttentionHead):
    """T = ∞: ``max_k s_k`` (the paper's "four lines" ``mean z + λ·max z``). Equals ``math.inf``."""

    KIND = "max"
    SYNTAX = "inf"
    HELP = "inf (or ∞): max over locations, T = ∞"
    NUMERIC = True

    @property
    def token(self) -> str:
        return "inf"

    @property
    def meta_text(self) -> str:
        return str(math.inf)

    def __float__(self) -> float:
        return math.inf

    def __eq__(self, other) -> bool:
        if isinstance(other, MaxHead):
            return True
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return other == math.inf
        return NotImplemented

    def __hash__(self) -> int:
        return hash(math.inf)

    def describe(self) -> str:
        return "∞"

    @classmethod
    def parse(cls, text):
        return cls() if text in ("inf", "infinity", "∞", "+inf") else None

    @classmethod
    def terms(cls, s, heads, scale=None, bounded=False, maxima=None):
        return [s.amax(dim=-1) if maxima is None else maxima] * len(heads)


# ---------------------------------------------------------------- the softmax head's paths (module docstring)
def _formula_terms(s: "Tensor", temperatures: Sequence[float], scale: Optional["Tensor"]) -> List["Tensor"]:
    """(B, C) per finite temperature, written as the formula (one softmax over L per temperature)."""
    import torch

    temperatures = [float(t) for t in temperatures]
    if scale is None:
        return [(s * torch.softmax(s * t, dim=-1)).sum(dim=-1) for t in temperatures]
    return [(s * torch.softmax(s * (t * scale).view(1, -1, 1), dim=-1)).sum(dim=-1) for t in temperatures]


def _exp_terms(s: "Tensor", temperatures: Sequence[float], scale: Optional["Tensor"],
               bounded: bool, maxima: Optional["Tensor"] = None) -> List["Tensor"]:
    """The same on the CPU: every temperature of a block at once, weights ``exp(T·(s_k − max_l s_l))``.

    Blocks of about ``BLOCK_ELEMENTS`` (temperature, image, class, location) values — whole images, or equal
    parts of one image's classes when an image alone is larger — written in (B', C', L) order, so that every
    sum over L is a row's own (the same bits in any batch, block or set of temperatures), into two buffers
    that stay in the CPU caches; a few tensor operations per block serve every temperature, and every
    block's views are made up front (per-call overhead is a large share of a block's time). An exponent below
    ``MIN_EXPONENT`` is raised to it: the weight stays a normal float (a subnormal one costs the CPU many
    times more) and, below 2⁻¹²⁵ of the largest weight (1), changes no sum. ``bounded`` scores (in [0, 1])
    at temperatures up to ``MAX_UNSHIFTED`` need no max: ``exp(T·s) ≤ e^64``, and sums of up to e^24 of them
    stay finite. ``maxima``: ``s.amax(-1)`` when the caller has it.
    """
    import torch

    if s.numel() == 0:
        return _formula_terms(s, temperatures, scale)  # no locations (terms 0) or no rows
    temperatures = [float(t) for t in temperatures]
    f, (b, c, l) = len(temperatures), s.shape
    shift = not (bounded and scale is None and max(temperatures) <= MAX_UNSHIFTED)
    temps = torch.tensor(temperatures, dtype=s.dtype).view(f, 1, 1, 1)  # against (F, B', C', L)
    out = s.new_empty((f, b, c))
    if f * c * l <= BLOCK_ELEMENTS:
        images, classes = max(1, BLOCK_ELEMENTS // (f * c * l)), c
    else:
        images, parts = 1, -(-c // max(1, BLOCK_ELEMENTS // (f * l)))
        classes = -(-c // parts)  # equal parts: no small last block

    def tiles(x: "Tensor", class_dim: int) -> List[List["Tensor"]]:
        """Views of x per (class block, image block); the image dimension precedes ``class_dim``."""
        return [part.split(images, class_dim - 1) for part in x.split(classes, class_dim)]

    blocks, outs = tiles(s, 1), tiles(out, 2)  # (B', C', L) and (F, B', C')
    if shift:
        tops = s.amax(-1) if maxima is None else maxima  # the max is exact: the same bits as a block's own
        tops_l, tops_c = tiles(tops.unsqueeze(-1), 1), tiles(tops, 1)
    if scale is not None:  # x = scale_c·(s − max s): the terms are att_T(x)/scale_c (+ max s)
        scale = scale.to(s.dtype)
        scales_l, scales_c = scale.view(1, -1, 1).split(classes, 1), scale.split(classes)
    # two buffers for every block (fresh ones per block cost more than the arithmetic), viewed once per shape
    values = min(b, images) * min(c, classes) * l
    scores_buffer, weights_buffer = s.new_empty(values), s.new_empty(f * values)
    views: Dict[tuple, Tuple["Tensor", "Tensor"]] = {}
    for j, row in enumerate(blocks):
        for i, block in enumerate(row):
            if block.shape not in views:
                views[block.shape] = (scores_buffer[:block.numel()].view(block.shape),
                                      weights_buffer[:f * block.numel()].view((f,) + block.shape))
            d, w = views[block.shape]  # (B', C', L) in this order: a row's own sums; (F, B', C', L)
            if shift:
                torch.sub(block, tops_l[j][i], out=d)
            else:
                d.copy_(block)
            if scale is not None:
                d.mul_(scales_l[j])
            torch.mul(d, temps, out=w)  # T·x
            if shift:
                w.clamp_min_(MIN_EXPONENT)
            w.exp_()
            terms = outs[j][i]
            denominators = w.sum(-1)  # Σ_k w_k, (F, B', C')
            torch.div(w.mul_(d).sum(-1), denominators, out=terms)
            if scale is not None:  # (a scale implies a shift)
                torch.addcdiv(tops_c[j][i], terms, scales_c[j], out=terms)  # max s + term/scale_c
            elif shift:
                terms += tops_c[j][i]
    return list(out.unbind(0))


# ---------------------------------------------------------------- the registry
#: Every kind by name, in the order parsing tries them and heads sort.
HEAD_KINDS: Dict[str, Type[AttentionHead]] = {}


def register(kind: Type[AttentionHead]) -> Type[AttentionHead]:
    """Add a kind to ``HEAD_KINDS`` (usable as a class decorator)."""
    HEAD_KINDS[kind.KIND] = kind
    return kind


register(SoftmaxHead)
register(MaxHead)
#: T = ∞.
MAX = MaxHead()
SoftmaxHead.STORED = tuple(SoftmaxHead(t) for t in range(1, 8))
MaxHead.STORED = (MAX,)


@register
class TopKHead(AttentionHead):
    """The mean of the k highest location scores: k an integer ≥ 1 (L when k > L), or a fraction k in (0, 1)
    of the L locations, ``round(k·L)`` of them (halves up), at least one. top1 is the max, topL the mean."""

    KIND = "topk"
    SYNTAX = "top<k>"
    HELP = ("top<k>: the mean of the k highest locations (an integer k >= 1, or a fraction 0 < k < 1 of them, "
            "e.g. top5, top0.1)")

    def __init__(self, k):
        value = float(k)
        if value.is_integer() and value >= 1:
            self.k = int(value)
        elif 0 < value < 1:
            self.k = value
        else:
            raise ValueError(f"top<k> takes an integer k >= 1 or a fraction 0 < k < 1, got {k!r}")

    @property
    def token(self) -> str:
        return f"top{self.k if isinstance(self.k, int) else repr(self.k)}"

    def locations(self, n: int) -> int:
        """How many of ``n`` locations the mean takes."""
        if isinstance(self.k, int):
            return min(self.k, n)
        return min(n, max(1, math.floor(self.k * n + 0.5)))

    def sort_key(self) -> tuple:
        return (list(HEAD_KINDS).index(self.KIND), float(self.k))

    @classmethod
    def parse(cls, text):
        if not text.startswith("top"):
            return None
        try:
            return cls(float(text[3:]))
        except ValueError:
            raise ValueError("top<k> takes an integer k >= 1 or a fraction 0 < k < 1, e.g. top5, top0.1") from None

    @classmethod
    def terms(cls, s, heads, scale=None, bounded=False, maxima=None):
        counts = [h.locations(s.shape[-1]) for h in heads]
        top = s.topk(max(counts), dim=-1).values  # (B, C, k) in descending order: one call for every k
        return [top[..., :k].mean(dim=-1) for k in counts]


def parse_head(value) -> AttentionHead:
    """One head in any spelling: a head, its token (``"2"``, ``"inf"``, ``"∞"``) or a number (``math.inf`` is
    max) → the head; InputError naming what each kind accepts otherwise."""
    if isinstance(value, AttentionHead):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = repr(float(value))
    if not isinstance(value, str):
        raise InputError(f"bad head {value!r}: {head_syntax_help()}")
    text = value.strip().lower()
    for kind in HEAD_KINDS.values():
        try:
            head = kind.parse(text)
        except ValueError as err:
            raise InputError(f"bad head {value!r}: {err}") from None
        if head is not None:
            return head
    raise InputError(f"bad head {value!r}: {head_syntax_help()}")


def head_syntax_help() -> str:
    """How each registered kind of head is written, for messages and ``--help``."""
    return "a head is " + "; ".join(kind.HELP for kind in HEAD_KINDS.values())


def stored_heads() -> Tuple[AttentionHead, ...]:
    """The heads the statistics cache stores by default: every kind's ``STORED``, in registry order
    (T = 1..7, then ∞)."""
    return tuple(h for kind in HEAD_KINDS.values() for h in kind.STORED)


def head_terms(s: "Tensor", heads: Sequence, scale: Optional["Tensor"] = None, bounded: bool = False) -> "Tensor":
    """(B, C, L) → (B, H, C): one term per head (any spelling, ``parse_head``); the heads of one kind are
    computed in one call (``AttentionHead.terms``)."""
    import torch

    heads = [parse_head(h) for h in heads]
    groups: Dict[type, list] = {}
    for head in dict.fromkeys(heads):
        groups.setdefault(type(head), []).append(head)
    # the max over L once: the max head's term, and the shift of the softmax head's CPU path
    maxima = s.amax(dim=-1) if MaxHead in groups and s.shape[-1] else None
    terms = {}
    for kind in sorted(groups, key=lambda k: list(HEAD_KINDS).index(k.KIND)):
        terms.update(zip(groups[kind], kind.terms(s, groups[kind], scale, bounded, maxima)))
    return torch.stack([terms[h] for h in heads], dim=1)


__all__ = ["AttentionHead", "SoftmaxHead", "MaxHead", "TopKHead", "MAX", "HEAD_KINDS", "register", "parse_head",
           "head_syntax_help", "stored_heads", "head_terms", "BLOCK_ELEMENTS", "MIN_EXPONENT", "MAX_UNSHIFTED"]
