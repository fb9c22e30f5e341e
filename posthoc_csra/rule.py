"""The CSRA residual-attention rule as pure tensor math (Zhu & Wu, ICCV 2021, arXiv 2108.02456).

Shapes: B images, C classes, L spatial locations.

    score = base + (lam / H) * sum_{T in heads} att_T(s)
    att_inf(s) = max_k s_k
    att_T(s)   = sum_k s_k * softmax(T * s)_k

``s`` are the per-location class scores: in ``"logit"`` space the classifier
applied at each location with its weights L2-normalised per class (the paper);
in ``"prob"`` space the softmax over classes at each location. ``base`` is the
model's own logits (``"logit"``) or their softmax (``"prob"``).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch

from .spec import (HEAD_SETS, INF, SPACES, STAT_TEMPERATURES, Heads, check_space,  # noqa: F401
                   parse_temperature, resolve_temperatures)


def base_scores(logits: torch.Tensor, space: str) -> torch.Tensor:
    """(B, C) model logits → (B, C) base scores in ``space``."""
    check_space(space)
    return logits.softmax(dim=1) if space == "prob" else logits


def location_scores(location_logits: torch.Tensor, space: str,
                    bias: Optional[torch.Tensor] = None,
                    inv_weight_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, L) per-location logits → (B, C, L) attention inputs ``s``.

    ``"logit"``: ``(z - bias) / ||w_c||``, the bias-free score of the L2-normalised classifier.
    ``"prob"``: softmax over classes at each location.
    """
    check_space(space)
    if space == "prob":
        return location_logits.softmax(dim=1)
    s = location_logits
    if bias is not None:
        s = s - bias.view(1, -1, 1)
    if inv_weight_norm is not None:
        s = s * inv_weight_norm.view(1, -1, 1)
    return s


def location_attention_terms(location_logits: torch.Tensor, space: str, temperatures: Sequence[float],
                             bias: Optional[torch.Tensor] = None,
                             inv_weight_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C, L) per-location logits → (B, H, C) attention terms: ``attention_terms(location_scores(...))``.

    With only T=inf in ``"logit"`` space the (B, C, L) scores are never formed: ``(z - b_c) * inv_c``
    (``inv_weight_norm`` > 0) increases with z for every class, so its max over L is that map applied
    to ``max_L z``; rounding is monotone too, so the result is the same to the bit, from (B, C) work.
    """
    if space == "logit" and all(math.isinf(t) for t in temperatures):
        top = location_scores(location_logits.amax(dim=-1, keepdim=True), space, bias, inv_weight_norm)  # (B, C, 1)
        return top.transpose(1, 2).expand(-1, len(temperatures), -1)
    return attention_terms(location_scores(location_logits, space, bias, inv_weight_norm), temperatures)


def attention(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C, L) → (B, C): max over L for T=inf, else sum_k s_k softmax(T s)_k."""
    if math.isinf(temperature):
        return s.amax(dim=-1)
    return (s * torch.softmax(s * temperature, dim=-1)).sum(dim=-1)


def attention_terms(s: torch.Tensor, temperatures: Iterable[float]) -> torch.Tensor:
    """(B, C, L) → (B, H, C): one attention term per temperature."""
    return torch.stack([attention(s, t) for t in temperatures], dim=1)


def combine(base: torch.Tensor, terms: torch.Tensor, lam: float) -> torch.Tensor:
    """(B, C) base + (lam / H) * sum of (B, H, C) attention terms → (B, C).

    H heads sharing one classifier sum to ``H*base + lam*sum_T att_T``, which ranks
    like this per-head average (the paper's one shared λ).
    """
    if lam == 0:
        return base
    return base + (lam / terms.shape[1]) * terms.sum(dim=1)


def csra(base: torch.Tensor, s: torch.Tensor, lam: float, temperatures: Sequence[float]) -> torch.Tensor:
    """The rule end to end: (B, C) base and (B, C, L) scores → (B, C)."""
    if lam == 0:
        return base
    return combine(base, attention_terms(s, temperatures), lam)
