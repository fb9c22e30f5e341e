"""``csv:FILE``: a CSV with the header ``image,labels`` (image paths relative to its folder, labels separated
by | or ;), classes from an optional classes file or the sorted union of the labels."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingInputError
from .base import DatasetOptions, LabeledImages, read_utf8

__all__ = ["build_csv"]


def _read_classes_file(path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"classes file {path} not found (expected one class per line)")
    classes: list[str] = []
    for no, line in enumerate(read_utf8(path, "classes file").splitlines(), start=1):
        name = line.strip()
        if name in classes:
            raise InputError(f"classes file {path} line {no}: class {name!r} listed twice; "
                             f"remove the duplicate")
        if name:
            classes.append(name)
    if not classes:
        raise InputError(f"classes file {path} is empty; write one class per line")
    return classes


def build_csv(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
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
