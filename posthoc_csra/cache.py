"""On-disk cache of per-image CSRA statistics: one backbone pass per (model, weights, dataset, preprocessing).

Per image and class it stores what ``CSRAScorer.statistics`` returns, as the registered score spaces and
attention heads declare it: the model's logits, per score space (``spaces.SPACES``) its base (unless it is
the logits themselves), the mean over locations and the attention terms of the stored heads
(``choices.STORED_HEADS``, what the head kinds declare: T = 1..7 and inf, the last being the max over
locations, plus any ``extra_heads`` a run asks for, which are part of the key).
That is enough to evaluate any λ, head set and space without the model.

Layout: ``<cache_dir>/stats/<key>/`` holds ``meta.json`` (the fields the key hashes) and, per
chunk of ``chunk_size`` images, ``chunk-NNNNN.npz`` plus its sidecar ``chunk-NNNNN.json``
(rows, byte count, sha256 of the .npz). Every file is written to a hidden temp file in the
same folder and renamed into place, the sidecar after its chunk, so a chunk exists only once it
is complete. An interrupted run keeps its finished chunks (it loses at most the chunk in progress);
the next one computes only the rest. ``chunk_size`` only applies to a new cache folder.
A chunk whose sidecar is missing/unreadable or whose bytes or arrays do not match is recomputed
with a warning. Memory during computation is one chunk plus the DataLoader's prefetch.

Computing: ``stream_statistics`` runs many chunks through one DataLoader and hands each back as soon as it
is complete (the local executor); ``chunk_statistics`` is the same for one chunk (a pool or Ray task).
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .choices import STORED_HEADS
from .errors import is_out_of_memory
from .methods import METHODS
from .spaces import SPACES

log = logging.getLogger("posthoc_csra")

#: 2: logit-space attention terms in the model's logit units (the paper's rule, ‖w_c‖·att_T(ŝ)), and the
#: pooling baselines. 3: the terms of the CPU path that computes every temperature of a block at once
#: (``attention._exp_terms``: the same numbers up to float rounding). Part of the key: statistics written by
#: another format are never reused.
CACHE_FORMAT = 3
DEFAULT_CHUNK_SIZE = 128
#: Arrays stored per chunk, from the registered spaces: ``{space}_base`` unless the space's base is the
#: logits (``ScoreSpace.base_is_logits``: ``logit_base`` is ``logits`` and is not stored twice), its
#: ``_mean`` and ``_att``; a method with ``own_statistic`` (the pooling baselines) its ``stat_key`` array,
#: ``{space}@{method}`` (NaN where it does not apply to the model).
STAT_KEYS: Tuple[str, ...] = ("logits",) + tuple(
    f"{name}_base" for name, space in SPACES.items() if not space.base_is_logits) + tuple(
    f"{space}_{part}" for space in SPACES for part in ("mean", "att")) + tuple(
    method.stat_key(space) for space in SPACES for method in METHODS.values() if method.own_statistic)


class Statistics(dict):
    """The arrays of ``StatsCache.load`` by name; ``heads``: the heads along the ``_att`` arrays' axis 1."""

    heads: tuple = tuple(STORED_HEADS)


class CacheCorruptError(RuntimeError):
    """A cache chunk changed between validation and loading."""


class BadImageError(RuntimeError):
    """An image of a benchmark dataset could not be decoded or transformed (benchmarks need all)."""


def cache_key(fields: dict, extra_heads: Sequence = ()) -> str:
    """sha256 (hex) of the canonical JSON of everything that changes the numbers; ``extra_heads`` (heads
    stored besides ``STORED_HEADS``, ``choices.extra_heads``) join it by their tokens when there are any."""
    extra = {"extra_heads": [h.token for h in extra_heads]} if extra_heads else {}
    blob = json.dumps({"cache_format": CACHE_FORMAT, **fields, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def json_ready(obj):
    """Tuples → lists, numpy scalars → Python, recursively (for hashing and meta.json)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


@contextmanager
def atomic_path(path: Path):
    """Yield a hidden temp path beside ``path``; rename it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_ready(data), indent=1, sort_keys=True), encoding="utf-8")


