"""Multi-label evaluation datasets, parsed from spec strings such as ``voc2007:DIR@trainval``.

Every dataset is a ``MultiLabelDataset``: item i is ``(PIL RGB image, target (C,) uint8 multi-hot,
ignore (C,) bool)``, and ``targets()`` / ``ignore_mask()`` give the (N, C) arrays without decoding
an image. Each spec prefix is one registered ``DatasetKind`` (``DATASETS``) that declares the options
it takes; wrapping kinds (``mosaic*:SPEC``, ``subset:N:SPEC``, ``part:K/N:SPEC``) hold another spec, and
``dataset_kind`` / ``dataset_options`` / ``is_size_dependent`` read that chain in one place.

A bad dataset file raises one ``InputError`` / ``MissingInputError`` naming the file, the line or
image and the fix, never a silently wrong label matrix. The module imports only numpy.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from .classmaps import ClassMap, load_class_map, map_scores  # noqa: F401  (re-exported)
from .errors import InputError, MissingInputError

__all__ = ["MultiLabelDataset", "DatasetKind", "DatasetOptions", "DATASETS", "LabeledImages", "Mosaic",
           "Subset", "Part", "partition", "DatasetWarning", "parse_dataset", "dataset_kind", "dataset_options",
           "is_size_dependent", "dataset_split", "split_indices", "VOC_CLASSES", "ClassMap",
           "load_class_map", "map_scores"]

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
MOSAIC_VAL_FRACTION = 0.5
_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.([A-Za-z0-9]+)$")


class DatasetWarning(UserWarning):
    """A dataset is usable but its files disagree (e.g. VOC label files vs XML annotations)."""


@runtime_checkable
class MultiLabelDataset(Protocol):
    """What bench, the cache and the notebook use of a dataset; every kind in ``DATASETS`` builds one."""

    name: str             # the full spec it was parsed from
    short_name: str       # a label for tables: "voc2007@trainval", "mosaic2x2(imagenet-real)", ...
    classes: list         # the C class names, in label-column order
    label_space: str      # "imagenet-1k", "voc2007", "coco2014" or "custom" (class maps are keyed by it)
    full_frame: bool      # evaluate the whole image resized to S×S, no centre crop (VOC, COCO, mosaics)
    size_dependent: bool  # built at the evaluation size S (mosaics): one dataset per size

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple: ...  # (PIL RGB image, (C,) uint8, (C,) bool)

    def image_id(self, i: int) -> str: ...

    def fingerprint(self) -> str: ...

    def targets(self) -> np.ndarray: ...  # (N, C) uint8

    def ignore_mask(self) -> np.ndarray: ...  # (N, C) bool

    def split(self, val_fraction: float, seed: int) -> tuple: ...  # (val_idx, test_idx), disjoint, sorted


def _sha256_json(obj) -> "hashlib._Hash":
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode())


def split_indices(n: int, val_fraction: float = 0.5, seed: int = 0):
    """Deterministic disjoint (val_idx, test_idx), each sorted, covering range(n)."""
    if not 0.0 <= val_fraction <= 1.0:
        raise InputError(f"val_fraction must be in [0, 1], got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(int(n))
    n_val = int(round(n * val_fraction))
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def dataset_split(dataset: MultiLabelDataset, val_fraction: float = 0.5, seed: int = 0):
    """(val_idx, test_idx) of a dataset: ``dataset.split(val_fraction, seed)``."""
    return dataset.split(val_fraction, seed)


class _LabelArrays:
    """Targets (N, C) uint8 and ignore mask (N, C) bool held as arrays, readable without decoding."""

    _targets: np.ndarray
    _ignore: np.ndarray

    def targets(self) -> np.ndarray:
        return self._targets.copy()

    def ignore_mask(self) -> np.ndarray:
        return self._ignore.copy()


class LabeledImages(_LabelArrays):
    """Image files with a fixed multi-hot label matrix (and an optional ignore mask).

    ``key`` identifies the source in the fingerprint (spec with resolved paths); ``full_frame``:
    evaluate without the centre crop (False: timm's crop, as for ImageNet).
    """

    size_dependent = False

    def __init__(self, name: str, key: str, label_space: str, classes: Sequence[str],
                 paths: Sequence[Path], ids: Sequence[str], targets: np.ndarray,
                 ignore: Optional[np.ndarray] = None, *, full_frame: bool = False,
                 short_name: Optional[str] = None):
        self.name, self._key, self.label_space = name, key, label_space
        self.short_name = short_name or name
        self.full_frame = bool(full_frame)
        self.classes = list(classes)
        self.paths, self._ids = [Path(p) for p in paths], list(ids)
        if len(self.paths) != len(self._ids):
            raise ValueError(f"LabeledImages: {len(self.paths)} paths but {len(self._ids)} ids")
        self._targets = np.ascontiguousarray(targets, dtype=np.uint8).reshape(
            len(self._ids), len(self.classes))
        self._ignore = (np.zeros(self._targets.shape, bool) if ignore is None
                        else np.ascontiguousarray(ignore, dtype=bool).reshape(self._targets.shape))
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int):
        from posthoc_csra.images import load_rgb
        return load_rgb(self.paths[i]), self._targets[i].copy(), self._ignore[i].copy()

    def image_id(self, i: int) -> str:
        return self._ids[i]

    def split(self, val_fraction: float, seed: int):
        return split_indices(len(self), val_fraction, seed)

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


# ---------------------------------------------------------------- spec options and file helpers
@dataclass(frozen=True)
class DatasetOptions:
    """What a kind's builder gets besides its spec argument (only the options its kind declares)."""

    size: Optional[int] = None           # the evaluation size S (size-dependent kinds need it)
    split: Optional[str] = None          # from ``@SPLIT`` (kinds with a default split)
    classes_file: Optional[Path] = None  # csv: one class per line
    seed: Optional[int] = None           # mosaics: which tiles
    count: Optional[int] = None          # mosaics: how many


def _split_option(arg: str, default: str) -> tuple[str, str]:
    head, sep, tail = arg.rpartition("@")
    if sep and re.fullmatch(r"[A-Za-z0-9_]+", tail):
        return head, tail
    return arg, default


def _existing_dir(arg: str, prefix: str, what: str) -> Path:
    if not arg:
        raise InputError(f"{prefix}: missing folder; write {prefix}:DIR")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise MissingInputError(f"{prefix}: {root} is not a folder; expected {what}")
    return root


def _text(path: Path, prefix: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{prefix}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         f"save it as UTF-8 text") from None


def _lines(path: Path, prefix: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of the non-blank lines of a text file."""
    return [(no, line.split()) for no, line in enumerate(_text(path, prefix).splitlines(), start=1)
            if line.strip()]


def _first_missing(paths: Sequence[Path]) -> tuple[int, Optional[Path]]:
    missing = [p for p in paths if not p.is_file()]
    return len(missing), (missing[0] if missing else None)


# ---------------------------------------------------------------- imagenet-real
@lru_cache(maxsize=1)
def _real_labels() -> list:
    import timm
    path = Path(timm.__file__).resolve().parent / "data" / "_info" / "imagenet_real_labels.json"
    if not path.is_file():
        raise MissingInputError(f"imagenet-real: timm's ReaL label file {path} is missing "
                                f"(timm {timm.__version__}); install timm>=1.0.9")
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"imagenet-real: {path} line {exc.lineno}: malformed JSON ({exc.msg}); "
                         f"reinstall timm") from None
    if not isinstance(labels, list) or len(labels) != 50000:
        raise InputError(f"imagenet-real: {path} should list 50000 label lists; reinstall timm")
    for n, entry in enumerate(labels, start=1):
        if not isinstance(entry, list) or any(not isinstance(c, int) or not 0 <= c < 1000 for c in entry):
            raise InputError(f"imagenet-real: {path}: entry {n} (ILSVRC2012_val_{n:08d}) is {entry!r}, "
                             f"expected a list of class indices in 0..999; reinstall timm")
    return labels


def _imagenet_real(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
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
                raise InputError(f"imagenet-real: {path}: ImageNet-val numbers are 1..50000; "
                                 f"rename or remove the file")
            if num in found:
                raise InputError(f"imagenet-real: val image {num} found twice: {found[num][1]} and "
                                 f"{path}; keep one of them")
            found[num] = (path.relative_to(root).as_posix(), path)
    if not found:
        raise MissingInputError(f"imagenet-real: no files named ILSVRC2012_val_XXXXXXXX.<ext> under "
                                f"{root}; expected ImageNet validation images")
    real = _real_labels()
    kept = [n for n in sorted(found) if real[n - 1]]  # images without a ReaL label are left out
    targets = np.zeros((len(kept), 1000), np.uint8)
    for row, n in enumerate(kept):
        targets[row, real[n - 1]] = 1
    return LabeledImages(spec, f"imagenet-real:{root}", "imagenet-1k",
                         list(ImageNetInfo().label_descriptions()),
                         [found[n][1] for n in kept], [found[n][0] for n in kept], targets,
                         full_frame=False, short_name="imagenet-real")


# ---------------------------------------------------------------- VOC 2007
_VOC_LAYOUT = ("the VOCdevkit layout DIR/ImageSets/Main/<split>.txt, DIR/JPEGImages/<id>.jpg and "
               "labels in DIR/ImageSets/Main/<class>_<split>.txt or DIR/Annotations/<id>.xml, "
               "with DIR = VOCdevkit/VOC2007, VOCdevkit or a folder holding VOC2007/")
_VOC_VALUES = {1: "1 (present)", 0: "0 (difficult only)", -1: "-1 (absent)"}
_VOC_CLASS_FILE = re.compile(r"^(%s)_\w+\.txt$" % "|".join(VOC_CLASSES))


def _voc_root(arg: str) -> Path:
    given = _existing_dir(arg, "voc2007", _VOC_LAYOUT)
    for root in (given, given / "VOC2007", given / "VOCdevkit" / "VOC2007"):
        if (root / "ImageSets" / "Main").is_dir():
            return root
    raise MissingInputError(f"voc2007: no ImageSets/Main folder in {given}, {given}/VOC2007 or "
                            f"{given}/VOCdevkit/VOC2007; expected {_VOC_LAYOUT}")


def _voc_split_ids(root: Path, split: str) -> tuple[Path, list[str]]:
    main = root / "ImageSets" / "Main"
    split_file = main / f"{split}.txt"
    if not split_file.is_file():
        splits = sorted(p.stem for p in main.glob("*.txt") if not _VOC_CLASS_FILE.match(p.name))
        raise MissingInputError(
            f"voc2007: no split file {split_file}; splits there: {', '.join(splits) or 'none'}"
            + (f" (write voc2007:DIR@{splits[0]})" if splits else f"; expected {_VOC_LAYOUT}"))
    ids: list[str] = []
    seen: dict[str, int] = {}
    for no, fields in _lines(split_file, "voc2007"):
        if len(fields) != 1:
            raise InputError(f"voc2007: {split_file} line {no}: expected one image id, got "
                             f"{' '.join(fields)!r}")
        if fields[0] in seen:
            raise InputError(f"voc2007: {split_file} lines {seen[fields[0]]} and {no}: image "
                             f"{fields[0]} listed twice; remove the duplicate")
        seen[fields[0]] = no
        ids.append(fields[0])
    if not ids:
        raise InputError(f"voc2007: {split_file} lists no images")
    return split_file, ids


def _voc_label_files(root: Path, split: str, split_file: Path, ids: list[str]) -> Optional[np.ndarray]:
    """(N, 20) int8 in {1, 0, -1} from ImageSets/Main/<class>_<split>.txt; None when there are none."""
    files = [root / "ImageSets" / "Main" / f"{c}_{split}.txt" for c in VOC_CLASSES]
    absent = [f.name for f in files if not f.is_file()]
    if len(absent) == len(files):
        return None
    if absent:
        raise MissingInputError(f"voc2007: {len(absent)} of the 20 label files of split {split} are "
                                f"missing from {root / 'ImageSets' / 'Main'}: {', '.join(absent)}; "
                                f"restore them (or remove all 20 to read Annotations/)")
    row = {image: r for r, image in enumerate(ids)}
    state = np.zeros((len(ids), len(VOC_CLASSES)), np.int8)
    for k, path in enumerate(files):
        seen: dict[str, int] = {}
        extra: list[str] = []
        for no, fields in _lines(path, "voc2007"):
            value = int(fields[1]) if len(fields) == 2 and re.fullmatch(r"[+-]?\d+", fields[1]) else None
            if value not in _VOC_VALUES:
                raise InputError(f"voc2007: {path} line {no}: expected 'IMAGE_ID LABEL' with LABEL "
                                 f"{', '.join(_VOC_VALUES.values())}; got {' '.join(fields)!r}")
            image = fields[0]
            if image in seen:
                raise InputError(f"voc2007: {path} lines {seen[image]} and {no}: image {image} "
                                 f"listed twice; remove the duplicate")
            seen[image] = no
            if image in row:
                state[row[image], k] = value
            else:
                extra.append(image)
        missing = [image for image in ids if image not in seen]
        if missing or extra:
            parts = [f"{len(found)} image(s) {what} (first {found[0]})" for found, what in
                     ((missing, "of the split missing"), (extra, "not in the split")) if found]
            raise InputError(f"voc2007: {path} lists other images than {split_file}: {'; '.join(parts)}; "
                             f"the label files and the split file must come from the same split")
    return state


def _voc_xml(root: Path, split_file: Path, ids: list[str]) -> np.ndarray:
    """(N, 20) int8 in {1, 0, -1} from Annotations/<id>.xml (the devkit's rule: 1 when a non-difficult
    object of the class is present, 0 when only difficult ones are, -1 when none)."""
    index = {c: k for k, c in enumerate(VOC_CLASSES)}
    state = np.full((len(ids), len(VOC_CLASSES)), -1, np.int8)
    for r, image in enumerate(ids):
        xml = root / "Annotations" / f"{image}.xml"
        if not xml.is_file():
            raise MissingInputError(f"voc2007: {xml} (image {image} of {split_file}) is missing; "
                                    f"restore it, or provide the label files ImageSets/Main/<class>_<split>.txt")
        try:
            objects = list(ET.parse(xml).getroot().iter("object"))
        except ET.ParseError as exc:
            raise InputError(f"voc2007: {xml}: malformed XML ({exc}); restore the file from the "
                             f"VOC2007 archive") from None
        for obj in objects:
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise InputError(f"voc2007: {xml}: unknown class {name!r}; VOC 2007 classes: "
                                 f"{', '.join(VOC_CLASSES)}")
            difficult = (obj.findtext("difficult") or "0").strip()
            if difficult not in ("0", "1"):
                raise InputError(f"voc2007: {xml}: object {name!r} has <difficult>{difficult}"
                                 f"</difficult>; expected 0 or 1")
            k = index[name]
            state[r, k] = max(state[r, k], 0 if difficult == "1" else 1)
    return state


def _voc2007(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    root, split = _voc_root(arg), opts.split
    split_file, ids = _voc_split_ids(root, split)
    state = _voc_label_files(root, split, split_file, ids)
    has_xml = (root / "Annotations").is_dir()
    if state is None and not has_xml:
        raise MissingInputError(f"voc2007: no labels for split {split} in {root}: neither "
                                f"ImageSets/Main/<class>_{split}.txt nor Annotations/; expected {_VOC_LAYOUT}")
    if state is None:
        state = _voc_xml(root, split_file, ids)
    elif has_xml:
        xml_state = _voc_xml(root, split_file, ids)
        differ = np.argwhere(state != xml_state)
        if len(differ):
            r, k = differ[0]
            warnings.warn(
                f"voc2007: the label files and Annotations/ of {root} disagree on {len(differ)} "
                f"(image, class) entries of split {split}; first: image {ids[r]}, {VOC_CLASSES[k]}: "
                f"label file {_VOC_VALUES[int(state[r, k])]}, XML {_VOC_VALUES[int(xml_state[r, k])]}; "
                f"using the label files", DatasetWarning, stacklevel=3)
    paths = [root / "JPEGImages" / f"{image}.jpg" for image in ids]
    n_missing, missing = _first_missing(paths)
    if missing is not None:
        raise MissingInputError(f"voc2007: {n_missing} image(s) listed in {split_file} are missing, "
                                f"first {missing}; expected JPEGImages/<id>.jpg for every id")
    return LabeledImages(spec, f"voc2007:{root}@{split}", "voc2007", VOC_CLASSES, paths,
                         [p.relative_to(root).as_posix() for p in paths], state == 1, state == 0,
                         full_frame=True, short_name=f"voc2007@{split}")


# ---------------------------------------------------------------- COCO (instances files)
def _coco_records(data, key: str, fields: tuple, ann_file: Path, prefix: str) -> list:
    records = data.get(key) if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise InputError(f"{prefix}: {ann_file} has no list {key!r}; expected a COCO instances file "
                         f"with 'images', 'annotations' and 'categories'")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or any(f not in rec for f in fields):
            raise InputError(f"{prefix}: {ann_file}: {key}[{i}] = {str(rec)[:80]} lacks "
                             f"{' / '.join(fields)}; re-download the annotation file")
    return records


def _unique(values: list, what: str, ann_file: Path, prefix: str) -> None:
    seen: set = set()
    for v in values:
        if v in seen:
            raise InputError(f"{prefix}: {ann_file}: {what} {v!r} appears twice; each must be unique")
        seen.add(v)


def _coco_instances(ann_file: Path, prefix: str) -> tuple[list, list, np.ndarray]:
    """(categories sorted by id, images sorted by file_name, (N, C) uint8 targets) of a COCO instances
    file. Only ``image_id`` and ``category_id`` of an annotation are read (image-level labels without
    boxes are valid); an image without annotations is kept, negative for every class; iscrowd
    annotations count as positives too."""
    try:
        data = json.loads(_text(ann_file, prefix))
    except json.JSONDecodeError as exc:
        raise InputError(f"{prefix}: {ann_file} line {exc.lineno} column {exc.colno}: malformed JSON "
                         f"({exc.msg}); re-download the annotation file") from None
    cats = sorted(_coco_records(data, "categories", ("id", "name"), ann_file, prefix), key=lambda c: c["id"])
    images = sorted(_coco_records(data, "images", ("id", "file_name"), ann_file, prefix),
                    key=lambda im: im["file_name"])
    anns = _coco_records(data, "annotations", ("image_id", "category_id"), ann_file, prefix)
    _unique([c["id"] for c in cats], "category id", ann_file, prefix)
    _unique([c["name"] for c in cats], "category name", ann_file, prefix)
    _unique([im["id"] for im in images], "image id", ann_file, prefix)
    _unique([im["file_name"] for im in images], "image file_name", ann_file, prefix)
    col = {c["id"]: k for k, c in enumerate(cats)}
    row = {im["id"]: k for k, im in enumerate(images)}
    targets = np.zeros((len(images), len(cats)), np.uint8)
    for i, ann in enumerate(anns):
        if ann["image_id"] not in row:
            raise InputError(f"{prefix}: {ann_file}: annotations[{i}] refers to image_id "
                             f"{ann['image_id']!r}, which is not in 'images'")
        if ann["category_id"] not in col:
            raise InputError(f"{prefix}: {ann_file}: annotations[{i}] has category_id "
                             f"{ann['category_id']!r}, which is not in 'categories'")
        targets[row[ann["image_id"]], col[ann["category_id"]]] = 1
    if not images:
        raise InputError(f"{prefix}: {ann_file} lists no images")
    return cats, images, targets


def _coco_paths(root: Path, folder: str, images: list, ann_file: Path, prefix: str) -> tuple[list, list]:
    """(ids ``FOLDER/<file_name>``, paths under root) of the images of an instances file, all present."""
    ids = [f"{folder}/{im['file_name']}" for im in images]
    paths = [root / i for i in ids]
    n_missing, missing = _first_missing(paths)
    if missing is not None:
        raise MissingInputError(f"{prefix}: {n_missing} image(s) listed in {ann_file} are missing, "
                                f"first {missing}")
    return ids, paths


def _coco2014(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    split = opts.split
    layout = f"DIR/{split}2014/*.jpg and DIR/annotations/instances_{split}2014.json"
    root = _existing_dir(arg, "coco2014", layout)
    ann_file = root / "annotations" / f"instances_{split}2014.json"
    if not ann_file.is_file():
        raise MissingInputError(f"coco2014: no annotations/instances_{split}2014.json under "
                                f"{root}; expected {layout}")
    if not (root / f"{split}2014").is_dir():
        raise MissingInputError(f"coco2014: no {split}2014/ folder under {root}; expected {layout}")
    cats, images, targets = _coco_instances(ann_file, "coco2014")
    ids, paths = _coco_paths(root, f"{split}2014", images, ann_file, "coco2014")
    return LabeledImages(spec, f"coco2014:{root}@{split}", "coco2014", [c["name"] for c in cats],
                         paths, ids, targets, full_frame=True, short_name=f"coco2014@{split}")


_COCO_LAYOUT = "COCO's layout DIR/annotations/instances_<split>.json and DIR/<split>/<file_name>"


def _coco_splits(root: Path) -> list[str]:
    return sorted(p.name[len("instances_"):-len(".json")] for p in (root / "annotations").glob("instances_*.json"))


def _coco_label_space(names: Sequence[str]) -> str:
    """"coco2014" when every category is one of COCO's 80, else "custom".

    The label space names a class vocabulary, not a year: COCO 2014 and 2017 share the 80 categories
    (same ids, same names; only the images were re-split), so the shipped ImageNet-1k -> "coco2014" map
    (``classmaps.class_map_for``) applies to any year and split. A COCO-format file with other category
    names is "custom" (scored only by a model trained on its classes).
    """
    return "coco2014" if set(names) <= set(load_class_map("coco2014").classes) else "custom"


def _coco(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    """``coco:DIR@SPLIT``: COCO's own layout for any year and split (val2017, train2017, val2014...)."""
    split = opts.split
    if not split and "@" in arg:
        raise InputError(f"coco: bad split in {spec!r}; write coco:DIR@SPLIT with SPLIT a folder name such as "
                         f"val2017 (letters, digits, _)")
    root = _existing_dir(arg, "coco", _COCO_LAYOUT)
    splits = _coco_splits(root)
    there = (f"splits there: {', '.join(splits)} (write coco:{root}@{splits[0]})" if splits
             else f"no annotations/instances_*.json there; expected {_COCO_LAYOUT}")
    if not split:
        raise InputError(f"coco: no split in {spec!r}; write coco:DIR@SPLIT; {there}")
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise MissingInputError(f"coco: annotation file {ann_file} not found; {there}")
    if not (root / split).is_dir():
        raise MissingInputError(f"coco: image folder {root / split} not found; put the {split} images "
                                f"there ({ann_file.name} names them {split}/<file_name>)")
    cats, images, targets = _coco_instances(ann_file, "coco")
    ids, paths = _coco_paths(root, split, images, ann_file, "coco")
    names = [c["name"] for c in cats]
    return LabeledImages(spec, f"coco:{root}@{split}", _coco_label_space(names), names, paths, ids, targets,
                         full_frame=True, short_name=f"coco@{split}")


# ---------------------------------------------------------------- CSV
def _read_classes_file(path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"classes file {path} not found (expected one class per line)")
    classes: list[str] = []
    for no, line in enumerate(_text(path, "classes file").splitlines(), start=1):
        name = line.strip()
        if name in classes:
            raise InputError(f"classes file {path} line {no}: class {name!r} listed twice; "
                             f"remove the duplicate")
        if name:
            classes.append(name)
    if not classes:
        raise InputError(f"classes file {path} is empty; write one class per line")
    return classes


def _csv(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    path = Path(arg).expanduser().resolve()
    if not path.is_file():
        raise MissingInputError(f"csv: {path} not found; expected a CSV file with a header "
                                f"'image,labels' and image paths relative to its folder")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise InputError(f"csv: {path} line {reader.line_num}: malformed CSV ({exc}); quote "
                             f"fields that contain commas or quotes, as in \"a.jpg\",\"cat|dog\"") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"csv: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                             f"save it as UTF-8") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "image" not in header or "labels" not in header:
        raise InputError(f"csv: {path} must start with the header row 'image,labels'; "
                         f"got {rows[0] if rows else 'an empty file'}")
    ci, cl = header.index("image"), header.index("labels")
    entries = []
    for line_no, r in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in r):
            continue
        image = r[ci].strip() if ci < len(r) else ""
        if not image:
            raise InputError(f"csv: {path} row {line_no}: empty image path")
        labels = [x.strip() for x in re.split(r"[|;]", r[cl] if cl < len(r) else "")]
        entries.append((line_no, image, sorted({x for x in labels if x})))
    if not entries:
        raise InputError(f"csv: {path} lists no images")
    if opts.classes_file is not None:
        classes = _read_classes_file(opts.classes_file)
        known = set(classes)
        for line_no, image, labels in entries:
            for label in labels:
                if label not in known:
                    raise InputError(f"csv: {path} row {line_no} ({image}): label {label!r} is not "
                                     f"in the classes file {opts.classes_file}; add it there or fix the row")
    else:
        classes = sorted({x for _, _, labels in entries for x in labels})
    col = {c: k for k, c in enumerate(classes)}
    targets = np.zeros((len(entries), len(classes)), np.uint8)
    ids, paths, seen = [], [], {}
    for row, (line_no, image, labels) in enumerate(entries):
        image_path = path.parent / image
        image_id = Path(os.path.normpath(image)).as_posix()
        if image_id in seen:
            raise InputError(f"csv: {path} rows {seen[image_id]} and {line_no}: image {image!r} "
                             f"listed twice; merge its labels into one row")
        if not image_path.is_file():
            raise MissingInputError(f"csv: {path} row {line_no}: image {image_path} not found "
                                    f"(paths are relative to the CSV's folder)")
        seen[image_id] = line_no
        ids.append(image_id)
        paths.append(image_path)
        targets[row, [col[x] for x in labels]] = 1
    return LabeledImages(spec, f"csv:{path}", "custom", classes, paths, ids, targets,
                         full_frame=False, short_name=f"csv:{path.name}")


# ---------------------------------------------------------------- mosaics
class Mosaic(_LabelArrays):
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
            h = _sha256_json({"mosaic": self.k, "seed": self.seed, "count": self.count,
                              "size": self.size, "inner": self.inner.fingerprint()})
            h.update(self.tile_indices.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Mosaic({self.name!r}, {self.count} {self.k}x{self.k} mosaics, size {self.size})"


def _forward(opts: DatasetOptions, inner_spec: str, consumed: tuple = ()) -> dict:
    """parse_dataset keywords for a wrapped spec: the size, and the given options it takes."""
    takes = dataset_options(inner_spec) - set(consumed)
    return dict(size=opts.size, **{k: getattr(opts, k) for k in sorted(takes) if getattr(opts, k) is not None})


def _mosaic(k: int):
    def build(spec: str, arg: str, opts: DatasetOptions) -> Mosaic:
        if opts.size is None:
            raise InputError(f"{spec.split(':')[0]}: size is required (mosaics are composed at the "
                             f"evaluation resolution; pass size=224 or the model's input size)")
        inner = parse_dataset(arg, **_forward(opts, arg, consumed=("seed", "count")))
        return Mosaic(spec, inner, k, opts.size, seed=opts.seed or 0, count=opts.count)
    return build


# ---------------------------------------------------------------- subsets and parts
class _Selection(_LabelArrays):
    """Fixed items ``indices`` (sorted) of another dataset, in the inner order.

    Its val/test split is the inner split restricted to the chosen items, so mosaics stay
    tile-disjoint and an item is on the same side as in the full dataset. The fingerprint hashes
    ``_identity()`` (which includes the inner fingerprint), the indices and the chosen items' ids.
    """

    def __init__(self, name: str, inner: MultiLabelDataset, indices: np.ndarray, short_name: str):
        self.name, self.inner, self.indices, self.short_name = name, inner, indices, short_name
        self.classes, self.label_space = list(inner.classes), inner.label_space
        self.full_frame, self.size_dependent = inner.full_frame, inner.size_dependent
        self._targets = inner.targets()[self.indices]
        self._ignore = inner.ignore_mask()[self.indices]
        self._fingerprint: Optional[str] = None

    def _identity(self) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.inner[int(self.indices[i])]

    def image_id(self, i: int) -> str:
        return self.inner.image_id(int(self.indices[i]))

    def split(self, val_fraction: float, seed: int):
        val, _ = self.inner.split(val_fraction, seed)
        in_val = np.isin(self.indices, val)
        return np.flatnonzero(in_val), np.flatnonzero(~in_val)

    def fingerprint(self) -> str:
        """sha256 of ``_identity()`` and the chosen items' indices and ids (cached)."""
        if self._fingerprint is None:
            h = _sha256_json(self._identity())
            h.update(self.indices.astype(np.int64).tobytes())
            h.update("\n".join(self.image_id(i) for i in range(len(self))).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class Subset(_Selection):
    """A fixed random subset of ``n`` items of another dataset (sorted indices from ``seed``)."""

    def __init__(self, name: str, inner: MultiLabelDataset, n: int, seed: int = 0):
        if not 1 <= n <= len(inner):
            raise InputError(f"subset: N={n} but {inner.short_name} has {len(inner)} images; use "
                             f"1 <= N <= {len(inner)} (or the spec without subset:)")
        self.seed = int(seed)
        indices = np.sort(np.random.default_rng(self.seed).choice(len(inner), size=n, replace=False))
        super().__init__(name, inner, indices,
                         f"subset{n}{f'@seed{self.seed}' if self.seed else ''}({inner.short_name})")

    def _identity(self) -> dict:
        return {"subset": len(self), "seed": self.seed, "inner": self.inner.fingerprint()}

    def __repr__(self) -> str:
        return f"Subset({self.name!r}, {len(self)} of {len(self.inner)})"


_SUBSET_ARG = re.compile(r"^(\d+)(?::(\d+))?:(.+)$")


def _subset_parts(arg: str) -> tuple[int, int, str]:
    m = _SUBSET_ARG.match(arg)
    if not m or ":" not in m.group(3):
        raise InputError(f"subset: expected subset:N[:SEED]:SPEC (e.g. subset:96:0:imagenet-real:DIR), "
                         f"got subset:{arg}")
    return int(m.group(1)), int(m.group(2) or 0), m.group(3)


def _subset(spec: str, arg: str, opts: DatasetOptions) -> Subset:
    n, seed, inner_spec = _subset_parts(arg)
    return Subset(spec, parse_dataset(inner_spec, **_forward(opts, inner_spec)), n, seed)


def partition(n_items: int, k: int, n_parts: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of part ``k`` (1-based) of ``n_parts``: a ``seed``-ed random permutation of
    range(n_items) cut into n_parts consecutive pieces whose sizes differ by at most one (the first
    ``n_items % n_parts`` are one longer). The parts of one (n_items, n_parts, seed) are disjoint and
    cover range(n_items)."""
    if not 1 <= k <= n_parts:
        raise InputError(f"part: K={k} of N={n_parts}; use 1 <= K <= N")
    if n_parts > n_items:
        raise InputError(f"part: N={n_parts} parts of {n_items} images would leave some empty; use N <= {n_items}")
    perm = np.random.default_rng(int(seed)).permutation(int(n_items))
    return np.sort(np.array_split(perm, n_parts)[k - 1]).astype(np.int64)


class Part(_Selection):
    """Part ``k`` of ``n`` of another dataset (``partition``): the parts of one (N, seed) are disjoint
    and together the whole dataset, e.g. fit on ``part:1/2:SPEC``, evaluate on ``part:2/2:SPEC``."""

    def __init__(self, name: str, inner: MultiLabelDataset, k: int, n: int, seed: int = 0):
        if not 1 <= n <= len(inner):
            raise InputError(f"part: N={n} but {inner.short_name} has {len(inner)} images; use "
                             f"1 <= N <= {len(inner)}")
        self.k, self.n, self.seed = int(k), int(n), int(seed)
        super().__init__(name, inner, partition(len(inner), self.k, self.n, self.seed),
                         f"part{k}of{n}{f'@seed{self.seed}' if self.seed else ''}({inner.short_name})")

    def _identity(self) -> dict:
        return {"part": self.k, "parts": self.n, "seed": self.seed, "inner": self.inner.fingerprint()}

    def __repr__(self) -> str:
        return f"Part({self.name!r}, part {self.k} of {self.n}: {len(self)} of {len(self.inner)})"


_PART_ARG = re.compile(r"^(\d+)/(\d+)(?::(\d+))?:(.+)$")


def _part_parts(arg: str) -> tuple[int, int, int, str]:
    """(K, N, SEED, inner spec) of ``K/N[:SEED]:SPEC``; InputError for bad syntax or K outside 1..N."""
    m = _PART_ARG.match(arg)
    if not m or ":" not in m.group(4):
        raise InputError(f"part: expected part:K/N[:SEED]:SPEC, part K of N (1 <= K <= N) with an optional "
                         f"integer seed (e.g. part:1/2:0:voc2007:DIR@trainval), got part:{arg}")
    seed = re.match(r"^([+-]?[0-9.]+):", m.group(4)) if m.group(3) is None else None
    if seed:
        raise InputError(f"part: SEED={seed.group(1)} in part:{arg}; the seed is a non-negative integer")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise InputError(f"part: K={k} of N={n} in part:{arg}; use N >= 1 and 1 <= K <= N "
                         f"(e.g. part:1/{max(n, 2)}:SPEC)")
    return k, n, int(m.group(3) or 0), m.group(4)


def _part(spec: str, arg: str, opts: DatasetOptions) -> Part:
    k, n, seed, inner_spec = _part_parts(arg)
    return Part(spec, parse_dataset(inner_spec, **_forward(opts, inner_spec)), k, n, seed)


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetKind:
    """One spec prefix: its syntax, its builder ``build(spec, arg, DatasetOptions) -> dataset`` and what
    it takes. ``options``: the ``parse_dataset`` keywords it uses itself; ``default_split``: set when
    it reads ``@SPLIT`` ("": the split must be written); ``inner``: for wrapping kinds, ``arg -> the
    wrapped spec`` (whose options pass through); ``size_dependent``: built at the evaluation size."""

    prefix: str
    syntax: str
    build: Callable[[str, str, DatasetOptions], MultiLabelDataset]
    options: frozenset = frozenset()
    default_split: Optional[str] = None
    inner: Optional[Callable[[str], str]] = None
    size_dependent: bool = False


def _mosaic_kind(prefix: str, k: int) -> DatasetKind:
    return DatasetKind(prefix, f"{prefix}:SPEC", _mosaic(k), frozenset({"seed", "count"}),
                       inner=lambda arg: arg, size_dependent=True)


DATASETS: dict[str, DatasetKind] = {kind.prefix: kind for kind in (
    DatasetKind("imagenet-real", "imagenet-real:DIR", _imagenet_real),
    DatasetKind("voc2007", "voc2007:DIR[@SPLIT]", _voc2007, default_split="test"),
    DatasetKind("coco2014", "coco2014:DIR[@SPLIT]", _coco2014, default_split="val"),
    DatasetKind("coco", "coco:DIR@SPLIT", _coco, default_split=""),
    DatasetKind("csv", "csv:FILE", _csv, frozenset({"classes_file"})),
    _mosaic_kind("mosaic", 2),
    _mosaic_kind("mosaic2", 2),
    _mosaic_kind("mosaic3", 3),
    DatasetKind("subset", "subset:N[:SEED]:SPEC", _subset, inner=lambda arg: _subset_parts(arg)[2]),
    DatasetKind("part", "part:K/N[:SEED]:SPEC", _part, inner=lambda arg: _part_parts(arg)[3]),
)}


def dataset_kind(spec: str) -> DatasetKind:
    """The registered kind of ``spec``'s prefix (``InputError`` listing the known ones otherwise)."""
    prefix, sep, _ = str(spec).partition(":")
    if not sep or prefix not in DATASETS:
        raise InputError(f"unknown dataset spec {spec!r}; known prefixes: "
                         f"{', '.join(p + ':' for p in DATASETS)} "
                         f"({'; '.join(k.syntax for k in DATASETS.values())})")
    return DATASETS[prefix]


def _chain(spec: str) -> list[DatasetKind]:
    """The kinds of ``spec`` and of every spec it wraps, outermost first."""
    kinds = []
    while True:
        kind = dataset_kind(spec)
        kinds.append(kind)
        if kind.inner is None:
            return kinds
        spec = kind.inner(str(spec).partition(":")[2])


def dataset_options(spec: str) -> frozenset:
    """The ``parse_dataset`` keywords (classes_file, seed, count) that ``spec`` uses, wrapped specs included."""
    return frozenset().union(*(kind.options for kind in _chain(spec)))


def is_size_dependent(spec: str) -> bool:
    """True when the dataset is built at the evaluation size (a mosaic, or a spec wrapping one)."""
    return any(kind.size_dependent for kind in _chain(spec))


def parse_dataset(spec: str, *, size: Optional[int] = None, classes_file=None, seed: Optional[int] = None,
                  count: Optional[int] = None) -> MultiLabelDataset:
    """Dataset for ``spec`` (``PREFIX:ARG``, see ``DATASETS``); ``size``: the evaluation size (used by
    size-dependent specs only); classes_file / seed / count: only for specs that take them."""
    kind = dataset_kind(spec)
    takes = dataset_options(spec)
    given = {k: v for k, v in (("classes_file", classes_file), ("seed", seed), ("count", count))
             if v is not None}
    for option in given:
        if option not in takes:
            users = [p for p, k in DATASETS.items() if option in k.options]
            raise InputError(f"{kind.prefix}: {option} applies to {', '.join(users)} specs only "
                             f"(got {spec!r})")
    arg, split = str(spec).partition(":")[2], None
    if kind.default_split is not None:
        arg, split = _split_option(arg, kind.default_split)
    return kind.build(str(spec), arg, DatasetOptions(size=size, split=split, **given))
