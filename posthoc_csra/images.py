"""Finding image files and decoding them robustly to RGB. Torch-free at import (the CLI checks its inputs
with it before torch loads); ``ImageFiles`` and ``collate_images`` import torch when used."""
from __future__ import annotations

import os
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, MissingInputError

if TYPE_CHECKING:
    import torch

__all__ = ["find_images", "readable_extensions", "ImageLoadError", "load_rgb", "probe_image", "check_image_folder",
           "relative_name", "ImageFiles", "collate_images"]

# Exceptions Pillow raises for corrupt data (besides OSError/ValueError/SyntaxError).
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def readable_extensions() -> frozenset[str]:
    """Lower-case extensions (with dot) whose format Pillow can open."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(root: str | os.PathLike) -> list[Path]:
    """Image files under root (recursive, hidden skipped), sorted by relative posix path."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        raise MissingInputError(f"no such file or folder: {root}")
    if not root.is_dir():
        return [root]
    exts = readable_extensions()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in filenames:  # broken symlinks are listed too: they fail loudly on load
            if _hidden(name) or os.path.splitext(name)[1].lower() not in exts:
                continue
            path = Path(dirpath) / name
            found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise InputError(f"no images found under {root} "
                         f"(extensions Pillow reads: {' '.join(sorted(exts))})")
    return [path for _, path in sorted(found)]


def relative_name(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """Posix path of path relative to root; the file name when root is the file itself."""
    path, root = Path(path), Path(root)
    if path == root or not root.is_dir():
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not under {root}") from None


class ImageLoadError(InputError):
    """An image file that could not be decoded; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _bomb_limit() -> str:
    return f"Pillow's decompression-bomb limit (MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS})"


def _probe_size(path: Path) -> tuple[int, int] | None:
    """Header size of an image, bypassing the bomb check (header only, no decode)."""
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                ok = not accept or accept(prefix)
                if not ok or isinstance(ok, str):
                    continue
                fp.seek(0)
                try:
                    return factory(fp, str(path)).size
                except Exception:
                    continue
    except Exception:
        return None
    return None


def _too_large(path: Path, size: tuple[int, int] | None, message: str) -> ImageLoadError:
    if size is None:
        size = _probe_size(path)
    if size is not None:
        what = f"{size[0]}x{size[1]} pixels"
    else:
        match = re.search(r"\((\d+) pixels\)", message)
        what = f"{match.group(1)} pixels" if match else "pixel count"
    return ImageLoadError(path, f"image too large: {what} exceeds {_bomb_limit()}")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: cannot identify image file"
    if "truncated" in text.lower():
        return f"truncated image: {text}"
    return f"corrupt or unsupported image ({type(exc).__name__}): {text}"


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L").convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit ('I;16*', 'I' in 0..65535) by >>8; other 'I' and 'F' by min/max."""
    arr = np.asarray(im)
    if im.mode in _SIXTEEN_BIT:
        return _gray_to_rgb(arr.astype(np.uint16) >> 8)
    if im.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return _gray_to_rgb(arr.astype(np.uint32) >> 8)
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return _gray_to_rgb(np.zeros(arr.shape))
    lo, hi = arr[finite].min(), arr[finite].max()
    scaled = (np.where(finite, arr, lo) - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0
    return _gray_to_rgb(np.clip(np.rint(scaled), 0, 255))


def _over_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _high_depth_to_rgb(im)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _over_white(im)
    if mode == "RGB":
        return im
    return im.convert("RGB")  # CMYK, YCbCr, L, 1, P, ...


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Fully decoded RGB image (EXIF-rotated, alpha over white); ImageLoadError on failure."""
    path = Path(path)
    try:
        fp = open(path, "rb")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if path.is_symlink() and not path.exists():
            reason += f" (broken symlink -> {os.readlink(path)})"
        raise ImageLoadError(path, f"cannot read file: {reason}") from exc
    with fp:
        try:
            if os.fstat(fp.fileno()).st_size == 0:
                raise ImageLoadError(path, "empty file (0 bytes)")
        except OSError as exc:
            raise ImageLoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
        size = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp)
                size = im.size
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except _PILLOW_ERRORS as exc:
                    raise ImageLoadError(path, f"bad EXIF orientation data: {exc}") from exc
                return _to_rgb(im)
        except Image.DecompressionBombWarning as exc:
            raise _too_large(path, size, str(exc)) from exc
        except Image.DecompressionBombError as exc:
            raise _too_large(path, size, str(exc)) from exc
        except PermissionError as exc:
            raise ImageLoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
        except _PILLOW_ERRORS as exc:
            raise ImageLoadError(path, _describe(exc)) from exc


def probe_image(path: str | os.PathLike) -> Optional[str]:
    """None when Pillow identifies ``path`` as an image from its header (nothing is decoded), else why not
    (the reason ``load_rgb`` would give). A header that opens can still fail to decode (a truncated file)."""
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            if os.fstat(fp.fileno()).st_size == 0:
                return "empty file (0 bytes)"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                Image.open(fp)
    except OSError as exc:
        if isinstance(exc, UnidentifiedImageError):
            return _describe(exc)
        return f"cannot read file: {exc.strerror or exc}"
    except Image.DecompressionBombError as exc:
        return _too_large(path, None, str(exc)).reason
    except _PILLOW_ERRORS as exc:
        return _describe(exc)
    return None


def check_image_folder(root: str | os.PathLike) -> list[Path]:
    """``find_images(root)``, and an InputError when none of the files found is an image Pillow can open
    (headers only, stopping at the first that opens): so a folder with nothing to score fails before a
    model is loaded."""
    paths = find_images(root)
    first = None
    for path in paths:
        reason = probe_image(path)
        if reason is None:
            return paths
        first = first or f"{relative_name(path, root)}: {reason}"
    raise InputError(f"none of the {len(paths)} file(s) under {root} could be scored: none is an image Pillow "
                     f"can open (first: {first})")


def _default_transform(im: Image.Image) -> "torch.Tensor":
    import torch

    arr = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))
    return arr.permute(2, 0, 1).float().div_(255.0)


class ImageFiles:
    """Map-style dataset of image files (for ``torch.utils.data.DataLoader``); items are dicts, decode errors
    are returned, never raised."""

    def __init__(self, paths: Sequence[str | os.PathLike], root: str | os.PathLike,
                 transform: Callable[[Image.Image], "torch.Tensor"] | None = None):
        self.paths = [Path(p) for p in paths]
        self.root = Path(root)
        self.transform = transform if transform is not None else _default_transform
        self.names = [relative_name(p, self.root) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            image = self.transform(load_rgb(self.paths[i]))
        except ImageLoadError as exc:
            return {"index": i, "image": None, "error": exc.reason}
        except Exception as exc:  # a transform failing on one file must not kill a worker
            return {"index": i, "image": None,
                    "error": f"transform failed ({type(exc).__name__}): {exc}"}
        return {"index": i, "image": image, "error": None}


def collate_images(batch: Sequence[dict]
                   ) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """(stacked good images or None, their indices, [(index, error)] for the bad ones)."""
    import torch

    good = [item for item in batch if item["image"] is not None]
    failures = [(int(item["index"]), str(item["error"])) for item in batch
                if item["image"] is None]
    images = torch.stack([item["image"] for item in good]) if good else None
    return images, [int(item["index"]) for item in good], failures
