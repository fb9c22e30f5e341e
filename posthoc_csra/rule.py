"""The CSRA residual-attention rule as pure tensor math (Zhu & Wu, ICCV 2021, arXiv 2108.02456).

Shapes: B images, C classes, L spatial locations, H heads (temperatures).

    score = base + (λ / H) · Σ_{T in heads} att_T(s)
    att_∞(s) = max_k s_k
    att_T(s) = Σ_k s_k · softmax(T · s)_k

What ``base`` and ``s`` are — and the units the attention terms are written in — is the score
space's business (``spaces.py``); this module only combines them.

How ``attention_terms`` computes the finite temperatures — the formula's numbers up to float
rounding (tests/test_rule.py, tests/test_paper_rule.py), never a (B, C, L) tensor per temperature
streamed through memory:

* probabilities (``bounded``: every s in [0, 1]) on the CPU: ``softmax(T·s) ∝ exp(s)^T``, so one
  ``exp`` serves the paper's integer temperatures as successive products (``e^T ≤ e^8``: no
  overflow, no underflow), in blocks of about ``BLOCK_ELEMENTS`` values that stay in the CPU cache;
* any other scores on the CPU: attention with one query per temperature, query T, keys = values =
  ``s_k`` (head dimension 1, scale 1): ``softmax(q·kᵀ)·v = Σ_k s_k · softmax(T·s)_k``, one fused
  ``scaled_dot_product_attention`` call (PyTorch's flash kernel: the weights of every temperature
  are made and summed block by block);
* on other devices and while compiling or exporting: the formula itself.

Every path treats each (image, class) row on its own: a row's terms do not depend on the other
rows of the batch (tested bit for bit).
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence

import torch

from .parsing import parse_temperature  # noqa: F401
from .choices import HEAD_SETS, INF, STAT_TEMPERATURES, Heads, resolve_temperatures  # noqa: F401

#: Values per block of the power path (512 KiB of fp32 per intermediate: in the CPU cache).
BLOCK_ELEMENTS = 1 << 17
#: The largest temperature the power path reaches by products (exp(s)^T ≤ e^8 for s in [0, 1]).
MAX_POWER = 8


def attention(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C, L) → (B, C): max over L for T = ∞, else Σ_k s_k·softmax(T·s)_k."""
    return attention_terms(s, (temperature,))[:, 0]


def _formula_terms(s: torch.Tensor, temperatures: Sequence[float],
                   scale: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """(B, C) per finite temperature, written as the formula (one softmax over L per temperature)."""
    if scale is None:
        return [(s * torch.softmax(s * t, dim=-1)).sum(dim=-1) for t in temperatures]
    return [(s * torch.softmax(s * (t * scale).view(1, -1, 1), dim=-1)).sum(dim=-1) for t in temperatures]


def _fused_terms(s: torch.Tensor, temperatures: Sequence[float],
                 scale: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """The same as ``_formula_terms``, as one attention call: queries T (B, C, F, 1), keys = values = s."""
    import torch.nn.functional as F

    b, c, _ = s.shape
    queries = torch.tensor(temperatures, dtype=s.dtype, device=s.device).view(1, 1, -1, 1)
    if scale is not None:
        queries = queries * scale.to(s.dtype).view(1, -1, 1, 1)
    keys = s.unsqueeze(-1)
    with torch.autocast(s.device.type, enabled=False):  # the rule runs in the scores' own dtype (fp32)
        out = F.scaled_dot_product_attention(queries.expand(b, c, -1, 1), keys, keys, scale=1.0)  # (B, C, F, 1)
    return list(out[..., 0].unbind(dim=-1))


def _power_terms(s: torch.Tensor, temperatures: Sequence[float]) -> List[torch.Tensor]:
    """The same for s in [0, 1] and integer temperatures 1..MAX_POWER: weights exp(s)^T, by products.

    ``softmax(T·s)_k = e_k^T / Σ_l e_l^T`` with ``e = exp(s)`` in [1, e]: no max to subtract. Blocks of
    whole images (or, when one image is larger than a block, of classes of one image) of about
    ``BLOCK_ELEMENTS`` values, so that the powers and products of every temperature stay in the cache.
    """
    b, c, l = s.shape
    order = sorted(set(temperatures))
    out = s.new_empty((len(order), b, c))
    images = max(1, BLOCK_ELEMENTS // max(1, c * l))
    classes = c if images > 1 or c * l <= BLOCK_ELEMENTS else max(1, BLOCK_ELEMENTS // max(1, l))
    for i in range(0, b, images):
        for j in range(0, c, classes):
            block = s[i:i + images, j:j + classes]
            e = block.exp()
            power, k = None, 0
            for n, t in enumerate(order):
                while k < t:
                    power = e.clone() if power is None else power.mul_(e)
                    k += 1
                torch.div(torch.linalg.vecdot(power, block), power.sum(dim=-1), out=out[n, i:i + images, j:j + classes])
    by_t = dict(zip(order, out.unbind(0)))
    return [by_t[t] for t in temperatures]


def attention_terms(s: torch.Tensor, temperatures: Iterable[float], scale: Optional[torch.Tensor] = None,
                    bounded: bool = False) -> torch.Tensor:
    """(B, C, L) → (B, H, C): one attention term per temperature (how: the module docstring).

    ``scale``: an optional positive (C,) factor of every temperature per class (class c's term at T is
    ``att_{T·scale_c}``; T = ∞ stays the max). ``bounded``: every s lies in [0, 1] (probabilities).
    """
    temps = tuple(float(t) for t in temperatures)
    finite = list(dict.fromkeys(t for t in temps if not math.isinf(t)))
    terms = {}
    if finite:
        if s.device.type != "cpu" or torch.compiler.is_compiling() or (torch.is_grad_enabled() and s.requires_grad):
            compute = _formula_terms(s, finite, scale)  # (the CPU paths write in place: no autograd)
        elif bounded and scale is None and all(t.is_integer() and 1 <= t <= MAX_POWER for t in finite):
            compute = _power_terms(s, finite)
        else:
            compute = _fused_terms(s, finite, scale)
        terms = dict(zip(finite, compute))
    top = s.amax(dim=-1) if len(terms) < len(temps) else None
    return torch.stack([terms[t] if t in terms else top for t in temps], dim=1)


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
