"""ImageNet-1k -> VOC 2007 / COCO 2014 label-space maps (WordNet hyponymy, shipped as JSON).

The JSON files are built by ``benchmarks/build_classmaps.py``; nothing here needs WordNet.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np

__all__ = ["ClassMap", "load_class_map", "map_scores", "CLASS_MAP_SPACES"]

CLASS_MAP_SPACES = ("voc2007", "coco2014")
NUM_IMAGENET = 1000


@dataclass(frozen=True)
class ClassMap:
    """Target class c is scored by pooling the ImageNet probabilities ``members[c]``."""

    target_space: str
    version: str
    classes: list[str]
    members: list[list[int]]
    unmapped: list[str]
    roots: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if len(self.classes) != len(self.members):
            raise ValueError("ClassMap: classes and members differ in length")
        for name, m in zip(self.classes, self.members):
            if any(not 0 <= i < NUM_IMAGENET for i in m):
                raise ValueError(f"ClassMap: {name!r} has an ImageNet index outside 0..999")
        empty = [c for c, m in zip(self.classes, self.members) if not m]
        if sorted(empty) != sorted(self.unmapped):
            raise ValueError(f"ClassMap: unmapped {self.unmapped} != memberless classes {empty}")

    @property
    def mapped(self) -> np.ndarray:
        """(C,) bool: which target classes have at least one ImageNet member."""
        return np.array([bool(m) for m in self.members])

    def reorder(self, classes: Sequence[str]) -> "ClassMap":
        """The same map with its classes in the order given (e.g. a dataset's class list)."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise ValueError(f"ClassMap {self.target_space}: no such classes {unknown}; "
                             f"known: {self.classes}")
        return ClassMap(self.target_space, self.version, list(classes),
                        [list(self.members[index[c]]) for c in classes],
                        [c for c in classes if c in self.unmapped], self.roots)


@lru_cache(maxsize=None)
def _load(target_space: str) -> ClassMap:
    text = resources.files("posthoc_csra").joinpath(
        f"data/imagenet_to_{target_space}.json").read_text(encoding="utf-8")
    d = json.loads(text)
    return ClassMap(target_space=d["target_space"], version=str(d["version"]),
                    classes=list(d["classes"]), members=[list(m) for m in d["members"]],
                    unmapped=list(d["unmapped"]), roots=dict(d.get("roots", {})))


def load_class_map(target_space: str) -> ClassMap:
    """The shipped ImageNet-1k -> ``target_space`` map ("voc2007" or "coco2014")."""
    if target_space not in CLASS_MAP_SPACES:
        raise ValueError(f"no class map from imagenet-1k to {target_space!r}; "
                         f"known: {', '.join(CLASS_MAP_SPACES)}")
    m = _load(target_space)
    return ClassMap(m.target_space, m.version, list(m.classes),  # a copy callers may keep
                    [list(x) for x in m.members], list(m.unmapped), dict(m.roots))


def map_scores(probs, class_map: ClassMap, pool: str = "max"):
    """(N, 1000) ImageNet *probabilities* -> (N, C_target) scores; NaN columns for unmapped.

    ``pool="max"`` takes the largest member probability, ``"sum"`` their total (the
    probability of the union, for a softmax).  Returns the input's kind (numpy or torch).
    """
    if pool not in ("max", "sum"):
        raise ValueError(f"pool must be 'max' or 'sum', got {pool!r}")
    is_torch = type(probs).__module__.split(".")[0] == "torch"
    if is_torch:
        import torch
        x = probs.detach()
        if not x.is_floating_point():
            x = x.float()
    else:
        x = np.asarray(probs)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
    if x.ndim != 2 or x.shape[1] != NUM_IMAGENET:
        raise ValueError(f"map_scores expects (N, {NUM_IMAGENET}) ImageNet-1k probabilities, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] and (float(x.min()) < 0 or float(x.max()) > 1 + 1e-4):
        raise ValueError("map_scores expects probabilities (softmax output) in [0, 1]; "
                         "got values outside - logits?")
    cols = []
    for m in class_map.members:
        if not m:
            nan_col = (torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device)
                       if is_torch else np.full(x.shape[0], np.nan, dtype=x.dtype))
            cols.append(nan_col)
            continue
        sub = x[:, list(m)]
        if is_torch:
            cols.append(sub.amax(dim=1) if pool == "max" else sub.sum(dim=1))
        else:
            cols.append(sub.max(axis=1) if pool == "max" else sub.sum(axis=1))
    if is_torch:
        if not cols:
            return x.new_zeros((x.shape[0], 0))
        return torch.stack(cols, dim=1)
    if not cols:
        return np.zeros((x.shape[0], 0), dtype=x.dtype)
    return np.stack(cols, axis=1)
