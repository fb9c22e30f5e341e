"""The CSRA residual-attention rule as pure tensor math (Zhu & Wu, ICCV 2021, arXiv 2108.02456).

Shapes: B images, C classes, L spatial locations, H heads.

    score = base + (λ / H) · Σ_{h in heads} att_h(s)
    att_∞(s) = max_k s_k
    att_T(s) = Σ_k s_k · softmax(T · s)_k

What ``base`` and ``s`` are — and the units the attention terms are written in — is the score
space's business (``spaces.py``); what each head computes, and how fast, is the head's
(``attention.py``); this module only combines them.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from .attention import head_terms


def attention(s: torch.Tensor, head) -> torch.Tensor:
    """(B, C, L) → (B, C): one head's term (a head or a temperature: max over L for T = ∞, else
    Σ_k s_k·softmax(T·s)_k)."""
    return attention_terms(s, (head,))[:, 0]


def attention_terms(s: torch.Tensor, heads: Iterable, scale: Optional[torch.Tensor] = None,
                    bounded: bool = False) -> torch.Tensor:
    """(B, C, L) → (B, H, C): one attention term per head (``attention.head_terms``; heads in any spelling,
    ``1.0`` or ``math.inf`` too).

    ``scale``: an optional positive (C,) factor of every temperature per class (class c's term at T is
    ``att_{T·scale_c}``; T = ∞ stays the max). ``bounded``: every s lies in [0, 1] (probabilities).
    """
    return head_terms(s, tuple(heads), scale, bounded)


def combine(base: torch.Tensor, terms: torch.Tensor, lam: float) -> torch.Tensor:
    """(B, C) base + (λ / H)·Σ of (B, H, C) attention terms → (B, C).

    The paper sums H heads, ``Σ_h (mean s + λ·att_{T_h})`` = ``H·mean s + λ·Σ_T att_T``, which ranks
    like this per-head average with one shared λ.
    """
    if lam == 0:
        return base
    return base + (lam / terms.shape[1]) * terms.sum(dim=1)


def csra(base: torch.Tensor, s: torch.Tensor, lam: float, heads: Sequence) -> torch.Tensor:
    """The rule end to end: (B, C) base and (B, C, L) attention inputs (in the base's units) → (B, C)."""
    if lam == 0:
        return base
    return combine(base, attention_terms(s, heads), lam)
