"""Option values: parsers from text and one check per option, shared by every command and the library.

Torch-free (the CLI imports it at ``--help`` time). A failing check raises ``InputError`` whose message
says what the value must be; the CLI puts the option's name in front of it (one line, exit status 2),
the library raises it as is.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, List, Optional, Union

from .errors import InputError
from .choices import HEADS_SYNTAX, SPACES, Heads, check_lam, check_space, parse_head_set, resolve_heads

#: The smallest input side. timm's networks downsample by up to 32 (CNN stages; ViT/Swin patches of
#: 16 or 32 pixels), so a smaller input leaves less than one location per side to score.
MIN_IMG_SIZE = 32
#: The largest input side. timm's classifiers are trained at 160–800 px; one float32 image of 4096² pixels
#: is already 200 MB and a backbone's activations on it several GB, so larger sides are refused before any
#: work instead of failing in the allocator (a size below this that still does not fit is reported as
#: one line too, see ``prepare.memory_guard``).
MAX_IMG_SIZE = 4096


def _check_int(value, name: str, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def check_topk(topk) -> int:
    """How many top classes to report: ≥ 1."""
    return _check_int(topk, "topk", 1, "how many top classes to report")


def check_batch_size(batch_size) -> int:
    """Images per forward pass: ≥ 1."""
    return _check_int(batch_size, "batch_size", 1, "images per forward pass")


def check_workers(workers) -> int:
    """DataLoader worker processes: ≥ 0 (0 decodes images in the main process)."""
    return _check_int(workers, "workers", 0, "DataLoader worker processes; 0 decodes in the main process")


def check_img_size(img_size) -> Optional[int]:
    """Input side in pixels, ``MIN_IMG_SIZE`` ≤ N ≤ ``MAX_IMG_SIZE``; None keeps the model's own size."""
    if img_size is None:
        return None
    size = _check_int(img_size, "img_size", MIN_IMG_SIZE,
                      f"the input side in pixels: the networks downsample by up to {MIN_IMG_SIZE}, so a smaller "
                      f"input leaves no location to score; leave it out for the model's own size")
    if size > MAX_IMG_SIZE:
        gigabytes = 3 * 4 * size * size / 1e9
        raise InputError(f"img_size must be <= {MAX_IMG_SIZE} (the input side in pixels; classifiers are trained "
                         f"at 160-800 px): one {size}x{size} image is {gigabytes:.3g} GB as float32 before the "
                         f"backbone's activations, got {img_size!r}; use e.g. 448 for multi-object photos")
    return size


def parse_img_sizes(values: Union[str, Iterable]) -> Optional[List[Optional[int]]]:
    """``"default,448"`` (or several such strings, or ints / None) → [None, 448] (None: the model's own size);
    duplicates dropped, order kept; nothing → None."""
    sizes: List[Optional[int]] = []
    for value in [values] if isinstance(values, str) else list(values):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [value]
        for item in items:
            if item is None or (isinstance(item, str) and item.lower() == "default"):
                sizes.append(None)
            elif isinstance(item, str):
                if not item.lstrip("-").isdigit():
                    raise InputError(f"img_size must be an integer or 'default', got {item!r}")
                sizes.append(check_img_size(int(item)))
            else:
                sizes.append(check_img_size(item))
    return list(dict.fromkeys(sizes)) or None


def parse_lams(text: Union[str, Iterable[float]]) -> List[float]:
    """``"0,0.1,0.3"``, ``"0:1:0.1"`` (start:stop:step, stop included) or a mix → sorted unique floats, each ≥ 0."""
    if not isinstance(text, str):
        values = [float(v) for v in text]
    else:
        values = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                if ":" in part:
                    start, stop, step = (float(x) for x in part.split(":"))
                    if not step > 0 or stop < start:
                        raise ValueError
                    n = int(math.floor((stop - start) / step + 1e-9)) + 1
                    values += [start + i * step for i in range(n)]
                else:
                    values.append(float(part))
            except ValueError:
                raise InputError(f"bad λ list {text!r}: expected numbers and start:stop:step ranges "
                                 f"(step > 0, stop >= start), e.g. 0,0.1,0.3 or 0:1:0.1") from None
    if not values:
        raise InputError(f"bad λ list {text!r}: expected at least one number, e.g. 0,0.1,0.3 or 0:1:0.1")
    for value in values:
        try:
            check_lam(value)
        except InputError as err:
            raise InputError(f"bad λ list {text!r}: {err}") from None
    return sorted({round(v, 10) + 0.0 for v in values})


def _items(text) -> list:
    return [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)


def parse_heads(text: Union[str, int, Iterable[Heads]]) -> List[Heads]:
    """Bench's head sets: ``"1,4,8,T1,T1+inf"`` (comma-separated, each in ``choices.HEADS_SYNTAX``), one head
    count, or a list of head sets (``[1, 4, (1.0,)]``) → [1, 4, 8, (1.0,), (1.0, inf)]
    (``choices.parse_head_set``'s normal forms); duplicates (the same heads) dropped, order kept. Heads the
    statistics cache does not store by default (``choices.STORED_HEADS``: 1..7 and inf) are computed
    into a cache of their own (``choices.extra_heads``)."""
    if isinstance(text, str):
        items = [p.strip() for p in text.split(",") if p.strip()]
    elif isinstance(text, numbers.Integral):
        items = [text]  # one head count
    else:
        items = list(text)  # a list of head sets: (1, 4) is two head counts; one set of temperatures is [(1, inf)]
    if not items:
        raise InputError(f"bad head list {text!r}: comma-separated head sets, each {HEADS_SYNTAX}, e.g. 1,4,8,T1")
    heads, seen = [], set()
    for item in items:
        try:
            value = parse_head_set(item)
        except InputError as err:
            raise err if len(items) == 1 else InputError(f"{err} (in the head list {text!r})") from None
        same = tuple(sorted(resolve_heads(value), key=lambda h: h.sort_key()))
        if same not in seen:
            seen.add(same)
            heads.append(value)
    return heads


def parse_spaces(text: Union[str, Iterable[str]]) -> List[str]:
    """``"logit,prob"`` → ["logit", "prob"] (registered score spaces)."""
    if not _items(text):
        raise InputError(f"bad space list {text!r}: use {','.join(SPACES)}")
    return list(dict.fromkeys(check_space(s) for s in _items(text)))


__all__ = ["MIN_IMG_SIZE", "MAX_IMG_SIZE", "check_lam", "check_topk", "check_batch_size", "check_workers", "check_img_size",
           "parse_img_sizes", "parse_lams", "parse_heads", "parse_spaces"]
