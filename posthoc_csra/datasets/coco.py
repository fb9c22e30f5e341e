"""COCO instances files: ``coco2014:DIR[@SPLIT]`` (the 2014 layout: DIR/<split>2014/, DIR/annotations/
instances_<split>2014.json) and ``coco:DIR@SPLIT`` (COCO's own layout for any year and split). Only each
annotation's image_id and category_id are read: image-level labels without boxes are valid."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..classmaps import load_class_map
from ..errors import InputError, MissingInputError
from .base import DatasetOptions, LabeledImages, existing_dir, first_missing, read_utf8

__all__ = ["build_coco2014", "build_coco"]


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
        data = json.loads(read_utf8(ann_file, prefix))
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
    n_missing, missing = first_missing(paths)
    if missing is not None:
        raise MissingInputError(f"{prefix}: {n_missing} image(s) listed in {ann_file} are missing, "
                                f"first {missing}")
    return ids, paths


def build_coco2014(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    split = opts.split
    layout = f"DIR/{split}2014/*.jpg and DIR/annotations/instances_{split}2014.json"
    root = existing_dir(arg, "coco2014", layout)
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


def build_coco(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    """``coco:DIR@SPLIT``: COCO's own layout for any year and split (val2017, train2017, val2014...)."""
    split = opts.split
    if not split and "@" in arg:
        raise InputError(f"coco: bad split in {spec!r}; write coco:DIR@SPLIT with SPLIT a folder name such as "
                         f"val2017 (letters, digits, _)")
    root = existing_dir(arg, "coco", _COCO_LAYOUT)
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