class StatsCache:
    """The chunk files of one cache key (see the module docstring). ``heads``: the heads along the ``_att``
    arrays' axis 1, ``STORED_HEADS`` then ``extra_heads``."""

    def __init__(self, cache_dir: Union[str, Path], fields: dict, n_images: int, n_classes: int,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, extra_heads: Sequence = ()):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.fields = json_ready(fields)
        self.heads = tuple(STORED_HEADS) + tuple(extra_heads)
        self.key = cache_key(self.fields, tuple(extra_heads))
        self.path = Path(cache_dir).expanduser() / "stats" / self.key
        self.n_images, self.n_classes, self.chunk_size = int(n_images), int(n_classes), int(chunk_size)
        self.meta = {"cache_format": CACHE_FORMAT, "key": self.key, "fields": self.fields,
                     "n_images": self.n_images, "n_classes": self.n_classes, "chunk_size": self.chunk_size,
                     "temperatures": [h.meta_text for h in self.heads], "arrays": list(STAT_KEYS)}
        self._open()

    def _open(self) -> None:
        """Reuse the folder when its meta.json matches (adopting its chunk size), else start afresh."""
        meta_path = self.path / "meta.json"
        if meta_path.is_file():
            try:
                stored = json.loads(meta_path.read_text(encoding="utf-8"))
                size = stored["chunk_size"]
                same = isinstance(size, int) and size > 0 and {
                    k: v for k, v in stored.items() if k not in ("created", "chunk_size")} == {
                    k: v for k, v in json_ready(self.meta).items() if k != "chunk_size"}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                same = False
            if same:
                self.chunk_size = self.meta["chunk_size"] = size
                clean_temp_files(self.path)
                return
            warnings.warn(f"posthoc-csra: stale or unreadable statistics cache {self.path}; recomputing it")
            shutil.rmtree(self.path, ignore_errors=True)
        write_json_atomic(meta_path, {**self.meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    @property
    def n_chunks(self) -> int:
        return -(-self.n_images // self.chunk_size)

    def rows(self, chunk: int) -> Tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_images)

    def _files(self, chunk: int) -> Tuple[Path, Path]:
        return self.path / f"chunk-{chunk:05d}.npz", self.path / f"chunk-{chunk:05d}.json"

    def _shapes(self, chunk: int) -> Dict[str, tuple]:
        n = self.rows(chunk)[1] - self.rows(chunk)[0]
        h, c = len(self.heads), self.n_classes
        return {k: (n, h, c) if k.endswith("_att") else (n, c) for k in STAT_KEYS}

    def _read(self, chunk: int) -> Tuple[Optional[dict], Optional[dict], str]:
        """(arrays, sidecar, problem): arrays None with a reason when the chunk is missing or bad."""
        data_path, side_path = self._files(chunk)
        if not side_path.is_file() or not data_path.is_file():
            return None, None, "missing"
        try:
            side = json.loads(side_path.read_text(encoding="utf-8"))
            blob = data_path.read_bytes()
            if len(blob) != side["bytes"] or hashlib.sha256(blob).hexdigest() != side["sha256"]:
                return None, None, "checksum mismatch"
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in STAT_KEYS}
        except Exception as err:  # truncated / garbage JSON or npz
            return None, None, f"unreadable ({type(err).__name__}: {err})"
        bad = [k for k, shape in self._shapes(chunk).items()
               if arrays[k].shape != shape or arrays[k].dtype != np.float32]
        if bad or side.get("rows") != list(self.rows(chunk)):
            return None, None, f"wrong shape/rows for {bad or 'rows'}"
        return arrays, side, ""

    def missing_chunks(self) -> List[int]:
        """Chunks to compute; corrupt ones are deleted with a warning."""
        todo = []
        for chunk in range(self.n_chunks):
            arrays, _, problem = self._read(chunk)
            if arrays is None:
                if problem != "missing":
                    warnings.warn(f"posthoc-csra: statistics cache chunk {self._files(chunk)[0]} is corrupt "
                                  f"({problem}); recomputing it")
                    for p in self._files(chunk):
                        p.unlink(missing_ok=True)
                todo.append(chunk)
        return todo

    def write_chunk(self, chunk: int, arrays: Dict[str, np.ndarray], info: Optional[dict] = None) -> None:
        """Write one complete chunk atomically (data first, then its sidecar)."""
        shapes = self._shapes(chunk)
        arrays = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in STAT_KEYS}
        for k, shape in shapes.items():
            if arrays[k].shape != shape:
                raise ValueError(f"chunk {chunk}: {k} has shape {arrays[k].shape}, expected {shape}")
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        blob = buffer.getvalue()
        data_path, side_path = self._files(chunk)
        with atomic_path(data_path) as tmp:
            tmp.write_bytes(blob)
        write_json_atomic(side_path, {"rows": list(self.rows(chunk)), "bytes": len(blob),
                                      "sha256": hashlib.sha256(blob).hexdigest(), "info": info or {}})

    def load(self) -> Tuple[Statistics, dict]:
        """All chunks as (N, C) / (N, H, C) float32 arrays (plus ``logit_base``; ``.heads``: the H heads of the
        ``_att`` arrays) and the scorer info."""
        n, h, c = self.n_images, len(self.heads), self.n_classes
        out = Statistics({k: np.empty((n, h, c) if k.endswith("_att") else (n, c), np.float32) for k in STAT_KEYS})
        info: dict = {}
        for chunk in range(self.n_chunks):
            arrays, side, problem = self._read(chunk)
            if arrays is None:
                raise CacheCorruptError(f"statistics cache chunk {self._files(chunk)[0]}: {problem}")
            start, end = self.rows(chunk)
            for k in STAT_KEYS:
                out[k][start:end] = arrays[k]
            info = info or side.get("info", {})
        for name, space in SPACES.items():
            if space.base_is_logits:
                out[f"{name}_base"] = out["logits"]
        out.heads = self.heads
        return out, info


