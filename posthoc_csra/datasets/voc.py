"""``voc2007:DIR[@SPLIT]``: PASCAL VOC 2007 in the VOCdevkit layout; labels from the per-class label files
(ImageSets/Main/<class>_<split>.txt) or the XML annotations, "difficult"-only classes ignored."""
from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError, MissingInputError
from .base import DatasetOptions, DatasetWarning, LabeledImages, existing_dir, first_missing, utf8_lines

__all__ = ["VOC_CLASSES", "build_voc2007"]

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
_VOC_LAYOUT = ("the VOCdevkit layout DIR/ImageSets/Main/<split>.txt, DIR/JPEGImages/<id>.jpg and "
               "labels in DIR/ImageSets/Main/<class>_<split>.txt or DIR/Annotations/<id>.xml, "
               "with DIR = VOCdevkit/VOC2007, VOCdevkit or a folder holding VOC2007/")
_VOC_VALUES = {1: "1 (present)", 0: "0 (difficult only)", -1: "-1 (absent)"}
_VOC_CLASS_FILE = re.compile(r"^(%s)_\w+\.txt$" % "|".join(VOC_CLASSES))


def _voc_root(arg: str) -> Path:
    given = existing_dir(arg, "voc2007", _VOC_LAYOUT)
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
    for no, fields in utf8_lines(split_file, "voc2007"):
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
        for no, fields in utf8_lines(path, "voc2007"):
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


def build_voc2007(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
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
    n_missing, missing = first_missing(paths)
    if missing is not None:
        raise MissingInputError(f"voc2007: {n_missing} image(s) listed in {split_file} are missing, "
                                f"first {missing}; expected JPEGImages/<id>.jpg for every id")
    return LabeledImages(spec, f"voc2007:{root}@{split}", "voc2007", VOC_CLASSES, paths,
                         [p.relative_to(root).as_posix() for p in paths], state == 1, state == 0,
                         full_frame=True, short_name=f"voc2007@{split}")
