"""Score spaces: what is ranked, as small registered objects (torch is imported inside the methods).

A space turns one backbone pass — the model's logits (B, C) and the classifier applied at every
location, ``z`` (B, C, L) — into the two parts of the rule ``score = base + (λ/H)·Σ_T att_T``:

* ``base(logits)`` (B, C): the model's own output in this space, so λ = 0 reproduces the model;
* ``attention_terms(z, heads, classifier)`` (B, H, C): one attention term per head (``attention.py``),
  *in the base's units*, so that the sum above is the paper's head up to a positive affine map per class
  (every per-class ranking is the paper's, and a λ read in the paper means the same here).

Adding a space (e.g. ``sigmoid`` for sigmoid-trained multi-label models) is one subclass registered
in ``SPACES`` plus its tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from .errors import InputError

if TYPE_CHECKING:  # torch stays out of import time (instant CLI --help)
    from torch import Tensor

#: (image, class, location) values of location scores formed at once when a scorer asks for attention terms
#: (``ScoreSpace.attention_terms``): on the CPU a chunk of whole images at a time (4 MiB of fp32), not one tensor
#: of the batch's size. A fresh batch-sized temporary per call can cost as much as the rule (tens of MB the C
#: library may hand back to the OS and page in again on the next call); per image every number is the same bit
#: for bit (tests/test_rule.py).
CHUNK_ELEMENTS = 1 << 20


def image_chunks(z: "Tensor") -> Tuple["Tensor", ...]:
    """(B, …) → views of whole images, each of at most ``CHUNK_ELEMENTS`` values (at least one image); the
    whole batch on other devices (their caching allocators reuse memory) and while compiling or exporting
    (a symbolic batch stays symbolic)."""
    import torch

    if z.device.type != "cpu" or torch.compiler.is_compiling():
        return (z,)
    per_image = max(1, z[0].numel()) if len(z) else 1
    return z.split(max(1, CHUNK_ELEMENTS // per_image))


@dataclass(frozen=True)
class LinearClassifier:
    """The final linear classifier's bias ``b`` (C,) and row norms ``‖w_c‖`` (C,)."""

    bias: "Tensor"
    weight_norm: "Tensor"


