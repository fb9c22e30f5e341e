"""The one place that knows how a timm model's head maps to per-location logits.

A timm classifier is ``forward_head(forward_features(x))``. Its head starts with a
pooling step (global average / max pooling of a feature map, a class token, an
attention pool) followed by norm / MLP / activation / linear layers. Feeding the
head a *single* location — a 1×1 map, or a token sequence made of copies of one
patch token — makes every pooling step return that location's feature, so the
rest of the head runs unchanged: its own weights, no copy, no retraining.

What varies between families is only the *feature layout*, chosen from the
features themselves (and the model's ``output_fmt`` / ``num_prefix_tokens``),
never from the model's name:

- ``NCHW``: CNN feature maps (ResNet, EfficientNet, ConvNeXt, RegNet, DenseNet...)
- ``NHWC``: channels-last maps (Swin, MambaOut, Sequencer...)
- ``NLC``:  token sequences with any number of prefix (class / distillation / register) tokens.

Whether the mean of the per-location logits equals the model's own logits
(``exact``) is measured on a probe, not assumed: it holds for pool→linear heads
and fails for heads with a norm, MLP, activation, max pooling or class token.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import InputError
from .spaces import LinearClassifier


class UnsupportedModelError(InputError):
    """The model's output cannot be mapped to spatial locations; the message says why."""