class _Items:
    """Dataset items → (index, transformed image or None, error naming the image) for the DataLoader."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i: int):
        from .images import ImageLoadError
        try:
            return i, self.transform(self.dataset[i][0]), None
        except ImageLoadError as err:
            return i, None, str(err)
        except Exception as err:
            return i, None, f"{self.dataset.image_id(i)}: {type(err).__name__}: {err}"


def _collate(batch):
    import torch
    bad = [(i, e) for i, _, e in batch if e is not None]
    if bad:
        return None, [i for i, _, _ in batch], bad
    return torch.stack([x for _, x, _ in batch]), [i for i, _, _ in batch], []


def scorer_info(scorer) -> dict:
    """What every chunk's sidecar records about the scorer that computed it."""
    return {"exact": bool(scorer.exact), "describe": scorer.describe(), "num_classes": scorer.num_classes,
            "baselines": scorer.baseline_notes()}


def chunk_statistics(scorer, dataset, transform, runtime, rows: Tuple[int, int], batch_size: int = 32,
                     workers: int = 2, on_batch: Optional[Callable[[int, int], None]] = None,
                     heads: Optional[Sequence] = None) -> Tuple[Dict[str, np.ndarray], int]:
    """The statistics of images ``rows[0]:rows[1]`` → ({key in STAT_KEYS: (n, C) or (n, H, C) float32},
    the batch size that worked): ``stream_statistics`` over this one chunk (its own DataLoader).
    Out of memory on a batch restarts the chunk with half the batch (down to 1), as timm's validate.py
    does. ``on_batch(n_images, batch_index)`` runs before each forward pass (a test hook). Raises
    BadImageError naming the first image that cannot be loaded. ``heads``: the heads of the ``_att`` arrays
    (``StatsCache.heads``; None: the scorer's default, ``STORED_HEADS``).
    """
    try:
        (done,) = stream_statistics(scorer, dataset, transform, runtime, [(None, rows)], batch_size, workers, on_batch,
                                    heads=heads)
    except StreamFailed as failed:
        raise failed.error from None
    return done.arrays, done.batch_size


class ChunkDone(NamedTuple):
    """One chunk of a stream, complete: its tag, arrays, the batch size that fitted, seconds since the
    previous chunk ended (or the stream began)."""

    tag: object
    arrays: Dict[str, np.ndarray]
    batch_size: int
    seconds: float


class StreamFailed(Exception):
    """A chunk of ``stream_statistics`` failed: ``error`` is what was raised, ``pending`` the tags of the chunks
    taken from the input but not finished, the failing one first."""

    def __init__(self, error: BaseException, pending: List[object]):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error, self.pending = error, pending


