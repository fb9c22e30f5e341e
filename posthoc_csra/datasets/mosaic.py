"""``mosaic:SPEC`` / ``mosaic2:`` / ``mosaic3:``: k x k mosaics of another dataset's images, composed at the
evaluation size (the registry builds the inner dataset and checks the size)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import InputError
from .base import DatasetOptions, LabelArrays, MultiLabelDataset
from ..hashing import sha256_json

__all__ = ["MOSAIC_VAL_FRACTION", "Mosaic", "mosaic_builder"]

MOSAIC_VAL_FRACTION = 0.5


class Mosaic(LabelArrays):
    """k x k mosaics of distinct inner images, composed at the evaluation size; mosaic i depends
    only on (seed, i). Targets are the union of the tiles' labels."""

    full_frame = True  # composed at the evaluation size: the whole frame, no centre crop
    size_dependent = True

    def __init__(self, name: str, inner: MultiLabelDataset, k: int, size: int, seed: int = 0,
                 count: Optional[int] = None):
        if k < 2:
            raise InputError(f"mosaic: k must be >= 2, got {k}")
        if size is None or int(size) < k:
            raise InputError(f"{name.split(':')[0]}: size is required (the evaluation resolution, "
                             f"e.g. size=224) and must be >= {k}")
        n = len(inner)
        if n < k * k:
            raise InputError(f"mosaic: {inner.name} has {n} images, fewer than the {k * k} tiles of "
                             f"one mosaic")
        count = n // (k * k) if count is None else int(count)
        if count < 1:
            raise InputError(f"mosaic: count must be >= 1, got {count}")
        self.name, self.inner, self.k, self.size = name, inner, k, int(size)
        self.short_name = f"mosaic{k}x{k}({inner.short_name})"
        self.seed, self.count, self.tile = int(seed), count, int(size) // k
        self.classes, self.label_space = list(inner.classes), inner.label_space
        # The first half of the mosaics take tiles from one half of the inner images, the rest from
        # the other half, so a val/test split of mosaics never shares a tile image. (An inner set
        # too small for two halves draws from all images and cannot be split.)
        pools = inner.split(MOSAIC_VAL_FRACTION, self.seed)
        n_val = int(round(count * MOSAIC_VAL_FRACTION))
        if min(len(p) for p in pools) >= k * k:
            self._split = (np.arange(n_val), np.arange(n_val, count))
        else:
            pools, n_val, self._split = (np.arange(n), np.arange(n)), count, None
        self.tile_indices = np.stack([
            np.random.default_rng([self.seed, i]).choice(pools[0 if i < n_val else 1], size=k * k,
                                                         replace=False)
            for i in range(count)]).astype(np.int64)
        t, g = inner.targets(), inner.ignore_mask()
        self._targets = t[self.tile_indices].max(axis=1).astype(np.uint8)
        self._ignore = g[self.tile_indices].any(axis=1) & (self._targets == 0)
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return self.count

    def split(self, val_fraction: float, seed: int):
        """(val_idx, test_idx) whose mosaics share no tile image (tiles are drawn from disjoint halves)."""
        if self._split is None:
            raise InputError(f"mosaic: {self.inner.name} has too few images ({len(self.inner)}) for two "
                             f"tile-disjoint halves of {self.k * self.k}-tile mosaics")
        if val_fraction != MOSAIC_VAL_FRACTION:
            raise InputError(f"mosaic datasets split in halves (val_fraction={MOSAIC_VAL_FRACTION}), "
                             f"got val_fraction={val_fraction}")
        return self._split

    def tiles(self, i: int) -> list[int]:
        return [int(j) for j in self.tile_indices[i]]

    def compose(self, i: int):
        from PIL import Image
        canvas, t = Image.new("RGB", (self.size, self.size)), self.tile
        for slot, j in enumerate(self.tile_indices[i]):
            im = self.inner[int(j)][0]
            scale = t / min(im.size)
            w, h = max(t, round(im.size[0] * scale)), max(t, round(im.size[1] * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - t) // 2, (h - t) // 2
            im = im.crop((left, top, left + t, top + t))
            canvas.paste(im, ((slot % self.k) * t, (slot // self.k) * t))
        return canvas

    def __getitem__(self, i: int):
        return self.compose(i), self._targets[i].copy(), self._ignore[i].copy()

    def image_id(self, i: int) -> str:
        return f"mosaic{self.k}/seed{self.seed}/{i:06d}"

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = sha256_json({"mosaic": self.k, "seed": self.seed, "count": self.count,
                              "size": self.size, "inner": self.inner.fingerprint()})
            h.update(self.tile_indices.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Mosaic({self.name!r}, {self.count} {self.k}x{self.k} mosaics, size {self.size})"


def mosaic_builder(k: int):
    """The wrapping builder of k x k mosaics: ``build(spec, arg, opts, inner) -> Mosaic``."""
    def build(spec: str, arg: str, opts: DatasetOptions, inner: MultiLabelDataset) -> Mosaic:
        return Mosaic(spec, inner, k, opts.size, seed=opts.seed or 0, count=opts.count)
    return build
