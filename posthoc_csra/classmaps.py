"""ImageNet-1k -> VOC 2007 / COCO 2014 label-space maps (WordNet hyponymy, shipped as JSON).

The JSON files ``data/imagenet_to_<space>.json`` are built by ``benchmarks/build_classmaps.py``;
the shipped files are the registry (``CLASS_MAP_SPACES``), and nothing here needs WordNet.
``pool_members`` is the one place member classes are pooled into a target class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Optional, Sequence

import numpy as np

from .errors import InputError

__all__ = ["ClassMap", "load_class_map", "class_map_for", "pool_members", "map_scores", "POOLS",
           "CLASS_MAP_SPACES", "NUM_IMAGENET"]

NUM_IMAGENET = 1000
POOLS = ("max", "sum")
_PREFIX, _SUFFIX = "imagenet_to_", ".json"


def _shipped_spaces() -> tuple:
    folder = resources.files("posthoc_csra").joinpath("data")
    return tuple(sorted(p.name[len(_PREFIX):-len(_SUFFIX)] for p in folder.iterdir()
                        if p.name.startswith(_PREFIX) and p.name.endswith(_SUFFIX)))


#: target label spaces with a shipped ImageNet-1k map, e.g. ("coco2014", "voc2007")
CLASS_MAP_SPACES = _shipped_spaces()


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
        return np.array([bool(m) for m in self.members], dtype=bool)

    @property
    def mapped_members(self) -> list[list[int]]:
        """The member lists of the mapped classes only (the K columns ``mapped`` selects)."""
        return [list(m) for m in self.members if m]

    def reorder(self, classes: Sequence[str]) -> "ClassMap":
        """The same map with its classes in the order given (e.g. a dataset's class list)."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise InputError(f"ClassMap {self.target_space}: no such classes {unknown}; "
                             f"known: {self.classes}")
        return ClassMap(self.target_space, self.version, list(classes),
                        [list(self.members[index[c]]) for c in classes],
                        [c for c in classes if c in self.unmapped], self.roots)


@lru_cache(maxsize=None)
def _load(target_space: str) -> ClassMap:
    text = resources.files("posthoc_csra").joinpath(
        f"data/{_PREFIX}{target_space}{_SUFFIX}").read_text(encoding="utf-8")
    d = json.loads(text)
    return ClassMap(target_space=d["target_space"], version=str(d["version"]),
                    classes=list(d["classes"]), members=[list(m) for m in d["members"]],
                    unmapped=list(d["unmapped"]), roots=dict(d.get("roots", {})))


def load_class_map(target_space: str) -> ClassMap:
    """The shipped ImageNet-1k -> ``target_space`` map ("voc2007" or "coco2014")."""
    if target_space not in CLASS_MAP_SPACES:
        raise InputError(f"no class map from imagenet-1k to {target_space!r}; "
                         f"shipped maps: {', '.join(CLASS_MAP_SPACES)}")
    m = _load(target_space)
    return ClassMap(m.target_space, m.version, list(m.classes),  # a copy callers may keep
                    [list(x) for x in m.members], list(m.unmapped), dict(m.roots))


def class_map_for(num_classes: int, dataset) -> Optional[ClassMap]:
    """None when a model's ``num_classes`` scores are the dataset's classes, else the shipped
    ImageNet-1k -> ``dataset.label_space`` map in the dataset's class order."""
    if num_classes == len(dataset.classes):
        return None
    if num_classes == NUM_IMAGENET and dataset.label_space in CLASS_MAP_SPACES:
        return load_class_map(dataset.label_space).reorder(dataset.classes)
    raise InputError(f"the model has {num_classes} classes, {dataset.name} has {len(dataset.classes)} "
                     f"({dataset.label_space}); no class map from one to the other (shipped maps: "
                     f"imagenet-1k ({NUM_IMAGENET} classes) to {', '.join(CLASS_MAP_SPACES)}); use a "
                     f"model trained on the dataset's classes")


def pool_members(scores: np.ndarray, members: Sequence[Sequence[int]], pool: str = "max") -> np.ndarray:
    """(N, S) source-class scores -> (N, K): column k is the max or the sum of ``scores[:, members[k]]``
    (NaN for a class without members). Keeps a float input's dtype."""
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    x = np.asarray(scores)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"pool_members expects (N, S) scores, got shape {x.shape}")
    reduce = np.max if pool == "max" else np.sum
    out = np.full((x.shape[0], len(members)), np.nan, dtype=x.dtype)
    for k, m in enumerate(members):
        if len(m):
            out[:, k] = reduce(x[:, list(m)], axis=1)
    return out


def map_scores(probs, class_map: ClassMap, pool: str = "max"):
    """(N, 1000) ImageNet *probabilities* -> (N, C_target) scores; NaN columns for unmapped.

    ``pool="max"`` takes the largest member probability, ``"sum"`` their total (the
    probability of the union, for a softmax).  Returns the input's kind (numpy or torch).
    """
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    is_torch = type(probs).__module__.split(".")[0] == "torch"
    x = probs.detach().float().cpu().numpy() if is_torch else np.asarray(probs)
    if x.ndim != 2 or x.shape[1] != NUM_IMAGENET:
        raise InputError(f"map_scores expects (N, {NUM_IMAGENET}) ImageNet-1k probabilities, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] and (float(x.min()) < 0 or float(x.max()) > 1 + 1e-4):
        raise InputError("map_scores expects probabilities (softmax output) in [0, 1]; "
                         "got values outside - logits?")
    out = pool_members(x, class_map.members, pool)
    if is_torch:
        import torch
        return torch.as_tensor(out, device=probs.device,
                               dtype=probs.dtype if probs.is_floating_point() else None)
    return out