def stream_statistics(scorer, dataset, transform, runtime, chunks: Iterable[Tuple[object, Tuple[int, int]]],
                      batch_size: int = 32, workers: int = 2, on_batch: Optional[Callable[[int, int], None]] = None,
                      on_images: Optional[Callable[[object, int], None]] = None,
                      heads: Optional[Sequence] = None) -> Iterator[ChunkDone]:
    """The statistics of many chunks through ONE DataLoader: ``chunks`` yields (tag, rows) and is read lazily,
    as the loader's workers ask for more indices (so a driver can keep planning just ahead of them); each
    chunk comes back as a ``ChunkDone`` as soon as its last batch is through (a driver can write it at once:
    an interrupted run keeps every finished chunk).

    Batches never straddle chunks and start at each chunk's first row, exactly as a chunk computed on its own
    (``chunk_statistics``): the statistics are the same bit for bit. ``on_images(tag, n)`` runs after each
    batch (progress). Out of memory on a batch (batch size > 1): the loader is stopped and restarted with half
    the batch at the first unfinished chunk (``ChunkDone.batch_size`` says what fitted). Any other error
    raises ``StreamFailed`` with the unfinished chunks' tags. ``heads``: as ``chunk_statistics``.
    """
    import torch

    pending: collections.deque = collections.deque()  # (tag, rows) taken from ``chunks``, not finished
    if isinstance(chunks, (list, tuple)) and sum(-(-(end - start) // batch_size) for _, (start, end) in chunks) <= 1:
        workers = 0  # one batch in all: starting worker processes would cost more than they save
    source = iter(chunks)

    def more():
        for item in source:
            pending.append(item)
            yield item

    while True:
        try:
            yield from _stream_pass(scorer, dataset, transform, runtime, pending, more, batch_size, workers,
                                    on_batch, on_images, heads)
            return
        except StreamFailed:
            raise
        except Exception as err:
            if batch_size == 1 or not is_out_of_memory(err):
                raise StreamFailed(err, [tag for tag, _ in pending]) from err
            rows = pending[0][1] if pending else (0, 0)
            log.warning("posthoc-csra: out of memory with batch size %d (%s); retrying rows %d:%d with %d",
                        batch_size, err, *rows, batch_size // 2)
        batch_size //= 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _stream_pass(scorer, dataset, transform, runtime, pending, more, batch_size, workers, on_batch,
                 on_images, heads) -> Iterator[ChunkDone]:
    """One DataLoader over the unfinished chunks, then over more as they come (see ``stream_statistics``)."""
    import itertools
    import time

    import torch

    from .runtime import release_host_memory

    replay = list(pending)

    def batches():
        for _, (start, end) in itertools.chain(replay, more()):
            for b in range(start, end, batch_size):
                yield list(range(b, min(b + batch_size, end)))

    loader = torch.utils.data.DataLoader(_Items(dataset, transform), batch_sampler=_Batches(batches),
                                         num_workers=workers, collate_fn=_collate,
                                         pin_memory=runtime.torch_device.type == "cuda")
    buffers: Dict[str, list] = {k: [] for k in STAT_KEYS}
    # on the CPU a batch's activations live in the host heap: hand the freed ones back after every batch, or
    # the heap's resident free memory creeps up with the images (fragments a later batch cannot reuse)
    trim_every_batch = runtime.torch_device.type == "cpu"
    done_rows, index, started = 0, 0, time.perf_counter()
    batches_iter = iter(loader)
    try:
        with torch.inference_mode():
            for images, _, bad in batches_iter:
                tag, (start, end) = pending[0]
                if bad:
                    raise BadImageError(f"{getattr(dataset, 'name', 'dataset')}: image {bad[0][1]} "
                                        f"({len(bad)} bad in this batch; benchmarks need every image)")
                if on_batch is not None:
                    on_batch(len(images), index)
                with runtime.autocast():
                    x = runtime.inputs(images)
                    stats = scorer.statistics(x) if heads is None else scorer.statistics(x, heads)
                for k in STAT_KEYS:
                    buffers[k].append(stats[k].float().cpu().numpy())
                n_images = len(images)
                del images, x, stats
                if trim_every_batch:
                    release_host_memory()
                done_rows, index = done_rows + n_images, index + 1
                if on_images is not None:
                    on_images(tag, n_images)
                if done_rows == end - start:
                    pending.popleft()
                    arrays = {k: np.concatenate(v) for k, v in buffers.items()}
                    buffers = {k: [] for k in STAT_KEYS}
                    now = time.perf_counter()
                    yield ChunkDone(tag, arrays, batch_size, now - started)
                    del arrays  # written by the consumer: give its memory back to the OS
                    release_host_memory()
                    done_rows, index, started = 0, 0, time.perf_counter()
    finally:
        shutdown = getattr(batches_iter, "_shutdown_workers", None)  # stop the workers now, not at collection
        if shutdown is not None:
            shutdown()


class _Batches:
    """A batch sampler read lazily: a fresh ``make()`` generator per pass over the loader."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def clean_temp_files(folder: Union[str, Path], older_than_s: float = 86400.0) -> int:
    """Remove temp files that killed runs left in a cache folder: those of a process of this host that
    is gone, and any older than a day (another host's writer cannot be asked). Returns how many."""
    removed, now = 0, time.time()
    for tmp in Path(folder).glob(".*.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > older_than_s or _writer_gone(tmp.name):
                tmp.unlink()
                removed += 1
        except OSError:  # another process renamed or removed it
            pass
    return removed


def _temp_name(path: Path) -> Path:
    """``.NAME.tmp-HOST-PID-RANDOM`` beside ``path``: the writer's host and pid say whether it still runs."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    return path.with_name(f".{path.name}.tmp-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _writer_gone(name: str) -> bool:
    match = re.search(r"\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}$", name)
    if match is None or match["host"] != re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()):
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


__all__ = ["CACHE_FORMAT", "STAT_KEYS", "Statistics", "StatsCache", "BadImageError", "CacheCorruptError", "cache_key",
           "scorer_info", "chunk_statistics", "stream_statistics", "ChunkDone", "StreamFailed",
           "atomic_path", "clean_temp_files"]