class ScoreSpace:
    """One space. Subclasses set ``name`` and ``label`` and implement the three score methods."""

    name = ""
    label = ""
    #: what the per-location score ``s`` is, for figure titles
    location_label = ""
    #: decimals a score of this space is printed with
    digits = 3
    #: ``base(logits)`` is the logits themselves: the statistics cache stores them once, as ``logits``,
    #: instead of a ``{name}_base`` array (``cache.STAT_KEYS``)
    base_is_logits = False
    #: every location score lies in [0, 1] (``attention.SoftmaxHead.terms``: no max to subtract)
    bounded = False

    def base(self, logits: "Tensor") -> "Tensor":
        """(B, C) model logits → (B, C) base scores."""
        raise NotImplementedError

    def location_scores(self, z: "Tensor", classifier: Optional[LinearClassifier] = None) -> "Tensor":
        """(B, C, L) per-location logits → (B, C, L) the attention's input ``s``."""
        raise NotImplementedError

    def attention_terms(self, z: "Tensor", heads: Sequence,
                        classifier: Optional[LinearClassifier] = None, scores: Optional["Tensor"] = None) -> "Tensor":
        """(B, C, L) per-location logits → (B, H, C) attention terms in the base's units, one per head.

        ``scores``: ``location_scores(z, classifier)`` when the caller already has them (computed once);
        otherwise they are formed a chunk of images at a time (``image_chunks``)."""
        import torch

        from .rule import attention_terms

        if scores is not None:
            return attention_terms(scores, heads, bounded=self.bounded)
        return torch.cat([attention_terms(self.location_scores(chunk, classifier), heads, bounded=self.bounded)
                          for chunk in image_chunks(z)])

    def location_statistics(self, z: "Tensor", heads: Sequence,
                            classifier: Optional[LinearClassifier] = None) -> Tuple["Tensor", "Tensor"]:
        """(B, C, L) per-location logits → (the mean of ``s`` over locations (B, C), the attention terms
        (B, H, C)): what the statistics cache stores per space, with ``s`` formed once, for the whole batch
        (here a batch-sized temporary is small beside the backbone pass, and chunks of images would leave the
        C library's heap holding more memory between batches)."""
        s = self.location_scores(z, classifier)
        return s.mean(dim=-1), self.attention_terms(z, heads, classifier, scores=s)

    def member_pool(self, pool: str) -> str:
        """How an ImageNet→VOC/COCO class map pools member classes ("max" or "sum") in this space."""
        return pool

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LogitSpace(ScoreSpace):
    """The paper. ``s_kc = (z_kc − b_c)/‖w_c‖``: the bias-free, L2-normalised classifier at location k.

    The paper's head is ``y_c = mean_k s_kc + (λ/H)·Σ_T att_T(s_c)``. For a pool→linear head the model's
    logit is ``‖w_c‖·mean_k s_kc + b_c``, so ``logit_c + (λ/H)·‖w_c‖·Σ_T att_T(s_c)`` is the paper's
    ``y_c`` times ``‖w_c‖`` plus ``b_c``: the same ranking of every class, in the model's logit units.
    At T = ∞ the term is ``max_k z_kc − b_c`` (the "4 lines": ``mean z + λ·max z``). A head whose final
    layer is not linear has no ``w_c``: then ``s = z``.
    """

    name = "logit"
    label = "logits"
    location_label = "logit of the L2-normalised classifier"
    digits = 2
    base_is_logits = True

    def base(self, logits):
        return logits

    def location_scores(self, z, classifier=None):
        if classifier is None:
            return z
        return (z - classifier.bias.view(1, -1, 1)) / classifier.weight_norm.view(1, -1, 1)

    def attention_terms(self, z, heads, classifier=None, scores=None):
        from .rule import attention_terms

        if classifier is None:
            return attention_terms(z, heads)
        # ‖w_c‖·att_T((z − b_c)/‖w_c‖) = att at temperature T/‖w_c‖ of z itself, minus b_c: the softmax over
        # locations ignores the constant b_c/‖w_c‖, and its weighted mean of (z − b_c)/‖w_c‖, scaled by ‖w_c‖,
        # is that of z minus b_c (T = ∞: max_k z_kc − b_c; any head that commutes with a positive affine map
        # of s, such as the max, ignores the scale). No (B, C, L) scores are formed.
        terms = attention_terms(z, heads, scale=classifier.weight_norm.reciprocal())
        return terms - classifier.bias.view(1, 1, -1)

    def member_pool(self, pool):
        return "max"  # a sum of logits has no meaning


class ProbSpace(ScoreSpace):
    """Softmax probabilities: base ``softmax(logits)``, ``s_k = softmax over classes of z_k``.

    Softmax-trained ImageNet models rank better on probabilities than on logits.
    """

    name = "prob"
    label = "softmax probabilities"
    location_label = "softmax probability"
    digits = 4
    bounded = True

    def base(self, logits):
        return logits.softmax(dim=1)

    def location_scores(self, z, classifier=None):
        # over classes as a softmax over the last dimension: per-location logits are stored (B, L, C)
        # (``heads.per_location_logits``), where that is the contiguous, fast and most accurate kernel
        return z.transpose(1, 2).softmax(dim=-1).transpose(1, 2)


#: The registry: every space by name (the only list; ``choices.SPACES`` is its keys).
SPACES: Dict[str, ScoreSpace] = {space.name: space for space in (LogitSpace(), ProbSpace())}
SPACE_NAMES: Tuple[str, ...] = tuple(SPACES)


def get_space(space) -> ScoreSpace:
    """The registered space named ``space`` (a ScoreSpace passes through)."""
    if isinstance(space, ScoreSpace):
        return space
    try:
        return SPACES[space]
    except (KeyError, TypeError):
        raise InputError(f"unknown score space {space!r}; choose one of {', '.join(SPACES)}") from None


__all__ = ["ScoreSpace", "LogitSpace", "ProbSpace", "LinearClassifier", "SPACES", "SPACE_NAMES", "get_space",
           "image_chunks", "CHUNK_ELEMENTS"]
