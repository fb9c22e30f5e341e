"""``imagenet-real:DIR``: ImageNet validation images (named ILSVRC2012_val_XXXXXXXX.<ext>, any folder depth)
with the ReaL labels shipped in timm; images without a ReaL label are left out."""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingInputError
from .base import DatasetOptions, LabeledImages, existing_dir

__all__ = ["build_imagenet_real"]

_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.([A-Za-z0-9]+)$")


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


def build_imagenet_real(spec: str, arg: str, opts: DatasetOptions) -> LabeledImages:
    from timm.data import ImageNetInfo

    from posthoc_csra.images import readable_extensions
    root = existing_dir(arg, "imagenet-real", "a folder of ImageNet-val images")
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
