"""The CSRA residual-attention rule as pure tensor math (Zhu & Wu, ICCV 2021, arXiv 2108.02456).

Shapes: B images, C classes, L spatial locations, H heads (temperatures).

    score = base + (λ / H) · Σ_{T in heads} att_T(s)
    att_∞(s) = max_k s_k
    att_T(s) = Σ_k s_k · softmax(T · s)_k

What ``base`` and ``s`` are — and the units the attention terms are written in — is the score
space's business (``spaces.py``); this module only combines them.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from .parsing import parse_temperature  # noqa: F401
from .choices import HEAD_SETS, INF, STAT_TEMPERATURES, Heads, resolve_temperatures  # noqa: F401


def attention(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C, L) → (B, C): max over L for T = ∞, else Σ_k s_k·softmax(T·s)_k."""
    if math.isinf(temperature):
        return s.amax(dim=-1)
    return (s * torch.softmax(s * temperature, dim=-1)).sum(dim=-1)


def attention_terms(s: torch.Tensor, temperatures: Iterable[float]) -> torch.Tensor:
    """(B, C, L) → (B, H, C): one attention term per temperature."""
    return torch.stack([attention(s, t) for t in temperatures], dim=1)


def combine(base: torch.Tensor, terms: torch.Tensor, lam: float) -> torch.Tensor:
    """(B, C) base + (λ / H)·Σ of (B, H, C) attention terms → (B, C).

    The paper sums H heads, ``Σ_h (mean s + λ·att_{T_h})`` = ``H·mean s + λ·Σ_T att_T``, which ranks
    like this per-head average with one shared λ.
    """
    if lam == 0:
        return base
    return base + (lam / terms.shape[1]) * terms.sum(dim=1)


def csra(base: torch.Tensor, s: torch.Tensor, lam: float, temperatures: Sequence[float]) -> torch.Tensor:
    """The rule end to end: (B, C) base and (B, C, L) attention inputs (in the base's units) → (B, C)."""
    if lam == 0:
        return base
    return combine(base, attention_terms(s, temperatures), lam)
