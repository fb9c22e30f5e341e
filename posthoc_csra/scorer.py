"""``CSRAScorer``: any timm classifier + the CSRA rule, one backbone pass per batch."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from . import heads as _heads
from .choices import STORED_HEADS, Heads, check_lam, resolve_heads
from .errors import InputError
from .heads import UnsupportedModelError
from .methods import METHODS, at_least_fp32
from .spaces import SPACES, LinearClassifier, ScoreSpace, get_space

log = logging.getLogger("posthoc_csra")


@dataclass
class LocationOutput:
    """One backbone pass: the model's logits (B, C), per-location logits (B, C, L), grid (H, W), and the
    features ``forward_features`` returned (for baselines that pool them)."""

    logits: torch.Tensor
    location_logits: torch.Tensor
    grid: Tuple[int, int]
    features: Optional[torch.Tensor] = None
    #: results derived from this pass, computed once (e.g. max-pool logits, shared by max- and avgmax-pool)
    derived: Dict[str, torch.Tensor] = field(default_factory=dict)


class CSRAScorer(nn.Module):
    """``score = base + (λ/H)·Σ_T att_T`` on top of a timm classifier, without retraining.

    Its defaults are the paper's (logit space, λ = 0.1, one head at T = ∞, the paper's VOC setting); the
    command line's defaults (``choices.DEFAULT_*``, ``options.RuleOptions()``) are the setting the published
    VOC2007 table supports for softmax-trained ImageNet models.

    Args:
        model: a timm classifier (put in eval mode).
        lam: the residual-attention weight λ ≥ 0; 0 returns the model's own logits (``space="logit"``)
            or their softmax (``space="prob"``). In logit space a λ means what it means in the paper.
        heads: a paper head count (1, 2, 4, 6, 8 → temperatures ``choices.HEAD_SETS``) or explicit
            heads (``attention.py``), e.g. ``(1, math.inf)`` or ``"T1+inf"``.
        space: a registered score space (``spaces.SPACES``): ``"logit"`` (the paper) or ``"prob"``
            (softmax probabilities per location; better for softmax-trained ImageNet models).
        input_size: (C, H, W) of the probe input; defaults to the size the model was built for.
        method: a registered method (``methods.METHODS``): ``"csra"`` (default), ``"model"`` (the model
            itself), or a pooling baseline (``"max-pool"``, ``"avgmax-pool"``, ``"test-time-pool"``).

    Attributes set from a probe at construction: ``feature_format`` ("NCHW", "NHWC", "NLC+P"),
    ``head_kind``, ``exact`` (the mean of the per-location logits reproduces the model's logits),
    ``normalized`` (the classifier is linear, so logit-space scores use L2-normalised weights). ``heads``: the
    attention head objects (``attention.py``) the rule sums.
    """

    def __init__(self, model: nn.Module, lam: float = 0.1, heads: Heads = 1, space: str = "logit",
                 input_size: Optional[Sequence[int]] = None, method: str = "csra"):
        super().__init__()
        if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
            raise UnsupportedModelError(
                f"{type(model).__name__} has no forward_features/forward_head; pass a timm classifier")
        self.model = model.eval()
        self.lam = check_lam(lam)
        self.heads = resolve_heads(heads)
        self.space = get_space(space).name
        self.head_kind = _heads.head_kind(model)
        self._probe(_heads.default_input_size(model, input_size))
        classifier = _heads.linear_classifier(model)
        self.normalized = classifier is not None
        self.register_buffer("cls_bias", classifier.bias if classifier else None, persistent=False)
        self.register_buffer("cls_weight_norm", classifier.weight_norm if classifier else None, persistent=False)
        self._baseline_notes = {m.name: m.unavailable(self) for m in METHODS.values() if m.own_statistic}
        self.method = self._check_method(method)

    @classmethod
    def from_card(cls, card, model: nn.Module, source: Optional[str] = None) -> "CSRAScorer":
        """The scorer a scorer card (a ``cards.ScorerCard`` or its file) describes — its method, space, heads and
        λ — on ``model``, built for the card's input size; feed it images through
        ``card.preprocessing.transform()`` (the card's size, crop or full frame).

        The weights are checked by identity (``models.weights_of``), which ignores the size the model was built
        for: a CNN loaded with a plain ``load_model(name)`` runs a card made at 448 px. InputError for a model
        with other weights, or for a token model built for another size (the fix: ``load_model(name,
        img_size=<card's size>)``); UnsupportedModelError for a baseline that does not apply to the model.
        ``source``: how messages name the card (default: its file, or "card")."""
        from .cards import ScorerCard, check_weights, read_card

        if not isinstance(card, ScorerCard):
            source, card = source or f"--card {card}", read_card(card)
        source = source or "card"
        check_weights(card, model, source)
        size = card.preprocessing.img_size
        try:
            return cls(model, lam=card.lam, heads=card.rule.temperatures, space=card.rule.space,
                       input_size=(3, size, size), method=card.rule.method)
        except UnsupportedModelError as err:
            built = _heads.default_input_size(model)[-2:]
            if tuple(built) == (size, size):
                raise
            raise InputError(f"{source} runs {card.model} at {size} px, but this model was built for "
                             f"{built[0]}×{built[1]} px inputs and cannot take {size} px ones ({err}). Fix: load it "
                             f"at the card's size, load_model({card.model!r}, img_size={size}, ...): the same "
                             f"weights, the same identity") from None

    def _check_method(self, method: str) -> str:
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        reason = METHODS[method].unavailable(self)
        if reason is not None:
            raise UnsupportedModelError(f"method {method!r} does not apply to this model: {reason}")
        return method

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
            raise UnsupportedModelError(f"forward_features failed on a {tuple(x.shape)} probe: {err}; "
                                        f"pass input_size=(3, H, W) the model accepts") from err
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

    @property
    def classifier(self) -> Optional[LinearClassifier]:
        """The linear classifier's bias and row norms (the paper's normalisation), or None."""
        return LinearClassifier(self.cls_bias, self.cls_weight_norm) if self.normalized else None

    @property
    def score_space(self) -> ScoreSpace:
        return get_space(self.space)

    def baseline_notes(self) -> Dict[str, Optional[str]]:
        """Per baseline method: None when it applies to this model, else why not."""
        return dict(self._baseline_notes)

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
        return LocationOutput(logits, location_logits, grid, features)

    def head_on_locations(self, features: torch.Tensor, reduce: str = "max") -> torch.Tensor:
        """(B, C): the model's head applied to one location, the ``reduce`` ("max") of all locations' features."""
        locations = self.layout.locations(features)  # (B, L, D)
        pooled = locations.amax(dim=1) if reduce == "max" else locations.mean(dim=1)
        return self.model.forward_head(self.layout.single_location_input(pooled))

    def location_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C, L) the classifier's logits at each of the L locations."""
        return self.forward_locations(x).location_logits

    def location_scores(self, location_logits: torch.Tensor, space: Optional[str] = None) -> torch.Tensor:
        """(B, C, L) per-location logits → (B, C, L) attention inputs ``s`` in ``space`` (fp32)."""
        return get_space(space or self.space).location_scores(location_logits.float(), self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, C) scores of ``self.method`` in ``self.space``."""
        if not METHODS[self.method].needs_locations(self.lam):
            return self.score_space.base(at_least_fp32(self.model(x)))
        return self.score_output(self.forward_locations(x))

    def score_output(self, out: LocationOutput, lam: Optional[float] = None,
                     space: Optional[str] = None) -> torch.Tensor:
        """(B, C) scores from an already computed ``forward_locations`` output."""
        return METHODS[self.method].scores(self, out, get_space(space or self.space), self.lam if lam is None else lam)

    @torch.no_grad()
    def statistics(self, x: torch.Tensor, heads: Sequence = STORED_HEADS) -> Dict[str, torch.Tensor]:
        """Everything any λ, head set, space and method needs, from one backbone pass (fp32, on CPU).

        ``logits`` (B, C); per space ``{space}_base`` (B, C), ``{space}_mean`` (B, C) the mean of the
        location scores ``s``, ``{space}_att`` (B, H, C) the attention terms of ``heads`` (default
        ``choices.STORED_HEADS``, what the statistics cache stores) in the base's units
        (score = base + (λ/H)·Σ_T att_T), and per method with ``own_statistic`` (the pooling baselines) its
        ``stat_key`` array ``{space}@{method}`` (B, C) (NaN where it does not apply; ``baseline_notes()`` says why).
        """
        out = self.forward_locations(x)
        logits, z = out.logits.float(), out.location_logits.float()
        own = {m: m.logits(self, out).float() if self._baseline_notes[m.name] is None
               else torch.full_like(logits, float("nan")) for m in METHODS.values() if m.own_statistic}
        stats = {"logits": logits}
        for name, space in SPACES.items():
            stats[f"{name}_base"] = space.base(logits)
            stats[f"{name}_mean"], stats[f"{name}_att"] = space.location_statistics(z, heads, self.classifier)
            for method, values in own.items():  # each method's logits once per pass, then in every space
                stats[method.stat_key(name)] = space.base(values)
        return {k: v.cpu() for k, v in stats.items()}
