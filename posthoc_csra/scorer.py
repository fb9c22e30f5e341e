"""``CSRAScorer``: any timm classifier + the CSRA rule, one backbone pass per batch."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from . import heads as _heads
from . import rule
from .heads import UnsupportedModelError

log = logging.getLogger("posthoc_csra")


@dataclass
class LocationOutput:
    """One backbone pass: the model's logits (B, C), per-location logits (B, C, L), grid (H, W)."""

    logits: torch.Tensor
    location_logits: torch.Tensor
    grid: Tuple[int, int]


class CSRAScorer(nn.Module):
    """``score = base + lam * att`` on top of a timm classifier, without retraining.

    Args:
        model: a timm classifier (put in eval mode).
        lam: the residual-attention weight λ; 0 returns the model's own logits (``space="logit"``)
            or their softmax (``space="prob"``).
        heads: a paper head count (1, 2, 4, 6, 8 → temperatures ``rule.HEAD_SETS``) or explicit
            temperatures, e.g. ``(1, math.inf)``.
        space: ``"logit"`` (the paper; also for sigmoid-trained multi-label models) or ``"prob"``
            (softmax probabilities per location; better for softmax-trained ImageNet models).
        input_size: (C, H, W) of the probe input; defaults to the model's pretrained_cfg.

    Attributes set from a probe at construction: ``feature_format`` ("NCHW", "NHWC", "NLC+P"),
    ``head_kind``, ``exact`` (the mean of the per-location logits reproduces the model's logits),
    ``normalized`` (the classifier is linear, so logit-space scores use L2-normalised weights).
    """

    def __init__(self, model: nn.Module, lam: float = 0.1, heads: rule.Heads = 1, space: str = "logit",
                 input_size: Optional[Sequence[int]] = None):
        super().__init__()
        if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
            raise UnsupportedModelError(
                f"{type(model).__name__} has no forward_features/forward_head; pass a timm classifier")
        self.model = model.eval()
        self.lam = float(lam)
        self.temperatures = rule.resolve_temperatures(heads)
        self.space = rule.check_space(space)
        self.head_kind = _heads.head_kind(model)
        self._probe(_heads.default_input_size(model, input_size))
        norm = _heads.classifier_norm(model)
        self.normalized = norm is not None
        self.register_buffer("cls_bias", norm.bias if norm else None, persistent=False)
        self.register_buffer("cls_inv_norm", norm.inv_weight_norm if norm else None, persistent=False)

    @torch.no_grad()
    def _probe(self, input_size: Tuple[int, int, int]) -> None:
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((1, *input_size), generator=generator).to(device=device, dtype=dtype)
        try:
            features = self.model.forward_features(x)
        except Exception as err:
            raise UnsupportedModelError(f"forward_features failed on a {tuple(x.shape)} probe: {err}") from err
        self.layout = _heads.detect_layout(self.model, features, tuple(input_size[-2:]))
        try:
            logits = self.model.forward_head(features)
            location_logits = _heads.per_location_logits(self.model, self.layout, features)
        except UnsupportedModelError:
            raise
        except Exception as err:
            raise UnsupportedModelError(
                f"the head ({self.head_kind}) cannot take one {self.layout.describe()} location: {err}") from err
        if not isinstance(logits, torch.Tensor) or logits.shape != location_logits.shape[:2]:
            raise UnsupportedModelError(f"forward_head returned {getattr(logits, 'shape', type(logits))}, "
                                        f"per-location logits {tuple(location_logits.shape)}")
        self.num_classes = int(logits.shape[1])
        self.probe_locations = int(location_logits.shape[2])
        self.exact = _heads.is_mean_exact(logits.float(), location_logits.float())

    @property
    def feature_format(self) -> str:
        return self.layout.describe()

    def describe(self) -> str:
        """One line for logs: how the locations were found and whether they are exact."""
        how = "exact: mean of per-location logits = model logits" if self.exact else (
            "approximate: the head has a norm/MLP/activation/token after pooling, so per-location "
            "logits are the head applied to each location (their mean is not the model's logits)")
        return f"{self.feature_format} features, head {self.head_kind}, {how}"

    def report(self) -> None:
        """Log how locations were found: a warning when the per-location path is an approximation."""
        (log.info if self.exact else log.warning)("posthoc-csra: %s", self.describe())

    def forward_locations(self, x: torch.Tensor) -> LocationOutput:
        """(B, 3, H, W) images → model logits (B, C), per-location logits (B, C, L), grid — one backbone pass."""
        features = self.model.forward_features(x)
        logits = self.model.forward_head(features)
        location_logits = _heads.per_location_logits(self.model, self.layout, features)
        grid = self.layout.grid(features, self.model, tuple(x.shape[-2:]))
        return LocationOutput(logits, location_logits, grid)

    def location_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, L) the classifier's logits at each of the L locations."""
        return self.forward_locations(x).location_logits

    def _classifier_affine(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(bias (C,), 1 / ||w_c|| (C,)) of a linear classifier, for the paper's normalised scores; else Nones."""
        return (self.cls_bias, self.cls_inv_norm) if self.normalized else (None, None)

    def location_scores(self, location_logits: torch.Tensor, space: Optional[str] = None) -> torch.Tensor:
        """(B, C, L) per-location logits → (B, C, L) attention inputs in ``space`` (fp32)."""
        return rule.location_scores(location_logits.float(), space or self.space, *self._classifier_affine())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C) CSRA scores in ``self.space``."""
        if self.lam == 0:
            return rule.base_scores(self.model(x).float(), self.space)
        return self.score_output(self.forward_locations(x))

    def score_output(self, out: LocationOutput, lam: Optional[float] = None,
                     space: Optional[str] = None) -> torch.Tensor:
        """CSRA scores (B, C) from an already computed ``forward_locations`` output."""
        space = space or self.space
        lam = self.lam if lam is None else lam
        base = rule.base_scores(out.logits.float(), space)
        if lam == 0:
            return base
        terms = rule.location_attention_terms(out.location_logits.float(), space, self.temperatures,
                                              *self._classifier_affine())
        return rule.combine(base, terms, lam)

    @torch.no_grad()
    def statistics(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Everything any λ, head set and space needs, from one backbone pass (all fp32, on CPU).

        ``logits`` (B, C); per space ``{space}_base`` (B, C), ``{space}_mean`` (B, C) the mean
        of the location scores, and ``{space}_att`` (B, 8, C) for ``rule.STAT_TEMPERATURES``.
        """
        out = self.forward_locations(x)
        stats = {"logits": out.logits.float()}
        for space in rule.SPACES:
            s = self.location_scores(out.location_logits, space)
            stats[f"{space}_base"] = rule.base_scores(stats["logits"], space)
            stats[f"{space}_mean"] = s.mean(-1)
            stats[f"{space}_att"] = rule.attention_terms(s, rule.STAT_TEMPERATURES)
        return {k: v.cpu() for k, v in stats.items()}

