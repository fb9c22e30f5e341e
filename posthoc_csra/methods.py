"""Every method a table row, a scorer or a card can name, as small registered objects.

A method turns one backbone pass into (B, C) scores in a score space (``scores``), and names the cached
statistic that holds its scores (``stat_key``), so the live scorer and the benchmark's evaluation ask the
object instead of branching on names:

* ``model``: the model's own scores (CSRA at λ = 0);
* ``csra``: the CSRA rule, ``base + (λ/H)·Σ_T att_T`` (``rule.py``), the one method that takes a rule (λ, heads):
  its cached form is the base plus the attention terms, swept over λ by ``evaluation``;
* the pooling baselines of ``baselines.BASELINES`` (``max-pool``, ``avgmax-pool``, ``test-time-pool``).

A new method: one class here (or in its own module, registered in ``METHODS`` below), with its tests; the
statistics cache stores its ``stat_key`` array when it declares ``own_statistic`` (``cache.STAT_KEYS``,
``CSRAScorer.statistics``), and the table, cards, ``score --method`` and ``bench --card-methods`` take its name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional

from .baselines import BASELINES

if TYPE_CHECKING:  # torch stays out of import time
    from torch import Tensor


def at_least_fp32(t: "Tensor") -> "Tensor":
    """fp16/bf16 (AMP) → fp32 for the rule; a float64 model keeps float64 (scores as precise as its logits)."""
    import torch
    return t if t.dtype == torch.float64 else t.float()


class Method:
    """One way to score images from a ``CSRAScorer.forward_locations`` output."""

    name = ""
    #: the method takes the rule's λ and heads (only csra)
    takes_rule = False
    #: on equal validation mAP the simpler method wins (cards): lower is simpler
    simplicity = 2
    #: its scores are an array of their own in the statistics (``stat_key``), computed by ``scores``; the model's
    #: are the space's base and csra's the base and attention terms, which every space stores anyway
    own_statistic = False

    def unavailable(self, scorer) -> Optional[str]:
        """Why the method does not apply to ``scorer``'s model; None when it does."""
        return None

    def needs_locations(self, lam: float) -> bool:
        """Whether scoring needs the per-location logits (else the model's forward is enough)."""
        return True

    def scores(self, scorer, out, space, lam: float) -> "Tensor":
        """(B, C) scores in ``space`` (a ``spaces.ScoreSpace``) from a ``forward_locations`` output: by default
        the space's base of ``logits``."""
        return space.base(at_least_fp32(self.logits(scorer, out)))

    def logits(self, scorer, out) -> "Tensor":
        """(B, C) logits of the method, for methods with ``own_statistic`` (computed once per pass, then turned
        into every space's scores)."""
        raise NotImplementedError

    def stat_key(self, space: str) -> str:
        """The cached statistics array (N, C) holding this method's scores in ``space``."""
        raise NotImplementedError


class ModelMethod(Method):
    name = "model"
    simplicity = 0

    def needs_locations(self, lam):
        return False

    def scores(self, scorer, out, space, lam):
        return space.base(at_least_fp32(out.logits))

    def stat_key(self, space):
        return f"{space}_base"


class CsraMethod(Method):
    name = "csra"
    takes_rule = True
    simplicity = 1

    def needs_locations(self, lam):
        return lam != 0

    def scores(self, scorer, out, space, lam):
        from . import rule

        base = space.base(at_least_fp32(out.logits))
        if lam == 0:
            return base
        terms = space.attention_terms(at_least_fp32(out.location_logits), scorer.heads, scorer.classifier)
        return rule.combine(base, terms, lam)

    def stat_key(self, space):
        raise TypeError(f"csra's statistics are {space}_base and {space}_att, combined per λ by evaluation")


class BaselineMethod(Method):
    """A pooling baseline of ``baselines.BASELINES`` as a method."""

    own_statistic = True

    def __init__(self, baseline):
        self.baseline, self.name = baseline, baseline.name

    def unavailable(self, scorer):
        return self.baseline.unavailable(scorer)

    def logits(self, scorer, out):
        return self.baseline.logits(scorer, out)

    def stat_key(self, space):
        return f"{space}@{self.name}"


#: The registry, in table order: the model, csra, then every baseline.
METHODS: Dict[str, Method] = {m.name: m for m in (ModelMethod(), CsraMethod(),
                                                   *(BaselineMethod(b) for b in BASELINES.values()))}

__all__ = ["Method", "ModelMethod", "CsraMethod", "BaselineMethod", "METHODS", "at_least_fp32"]