class FeatureLayout:
    """How ``forward_features`` output splits into L locations. Subclasses name the format."""

    format = ""

    def locations(self, features: torch.Tensor) -> torch.Tensor:
        """Features → (B, L, D) per-location feature vectors."""
        raise NotImplementedError

    def single_location_input(self, locations: torch.Tensor) -> torch.Tensor:
        """(N, D) location features → what ``forward_head`` takes for N one-location images."""
        raise NotImplementedError

    def grid(self, features: torch.Tensor, model: nn.Module, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        """(H, W) of the location grid, H*W = L."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.format


class ChannelsFirst(FeatureLayout):
    format = "NCHW"

    def locations(self, features):
        return features.flatten(2).transpose(1, 2)

    def single_location_input(self, locations):
        return locations[:, :, None, None]

    def grid(self, features, model, input_hw):
        return tuple(features.shape[2:4])


class ChannelsLast(FeatureLayout):
    format = "NHWC"

    def locations(self, features):
        return features.flatten(1, 2)

    def single_location_input(self, locations):
        return locations[:, None, None, :]

    def grid(self, features, model, input_hw):
        return tuple(features.shape[1:3])


class Tokens(FeatureLayout):
    """(B, P + L, D) tokens; the first P are prefix tokens (class, distillation, registers)."""

    format = "NLC"

    def __init__(self, num_prefix_tokens: int):
        self.num_prefix_tokens = num_prefix_tokens

    def locations(self, features):
        return features[:, self.num_prefix_tokens:]

    def single_location_input(self, locations):
        # Every position, prefix ones included, holds the same token: class-token,
        # distillation-token, average and attention pooling all return it.
        return locations[:, None, :].expand(-1, self.num_prefix_tokens + 1, -1)

    def grid(self, features, model, input_hw):
        num_locations = features.shape[1] - self.num_prefix_tokens
        for h, w in _token_grid_candidates(model, input_hw):
            # the model's grid, or that grid merged k x k (patch mergers such as Qwen's 2x2)
            for k in range(1, min(h, w) + 1):
                if h % k == 0 and w % k == 0 and (h // k) * (w // k) == num_locations:
                    return int(h // k), int(w // k)
        return _factor_like(num_locations, input_hw)

    def describe(self):
        return f"NLC+{self.num_prefix_tokens}"


def _token_grid_candidates(model: nn.Module, input_hw: Tuple[int, int]) -> list:
    """(H, W) token grids the model itself suggests: its patch embedding, else its feature reduction."""
    patch_embed = getattr(model, "patch_embed", None)
    candidates = []
    if hasattr(patch_embed, "dynamic_feat_size"):
        try:
            candidates.append(tuple(patch_embed.dynamic_feat_size(tuple(input_hw))))
        except Exception:  # noqa: BLE001 - only a hint; the caller factorises L otherwise
            pass
    if getattr(patch_embed, "grid_size", None) is not None:
        candidates.append(tuple(patch_embed.grid_size))
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and feature_info[-1].get("reduction"):
        candidates.append(tuple(math.ceil(s / feature_info[-1]["reduction"]) for s in input_hw))
    return candidates


MAX_PREFIX_TOKENS = 16


def _factor_like(n: int, input_hw: Tuple[int, int]) -> Tuple[int, int]:
    """h * w = n with h / w as close as possible to the input's aspect ratio."""
    aspect = input_hw[0] / input_hw[1]
    best = min((h for h in range(1, n + 1) if n % h == 0), key=lambda h: abs(math.log(h * h / n / aspect)))
    return best, n // best


def detect_layout(model: nn.Module, features, input_hw: Optional[Tuple[int, int]] = None) -> FeatureLayout:
    """Choose the layout from the features ``forward_features`` returned for an ``input_hw`` input."""
    if not isinstance(features, torch.Tensor):
        raise UnsupportedModelError(
            f"forward_features returns {type(features).__name__}, not one tensor "
            f"(multi-branch features have no single location grid)")
    num_features = getattr(model, "num_features", None)
    if features.ndim == 4:
        fmt = str(getattr(model, "output_fmt", "") or "")
        if fmt.endswith("NHWC") or (fmt == "" and features.shape[-1] == num_features
                                    and features.shape[1] != num_features):
            return ChannelsLast()
        return ChannelsFirst()
    if features.ndim == 3:
        prefix = getattr(model, "num_prefix_tokens", None)
        if prefix is None:
            # A token parameter of shape (1, n, D) holds n prefix tokens (PiT-distilled: class + distillation).
            prefix = sum((token.shape[-2] if token.ndim == 3 else 1) for token in
                         (getattr(model, name, None) for name in ("cls_token", "dist_token")) if token is not None)
            if input_hw is not None:  # no declared count: the tokens beyond the model's own grid are prefix
                fits = [features.shape[1] - h * w for h, w in _token_grid_candidates(model, input_hw)]
                fits = [p for p in fits if 0 <= p <= MAX_PREFIX_TOKENS]
                if fits and prefix not in fits:
                    prefix = fits[0]
        if features.shape[1] <= prefix:
            raise UnsupportedModelError(f"forward_features returns {features.shape[1]} tokens, "
                                        f"no patch tokens after {prefix} prefix tokens")
        return Tokens(int(prefix))
    raise UnsupportedModelError(
        f"forward_features returns a {features.ndim}-D tensor {tuple(features.shape)}: "
        f"already pooled, no spatial locations")


def linear_classifier(model: nn.Module) -> Optional[LinearClassifier]:
    """The final classifier's bias and row norms ‖w_c‖ (for the paper's normalised scores); None when it is
    not linear.

    Distillation heads average two classifiers, so their weights are averaged too.
    """
    getter = getattr(model, "get_classifier", None)
    if getter is None:
        return None
    layers = getter()
    layers = list(layers) if isinstance(layers, (tuple, list)) else [layers]
    weights, biases = [], []
    for layer in layers:
        weight = getattr(layer, "weight", None)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or weight is None:
            return None
        if isinstance(layer, nn.Conv2d) and weight.shape[2:] != (1, 1):
            return None
        weights.append(weight.detach().flatten(1).float())
        bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(weight.shape[0])
        biases.append(bias.to(weights[-1].device))
    weight = torch.stack(weights).mean(0)
    return LinearClassifier(torch.stack(biases).mean(0), weight.norm(dim=1).clamp_min(1e-12))


def head_kind(model: nn.Module) -> str:
    """A short description of the head, from the modules themselves (e.g. ``NormMlpClassifierHead/Linear``)."""
    paths = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    modules = dict(model.named_modules())
    kinds = []
    for path in paths:
        if path not in modules:
            continue
        parent = path.rpartition(".")[0]
        owner = type(modules[parent]).__name__ if parent else f"{type(model).__name__}.forward_head"
        kinds.append(f"{owner}/{type(modules[path]).__name__}")
    if not kinds:
        return f"{type(model).__name__}.forward_head/?"
    unique = list(dict.fromkeys(kinds))  # a distillation head: two classifiers of one kind
    return "+".join(k if kinds.count(k) == 1 else f"{k}×{kinds.count(k)}" for k in unique)


def per_location_logits(model: nn.Module, layout: FeatureLayout, features: torch.Tensor) -> torch.Tensor:
    """Features → (B, C, L): the model's own head applied at every location."""
    locations = layout.locations(features)
    batch, num_locations, dim = locations.shape
    logits = model.forward_head(layout.single_location_input(locations.reshape(batch * num_locations, dim)))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch * num_locations:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UnsupportedModelError(f"the head applied to one location returned {shape}, "
                                    f"expected ({batch * num_locations}, num_classes)")
    return logits.view(batch, num_locations, -1).transpose(1, 2)


def is_mean_exact(logits: torch.Tensor, location_logits: torch.Tensor, tolerance: float = 1e-4) -> bool:
    """Does the mean over L of (B, C, L) per-location logits reproduce the (B, C) logits?

    The tolerance is relative to the logits' own magnitude, with no floor: with small logits
    (e.g. random init) an absolute floor would let a near-linear regime of a nonlinear head
    (MobileNetV3's conv_head + hardswish) pass as exact.
    """
    scale = float(logits.abs().max())
    return bool((location_logits.mean(-1) - logits).abs().max() <= tolerance * scale)


def default_input_size(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> Tuple[int, int, int]:
    """(C, H, W) the model expects: given, else the size its patch embedding was built for (timm does not
    update ``pretrained_cfg`` when a ViT/Swin/EVA is created with ``img_size=``), else its pretrained_cfg,
    else 3×224×224."""
    if input_size is None:
        built = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if isinstance(built, int):
            built = (built, built)
        if built is not None and len(built) == 2 and all(isinstance(v, int) and v > 0 for v in built):
            input_size = (3, *built)
    if input_size is None:
        input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    if len(input_size) == 2:
        input_size = (3, *input_size)
    return tuple(int(v) for v in input_size)
