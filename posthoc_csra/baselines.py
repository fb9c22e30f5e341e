"""Training-free pooling baselines timm already ships, computed from the same backbone pass as CSRA.

Each baseline is a small registered object: ``unavailable(scorer)`` says why it does not apply to a
model (None when it does), ``logits(scorer, out)`` gives its (B, C) logits from a
``scorer.forward_locations`` output. They apply to spatial feature maps feeding a linear classifier
(the ``exact`` pool→linear heads), where they are what timm would compute without retraining:

* ``max-pool``: the classifier on ``max_k x_k`` (timm's ``global_pool='max'``);
* ``avgmax-pool``: the classifier on ``½(mean_k x_k + max_k x_k)`` (``global_pool='avgmax'``);
  the classifier is affine, so this is ``½(logits + max-pool logits)``;
* ``test-time-pool``: timm's ``TestTimePoolHead``: average-pool the features with the model's native
  pool size (``pretrained_cfg['pool_size']``), stride 1, classify every window, then average+max over
  windows. Average pooling and the classifier are both affine, so the windows' logits are the average
  pool of the per-location logits. At (or below) the native size there is one window: the model itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Tuple

if TYPE_CHECKING:  # torch stays out of import time
    from torch import Tensor


class Baseline:
    name = ""

    def unavailable(self, scorer) -> Optional[str]:
        """Why this baseline does not apply to ``scorer``'s model; None when it does."""
        if scorer.feature_format not in ("NCHW", "NHWC"):
            return (f"needs a spatial feature map; {scorer.feature_format} tokens are pooled by the head "
                    f"({scorer.head_kind})")
        if not scorer.exact:
            return f"needs a pool→linear head; {scorer.head_kind} has a norm/MLP/activation after pooling"
        return None

    def logits(self, scorer, out) -> "Tensor":
        """(B, C) logits of this baseline from a ``forward_locations`` output."""
        raise NotImplementedError


class MaxPool(Baseline):
    name = "max-pool"

    def logits(self, scorer, out):
        if self.name not in out.derived:  # computed once per pass: avgmax-pool reuses it
            out.derived[self.name] = scorer.head_on_locations(out.features, reduce="max")
        return out.derived[self.name]


class AvgMaxPool(Baseline):
    name = "avgmax-pool"

    def logits(self, scorer, out):
        return 0.5 * (out.logits + BASELINES["max-pool"].logits(scorer, out))


class TestTimePool(Baseline):
    name = "test-time-pool"

    def unavailable(self, scorer):
        reason = super().unavailable(scorer)
        if reason is None and native_pool_size(scorer.model) is None:
            reason = "the model's pretrained_cfg has no pool_size (the native feature grid)"
        return reason

    def logits(self, scorer, out):
        import torch.nn.functional as F

        b, c, _ = out.location_logits.shape
        grid = out.location_logits.reshape(b, c, *out.grid)
        pool_h, pool_w = native_pool_size(scorer.model)
        kernel = (min(pool_h, out.grid[0]), min(pool_w, out.grid[1]))
        windows = F.avg_pool2d(grid, kernel_size=kernel, stride=1).flatten(2)  # (B, C, windows)
        return 0.5 * (windows.mean(-1) + windows.amax(-1))


def native_pool_size(model) -> Optional[Tuple[int, int]]:
    """(h, w) of the feature grid at the size the model was trained at, from its pretrained_cfg."""
    pool = (getattr(model, "pretrained_cfg", None) or {}).get("pool_size")
    if not pool or len(pool) != 2:
        return None
    return int(pool[0]), int(pool[1])


#: Every baseline by name (method names in the bench table; ``methods.METHODS`` registers each as a method).
BASELINES: Dict[str, Baseline] = {b.name: b for b in (MaxPool(), AvgMaxPool(), TestTimePool())}
__all__ = ["Baseline", "BASELINES", "native_pool_size"]
