"""Multi-label evaluation datasets, parsed from spec strings such as ``voc2007:DIR``.

Every dataset yields ``(PIL RGB image, target (C,) uint8 multi-hot, ignore (C,) bool)`` and
has ``name``, ``classes``, ``label_space``, ``image_id(i)``, ``fingerprint()``,
``targets()`` and ``ignore_mask()`` (the last two never decode an image).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch.utils.data

from .classmaps import ClassMap, load_class_map, map_scores  # noqa: F401  (re-exported)

__all__ = ["LabeledImages", "Mosaic", "parse_dataset", "split_indices", "DATASETS",
           "VOC_CLASSES", "ClassMap", "load_class_map", "map_scores"]

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.([A-Za-z0-9]+)$")


def _sha256_json(obj) -> "hashlib._Hash":
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode())


class _LabelArrays(torch.utils.data.Dataset):
    """Targets (N, C) uint8 and ignore mask (N, C) bool held as arrays, readable without decoding."""

    _targets: np.ndarray
    _ignore: np.ndarray

    def targets(self) -> np.ndarray:
        return self._targets.copy()

    def ignore_mask(self) -> np.ndarray:
        return self._ignore.copy()


class LabeledImages(_LabelArrays):
    """Image files with a fixed multi-hot label matrix (and an optional ignore mask)."""

    def __init__(self, name: str, key: str, label_space: str, classes: Sequence[str],
                 paths: Sequence[Path], ids: Sequence[str], targets: np.ndarray,
                 ignore: Optional[np.ndarray] = None):
        self.name, self._key, self.label_space = name, key, label_space
        self.classes = list(classes)
        self.paths, self._ids = [Path(p) for p in paths], list(ids)
        self._targets = np.ascontiguousarray(targets, dtype=np.uint8).reshape(
            len(self._ids), len(self.classes))
        self._ignore = (np.zeros(self._targets.shape, bool) if ignore is None
                        else np.ascontiguousarray(ignore, dtype=bool))
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int):
        from posthoc_csra.images import load_rgb
        return load_rgb(self.paths[i]), self._targets[i].copy(), self._ignore[i].copy()

    def image_id(self, i: int) -> str:
        return self._ids[i]

    def fingerprint(self) -> str:
        """sha256 of spec, classes, per-image id/size/mtime_ns and labels (cached)."""
        if self._fingerprint is None:
            h = _sha256_json({"spec": self._key, "label_space": self.label_space,
                              "classes": self.classes, "n": len(self)})
            for image_id, path in zip(self._ids, self.paths):
                st = os.stat(path)
                h.update(f"\n{image_id}\t{st.st_size}\t{st.st_mtime_ns}".encode())
            h.update(self._targets.tobytes() + self._ignore.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.classes)} cls)"


# ---------------------------------------------------------------- imagenet-real
@lru_cache(maxsize=1)
def _real_labels() -> list:
    import timm
    path = Path(timm.__file__).resolve().parent / "data" / "_info" / "imagenet_real_labels.json"
    if not path.is_file():
        raise FileNotFoundError(f"imagenet-real: timm's ReaL label file {path} is missing "
                                f"(timm {timm.__version__}); install timm>=1.0.9")
    labels = json.loads(path.read_text())
    if len(labels) != 50000:
        raise ValueError(f"imagenet-real: {path} has {len(labels)} entries, expected 50000")
    return labels


def _imagenet_real(spec: str, arg: str) -> LabeledImages:
    from timm.data import ImageNetInfo

    from posthoc_csra.images import readable_extensions
    root = _existing_dir(arg, "imagenet-real", "a folder of ImageNet-val images")
    exts = readable_extensions() | {".jpeg", ".jpg", ".png", ".webp"}
    found: dict[int, tuple[str, Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            m = _VAL_NAME.match(fn)
            if not m or f".{m.group(2).lower()}" not in exts:
                continue
            num, path = int(m.group(1)), Path(dirpath) / fn
            if not 1 <= num <= 50000:
                raise ValueError(f"imagenet-real: {path}: ImageNet-val numbers are 1..50000")
            if num in found:
                raise ValueError(f"imagenet-real: val image {num} found twice: "
                                 f"{found[num][1]} and {path}")
            found[num] = (path.relative_to(root).as_posix(), path)
    if not found:
        raise FileNotFoundError(f"imagenet-real: no files named ILSVRC2012_val_XXXXXXXX.<ext> "
                                f"under {root}; expected ImageNet validation images")
    real = _real_labels()
    kept = [n for n in sorted(found) if real[n - 1]]
    targets = np.zeros((len(kept), 1000), np.uint8)
    for row, n in enumerate(kept):
        targets[row, real[n - 1]] = 1
    ds = LabeledImages(spec, f"imagenet-real:{root}", "imagenet-1k",
                       list(ImageNetInfo().label_descriptions()),
                       [found[n][1] for n in kept], [found[n][0] for n in kept], targets)
    ds.val_numbers = np.array(kept, dtype=np.int64)
    ds.dropped_ids = [found[n][0] for n in sorted(found) if not real[n - 1]]
    ds.n_dropped = len(ds.dropped_ids)
    ds.original_labels = None  # timm does not ship the single-label val ground truth
    return ds


# ---------------------------------------------------------------- VOC 2007
def _split_option(arg: str, default: str) -> tuple[str, str]:
    head, sep, tail = arg.rpartition("@")
    if sep and re.fullmatch(r"[A-Za-z0-9_]+", tail):
        return head, tail
    return arg, default


def _existing_dir(arg: str, prefix: str, what: str) -> Path:
    if not arg:
        raise ValueError(f"{prefix}: missing folder; write {prefix}:DIR")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{prefix}: {root} is not a folder; expected {what}")
    return root


def _voc2007(spec: str, arg: str) -> LabeledImages:
    arg, split = _split_option(arg, "test")
    layout = ("the VOCdevkit layout DIR/{JPEGImages,Annotations,ImageSets/Main} "
              "with DIR = VOCdevkit/VOC2007 or its parent")
    given = _existing_dir(arg, "voc2007", layout)
    root = next((d for d in (given, given / "VOC2007", given / "VOCdevkit" / "VOC2007")
                 if (d / "ImageSets" / "Main").is_dir()), given)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"voc2007: no ImageSets/Main/{split}.txt under {given}; "
                                f"expected {layout}")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    index = {c: k for k, c in enumerate(VOC_CLASSES)}
    targets = np.zeros((len(ids), len(VOC_CLASSES)), np.uint8)
    difficult = np.zeros(targets.shape, bool)
    paths = []
    for row, image in enumerate(ids):
        xml, jpg = root / "Annotations" / f"{image}.xml", root / "JPEGImages" / f"{image}.jpg"
        for path in (xml, jpg):
            if not path.is_file():
                raise FileNotFoundError(f"voc2007: {path} (listed in {split_file}) is missing; "
                                        f"expected {layout}")
        try:
            objects = list(ET.parse(xml).getroot().iter("object"))
        except ET.ParseError as exc:
            raise ValueError(f"voc2007: {xml}: malformed XML ({exc})") from None
        for obj in objects:
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise ValueError(f"voc2007: {xml}: unknown class {name!r}")
            if int(float(obj.findtext("difficult") or 0)):
                difficult[row, index[name]] = True
            else:
                targets[row, index[name]] = 1
        paths.append(jpg)
    ignore = difficult & (targets == 0)
    return LabeledImages(spec, f"voc2007:{root}@{split}", "voc2007", VOC_CLASSES, paths,
                         [p.relative_to(root).as_posix() for p in paths], targets, ignore)


# ---------------------------------------------------------------- COCO 2014
def _coco2014(spec: str, arg: str) -> LabeledImages:
    arg, split = _split_option(arg, "val")
    layout = f"DIR/{split}2014/*.jpg and DIR/annotations/instances_{split}2014.json"
    root = _existing_dir(arg, "coco2014", layout)
    ann_file = root / "annotations" / f"instances_{split}2014.json"
    if not ann_file.is_file():
        raise FileNotFoundError(f"coco2014: no annotations/instances_{split}2014.json under "
                                f"{root}; expected {layout}")
    if not (root / f"{split}2014").is_dir():
        raise FileNotFoundError(f"coco2014: no {split}2014/ folder under {root}; expected {layout}")
    data = json.loads(ann_file.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    col = {c["id"]: k for k, c in enumerate(cats)}
    images = sorted(data["images"], key=lambda im: im["file_name"])
    row = {im["id"]: k for k, im in enumerate(images)}
    targets = np.zeros((len(images), len(cats)), np.uint8)
    for ann in data.get("annotations", []):  # iscrowd annotations count as positives too
        targets[row[ann["image_id"]], col[ann["category_id"]]] = 1
    ids = [f"{split}2014/{im['file_name']}" for im in images]
    paths = [root / i for i in ids]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise FileNotFoundError(f"coco2014: {missing} (listed in {ann_file}) is missing")
    return LabeledImages(spec, f"coco2014:{root}@{split}", "coco2014",
                         [c["name"] for c in cats], paths, ids, targets)


# ---------------------------------------------------------------- CSV
def _read_classes_file(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file {path} not found (expected one class per line)")
    classes = [c.strip() for c in path.read_text(encoding="utf-8").splitlines() if c.strip()]
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup or not classes:
        raise ValueError(f"classes file {path}: {f'duplicate classes {dup}' if dup else 'empty'}")
    return classes


def _csv(spec: str, arg: str, classes_file=None) -> LabeledImages:
    path = Path(arg).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"csv: {path} not found; expected a CSV file with a header "
                                f"'image,labels' and image paths relative to its folder")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "image" not in header or "labels" not in header:
        raise ValueError(f"csv: {path} must start with the header row 'image,labels'; "
                         f"got {rows[0] if rows else 'an empty file'}")
    ci, cl = header.index("image"), header.index("labels")
    entries = []
    for line_no, r in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in r):
            continue
        image = r[ci].strip() if ci < len(r) else ""
        if not image:
            raise ValueError(f"csv: {path} row {line_no}: empty image path")
        labels = [x.strip() for x in re.split(r"[|;]", r[cl] if cl < len(r) else "")]
        entries.append((line_no, image, sorted({x for x in labels if x})))
    if not entries:
        raise ValueError(f"csv: {path} lists no images")
    if classes_file is not None:
        classes = _read_classes_file(classes_file)
        known = set(classes)
        for line_no, image, labels in entries:
            for label in labels:
                if label not in known:
                    raise ValueError(f"csv: {path} row {line_no} ({image}): label {label!r} "
                                     f"is not in the classes file {classes_file}")
    else:
        classes = sorted({x for _, _, labels in entries for x in labels})
    col = {c: k for k, c in enumerate(classes)}
    targets = np.zeros((len(entries), len(classes)), np.uint8)
    ids, paths, seen = [], [], {}
    for row, (line_no, image, labels) in enumerate(entries):
        image_path = path.parent / image
        image_id = Path(os.path.normpath(image)).as_posix()
        if image_id in seen:
            raise ValueError(f"csv: {path} rows {seen[image_id]} and {line_no}: "
                             f"image {image!r} listed twice")
        if not image_path.is_file():
            raise FileNotFoundError(f"csv: {path} row {line_no}: image {image_path} not found "
                                    f"(paths are relative to the CSV's folder)")
        seen[image_id] = line_no
        ids.append(image_id)
        paths.append(image_path)
        targets[row, [col[x] for x in labels]] = 1
    return LabeledImages(spec, f"csv:{path}", "custom", classes, paths, ids, targets)


# ---------------------------------------------------------------- mosaics
class Mosaic(_LabelArrays):
    """k x k mosaics of distinct inner images; mosaic i depends only on (seed, i)."""

    def __init__(self, name: str, inner, k: int, size: int, seed: int = 0,
                 count: Optional[int] = None):
        if k < 2:
            raise ValueError(f"mosaic: k must be >= 2, got {k}")
        if size is None or int(size) < k:
            raise ValueError(f"{name.split(':')[0]}: size is required (the evaluation "
                             f"resolution, e.g. size=224) and must be >= {k}")
        n = len(inner)
        if n < k * k:
            raise ValueError(f"mosaic: {inner.name} has {n} images, fewer than the {k * k} "
                             f"tiles of one mosaic")
        count = n // (k * k) if count is None else int(count)
        if count < 1:
            raise ValueError(f"mosaic: count must be >= 1, got {count}")
        self.name, self.inner, self.k, self.size = name, inner, k, int(size)
        self.seed, self.count, self.tile = int(seed), count, int(size) // k
        self.classes, self.label_space = list(inner.classes), inner.label_space
        # The first half of the mosaics take tiles from one half of the inner images, the rest from
        # the other half, so a val/test split of mosaics never shares a tile image. (An inner set
        # too small for two halves draws from all images and cannot be split.)
        pools = dataset_split(inner, MOSAIC_VAL_FRACTION, self.seed)
        n_val = int(round(count * MOSAIC_VAL_FRACTION))
        if min(len(p) for p in pools) >= k * k:
            self._split = (np.arange(n_val), np.arange(n_val, count))
        else:
            pools, n_val, self._split = (np.arange(n), np.arange(n)), count, None
        self.tile_indices = np.stack([
            np.random.default_rng([self.seed, i]).choice(pools[0 if i < n_val else 1], size=k * k, replace=False)
            for i in range(count)]).astype(np.int64)
        t, g = inner.targets(), inner.ignore_mask()
        self._targets = t[self.tile_indices].max(axis=1).astype(np.uint8)
        self._ignore = g[self.tile_indices].any(axis=1) & (self._targets == 0)
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return self.count

    #: composed at the evaluation resolution: evaluate the whole frame, no centre crop
    full_frame = True

    def split(self, val_fraction: float, seed: int):
        """(val_idx, test_idx) whose mosaics share no tile image (tiles are drawn from disjoint halves)."""
        if self._split is None:
            raise ValueError(f"mosaic: {self.inner.name} has too few images ({len(self.inner)}) for two "
                             f"tile-disjoint halves of {self.k * self.k}-tile mosaics")
        if val_fraction != MOSAIC_VAL_FRACTION:
            raise ValueError(f"mosaic datasets split in halves (val_fraction={MOSAIC_VAL_FRACTION}), "
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
            h = _sha256_json({"mosaic": self.k, "seed": self.seed, "count": self.count,
                              "size": self.size, "inner": self.inner.fingerprint()})
            h.update(self.tile_indices.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Mosaic({self.name!r}, {self.count} {self.k}x{self.k} mosaics, size {self.size})"


def _mosaic(spec: str, arg: str, *, k: int, size=None, classes_file=None, seed=0, count=None):
    if size is None:
        raise ValueError(f"{spec.split(':')[0]}: size is required (mosaics are composed at the "
                         f"evaluation resolution; pass size=224 or the model's input size)")
    inner = parse_dataset(arg, size=size, classes_file=classes_file, seed=seed)
    return Mosaic(spec, inner, k, size, seed=seed, count=count)


# ---------------------------------------------------------------- registry
DATASETS: dict[str, Callable] = {
    "imagenet-real": _imagenet_real,
    "voc2007": _voc2007,
    "coco2014": _coco2014,
    "csv": _csv,
    "mosaic": partial(_mosaic, k=2),
    "mosaic2": partial(_mosaic, k=2),
    "mosaic3": partial(_mosaic, k=3),
}


def parse_dataset(spec: str, *, size: Optional[int] = None, classes_file=None, seed: int = 0,
                  count: Optional[int] = None):
    """Dataset for ``spec`` (``PREFIX:ARG``; see ``DATASETS`` for the prefixes)."""
    prefix, sep, arg = str(spec).partition(":")
    if not sep or prefix not in DATASETS:
        raise ValueError(f"unknown dataset spec {spec!r}; known prefixes: "
                         f"{', '.join(p + ':' for p in DATASETS)}")
    parser = DATASETS[prefix]
    if prefix.startswith("mosaic"):
        return parser(spec, arg, size=size, classes_file=classes_file, seed=seed, count=count)
    if count is not None:
        raise ValueError(f"{prefix}: count applies to mosaic specs only")
    if classes_file is not None and prefix != "csv":
        raise ValueError(f"{prefix}: classes_file applies to csv specs only")
    return parser(spec, arg, classes_file) if prefix == "csv" else parser(spec, arg)


MOSAIC_VAL_FRACTION = 0.5


def dataset_split(dataset, val_fraction: float = 0.5, seed: int = 0):
    """(val_idx, test_idx) of a dataset: its own ``split`` when it has one (mosaics), else ``split_indices``."""
    own = getattr(dataset, "split", None)
    return own(val_fraction, seed) if callable(own) else split_indices(len(dataset), val_fraction, seed)


def split_indices(n: int, val_fraction: float = 0.5, seed: int = 0):
    """Deterministic disjoint (val_idx, test_idx), each sorted, covering range(n)."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(int(n))
    n_val = int(round(n * val_fraction))
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])
