"""The benchmark's option groups: small frozen values the CLI builds once and that cross a process
boundary (a Ray task, a pool worker) as one pickled value each. Torch-free.

* ``RuleOptions``: the CSRA rule one scorer applies (λ, heads, space) — ``score``, ``explain``.
* ``EvalOptions``: what is evaluated from the cached statistics (λ list, head sets, spaces, split).
* ``LoadOptions``: how images reach the backbone (batch, DataLoader workers, cache chunk, mosaics).
* ``ModelSource``: which weights a model name is loaded with (a checkpoint / manifest, random).
* ``ScoreTableOptions``: what ``score`` writes (top-k, every class's score, the output file, strict).
* ``runtime.Runtime`` (device, AMP, channels_last, compile) is the third group of ``run_bench``.

Every value is checked when the object is built, so a bad option fails before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
import numbers
from typing import Optional, Tuple

from .errors import InputError
from .parsing import check_batch_size, check_topk, check_workers, parse_heads, parse_lams, parse_spaces
from .choices import DEFAULT_HEADS, DEFAULT_LAM, DEFAULT_SPACE, SPACES, Heads, check_lam, check_space, \
    resolve_heads


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class RuleOptions:
    """The rule one scorer applies: λ ≥ 0 (0: the model itself), heads (a paper head count 1, 2, 4, 6, 8 or
    explicit temperatures, ``math.inf`` for max) and the score space ("logit" the paper, "prob")."""

    lam: float = DEFAULT_LAM
    heads: Heads = DEFAULT_HEADS
    space: str = DEFAULT_SPACE

    def __post_init__(self):
        object.__setattr__(self, "lam", check_lam(self.lam))
        resolve_heads(self.heads)
        object.__setattr__(self, "space", check_space(self.space))

    @property
    def temperatures(self) -> Tuple[float, ...]:
        return resolve_heads(self.heads)


@dataclass(frozen=True)
class EvalOptions:
    """What ``run_bench`` evaluates from the cached statistics (no backbone involved).

    lams: λ values or a ``parse_lams`` string ("0:1:0.1"); λ=0 (the model) is always evaluated.
    heads: head sets (default ``choices.DEFAULT_HEADS``, as ``score`` and ``bench --heads``): "1,4,8,T1"
    (``choices.HEADS_SYNTAX``; 1 is T = ∞, T1 the official CSRA code's MHA(num_heads=1)) or a list
    ``[1, 4, (1.0,)]``. spaces: "logit,prob" or a list.
    select_on: None (every row on all images) or "val" (λ chosen on a validation share of
    ``val_fraction`` images, split with ``split_seed``, reported on the disjoint test rest).
    pool: how ImageNet classes pool into a VOC/COCO class in prob space ("max"/"sum").
    """

    lams: Tuple[float, ...] = (0.0, 0.1)
    heads: Tuple[Heads, ...] = (DEFAULT_HEADS,)
    spaces: Tuple[str, ...] = SPACES
    select_on: Optional[str] = None
    val_fraction: float = 0.5
    split_seed: int = 0
    pool: str = "max"

    def __post_init__(self):
        from .classmaps import POOLS

        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "lams", tuple(parse_lams(self.lams)))
        set_(self, "heads", tuple(parse_heads(self.heads)))
        set_(self, "spaces", tuple(parse_spaces(self.spaces)))
        if self.select_on not in (None, "val"):
            raise InputError(f"select_on must be None or 'val', got {self.select_on!r}")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.pool not in POOLS:
            raise InputError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        set_(self, "val_fraction", float(self.val_fraction))
        set_(self, "split_seed", _int("split_seed", self.split_seed, 0))


@dataclass(frozen=True)
class LoadOptions:
    """How images reach the backbone, and how its statistics are cached.

    batch_size: images per forward pass (halved on out-of-memory, see ``cache.chunk_statistics``).
    workers: DataLoader worker processes per chunk task (0: load in the task's process).
    chunk_size: images per cache chunk, the unit of work of every executor (for a new cache folder).
    dataset_seed, mosaic_count: which tiles and how many mosaics ``mosaic*:`` specs build.
    progress: one progress bar over all chunks (on stderr).
    threads: torch intra-op threads of each chunk task (None: the process's own; a 1-CPU Ray task has
    1). The thread count changes the order of float reductions, so only equal threads give
    bit-identical statistics on every executor.
    """

    batch_size: int = 32
    workers: int = 2
    chunk_size: int = 128
    dataset_seed: int = 0
    mosaic_count: Optional[int] = None
    progress: bool = True
    threads: Optional[int] = None

    def __post_init__(self):
        check_batch_size(self.batch_size)
        check_workers(self.workers)
        _int("chunk_size", self.chunk_size, 1)
        _int("dataset_seed", self.dataset_seed, 0)
        if self.mosaic_count is not None:
            _int("mosaic_count", self.mosaic_count, 1)
        if self.threads is not None:
            _int("threads", self.threads, 1)


@dataclass(frozen=True)
class ModelSource:
    """Which weights a model name is loaded with (see ``models.load_model``).

    checkpoint: a weights file or a weights ``manifest.json`` (or its folder); None: local weights
    found for the name, else the hub. pretrained=False: random weights seeded with 0.
    """

    checkpoint: Optional[str] = None
    pretrained: Optional[bool] = None

    def __post_init__(self):
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.checkpoint is not None and self.pretrained is False:
            raise InputError("pass either a checkpoint or pretrained=False (random weights), not both")


@dataclass(frozen=True)
class ScoreTableOptions:
    """What ``score`` (``folder.score_folder``) writes: the ``topk`` classes per image (capped at the class
    count), ``all_scores`` (one column per class), ``output`` (a format of ``tables.TABLE_FORMATS``; None: no
    file) and ``strict`` (fail when any file could not be scored)."""

    topk: int = 5
    all_scores: bool = False
    output: Optional[str] = None
    strict: bool = False

    def __post_init__(self):
        object.__setattr__(self, "topk", check_topk(self.topk))
        if self.output is not None:
            object.__setattr__(self, "output", str(self.output))


__all__ = ["RuleOptions", "EvalOptions", "LoadOptions", "ModelSource", "ScoreTableOptions"]
