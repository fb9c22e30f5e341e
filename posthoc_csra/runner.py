"""How ``run_bench`` runs: plan the cache chunks a benchmark needs, compute the missing ones on an
executor, write them into the driver's cache, then evaluate every pass from the cache alone.

A *pass* is one (model, img_size, dataset) with its preprocessing: one cache key (``cache.py``).
Its unit of work is a cache chunk: a ``ChunkJob`` (small, picklable: names and option values)
goes to a ``ChunkTask`` on an executor (``executors.py``). In a pool worker or a Ray task,
``task(job)`` (``compute_chunk``) loads the model and dataset in its own process (kept for the next
chunk) and computes the chunk's statistics with its own DataLoader; the local executor streams
instead (``stream_chunks``): one DataLoader per pass, progress per batch, and each chunk still
handed back as soon as its last batch is through. The driver checks each result against its own
cache key and writes it atomically, so a run killed at any point loses at most the chunks in
flight and the next run schedules only the missing ones.

Order: options and every dataset spec are checked first; models are then prepared one by one as
the executor asks for work (the driver needs each model's weights identity, data config and class
count for the cache key); the table is built after the last chunk, in model × size × dataset order.
"""
from __future__ import annotations

import collections
import os
import resource
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .executors import Done, Executor, Faults, Progress
from .options import EvalOptions, LoadOptions, ModelSource
from .prepare import PreparedModel, prepare_model

#: A size-dependent spec (mosaics) is checked at this size before any model says its own.
CHECK_SIZE = 224


# ---------------------------------------------------------------- models and datasets (per process)
class _Recent:
    """The last ``size`` values built in this process, by key (models and datasets reused by the
    next chunk task of the same pass)."""

    def __init__(self, size: int):
        self.size, self.items = size, collections.OrderedDict()

    def get(self, key, build):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = build()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_MODELS = _Recent(1)
_DATASETS = _Recent(8)
_BATCH_CAP: Dict[str, int] = {}  # cache key → the batch size that fitted in memory here


def _model(name: str, img_size: Optional[int], source: ModelSource) -> PreparedModel:
    return _MODELS.get((name, img_size, source), lambda: prepare_model(name, img_size, source))


def build_dataset(spec: str, size: Optional[int], loading: LoadOptions):
    """The dataset of ``spec`` at evaluation size ``size`` (used only by size-dependent specs), with
    the loading options it takes (mosaics: ``dataset_seed``, ``mosaic_count``)."""
    from .datasets import dataset_options, is_size_dependent, parse_dataset

    takes = dataset_options(spec)
    options = {k: v for k, v in (("seed", loading.dataset_seed), ("count", loading.mosaic_count))
               if k in takes and v is not None}
    size = size if is_size_dependent(spec) else None
    key = (spec, size, tuple(sorted(options.items())))
    return _DATASETS.get(key, lambda: parse_dataset(spec, size=size, **options))


def pass_fields(prepared: PreparedModel, ds, runtime) -> dict:
    """Everything that changes a pass's numbers: what its cache key hashes."""
    import timm

    config = prepared.preprocessing[bool(ds.full_frame)][1]
    return dict(model=prepared.name, weights=prepared.weights_key, timm=timm.__version__,
                num_classes=prepared.net.num_classes, data_config=config, dataset=ds.fingerprint(),
                amp=runtime.amp)


# ---------------------------------------------------------------- the chunk task
@dataclass(frozen=True)
class ChunkJob:
    """One cache chunk of one pass: what a worker needs to compute it, as plain values."""

    model: str
    img_size: Optional[int]  # as asked for (None: the model's own)
    source: ModelSource
    dataset: str  # the spec
    loading: LoadOptions
    runtime: "Runtime"  # noqa: F821
    chunk: int
    rows: Tuple[int, int]
    key: str  # the driver's cache key; the worker checks it builds the same model and dataset
    label: str  # "model @size on dataset", for progress and errors
    heads: tuple = ()  # heads stored besides the default ones (``choices.extra_heads``; part of the key)

    @property
    def stored_heads(self) -> Optional[tuple]:
        """The heads of the chunk's ``_att`` arrays (``cache.StatsCache.heads``); None: the default ones."""
        from .choices import STORED_HEADS

        return STORED_HEADS + self.heads if self.heads else None


@dataclass(frozen=True)
class ChunkResult:
    """A chunk's statistics and how they were made (for the driver's checks and run summary)."""

    key: str
    rows: Tuple[int, int]
    arrays: Dict[str, np.ndarray]
    info: dict
    seconds: float  # in the task, model/dataset preparation included
    batch_size: int  # the batch size that fitted (smaller than asked after out-of-memory)
    worker: str  # host:pid
    peak_rss_mb: float  # the worker process's peak resident memory so far


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


@contextmanager
def _threads(loading: LoadOptions):
    """torch intra-op threads of a chunk task (``loading.threads``; None: the process's own)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(loading.threads or threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compute_chunk(job: ChunkJob, faults: Optional[Faults] = None) -> ChunkResult:
    """The chunk task (run by an executor, in any process): the statistics of ``job.rows``, with its own
    DataLoader."""
    from .cache import chunk_statistics, scorer_info

    with _threads(job.loading):
        start = time.perf_counter()
        scorer, ds, transform, key, asked = _pass_setup(job, faults)
        arrays, batch_size = chunk_statistics(scorer, ds, transform, job.runtime, job.rows, asked, job.loading.workers,
                                              faults.before_batch if faults is not None else None, job.stored_heads)
        if batch_size < asked:  # out of memory: the next chunks of this pass start with what fitted
            _BATCH_CAP[key] = batch_size
        return ChunkResult(key, job.rows, arrays, scorer_info(scorer), time.perf_counter() - start, batch_size,
                           f"{socket.gethostname()}:{os.getpid()}", _peak_rss_mb())


def _pass_setup(job: ChunkJob, faults: Optional[Faults]):
    """What every chunk of ``job``'s pass needs in this process: (scorer, dataset, transform, cache key, batch
    size to start with); the model and dataset are kept for the next task of the same pass."""
    from .cache import cache_key
    from .scorer import CSRAScorer

    if faults is not None:
        faults.before_task(job.model)
    prepared = _model(job.model, job.img_size, job.source)
    ds = build_dataset(job.dataset, prepared.img_size, job.loading)
    key = cache_key(pass_fields(prepared, ds, job.runtime), job.heads)
    if key != job.key:
        raise RuntimeError(f"{job.label}: this worker ({socket.gethostname()}) builds another model, weights, "
                           f"dataset or timm version than the driver (cache key {key[:12]} ≠ {job.key[:12]}); "
                           f"give every node the same files and packages")
    transform, config = prepared.preprocessing[bool(ds.full_frame)]
    scorer = prepared.scorers.get((bool(ds.full_frame), job.runtime))
    if scorer is None:
        scorer = job.runtime.prepare(CSRAScorer(prepared.net, input_size=config["input_size"]))
        job.runtime.compile_model(prepared.net)
        prepared.scorers[bool(ds.full_frame), job.runtime] = scorer
    return scorer, ds, transform, key, min(job.loading.batch_size, _BATCH_CAP.get(key, job.loading.batch_size))


class _Jobs:
    """The driver's job iterator with one job of look-ahead (to tell where a pass ends)."""

    def __init__(self, jobs: Iterable[ChunkJob]):
        self._jobs, self._next = iter(jobs), None

    def peek(self) -> Optional[ChunkJob]:
        if self._next is None:
            self._next = next(self._jobs, None)
        return self._next

    def take(self) -> Optional[ChunkJob]:
        job, self._next = self.peek(), None
        return job

    def of_pass(self, key: str) -> Iterator[ChunkJob]:
        """Jobs while they belong to the pass ``key`` (read lazily)."""
        while (job := self.peek()) is not None and job.key == key:
            yield self.take()


def stream_chunks(jobs: Iterable[ChunkJob], faults: Optional[Faults] = None,
                  progress: Optional[Progress] = None) -> Iterator[Done]:
    """The local executor's way: every pass's chunks through ONE DataLoader (``cache.stream_statistics``),
    read from ``jobs`` only as far as the loader prefetches; a ``Done`` per chunk as soon as it is complete
    (the driver writes it at once, so an interrupted run loses at most the chunks in flight) and
    ``progress(job, n_images)`` after every batch. A failing chunk fails the chunks of its pass already
    taken; the driver then plans no more of that pass."""
    jobs = _Jobs(jobs)
    while (first := jobs.peek()) is not None:
        yield from _stream_pass(jobs, first, faults, progress)


def _stream_pass(jobs: _Jobs, first: ChunkJob, faults: Optional[Faults], progress: Optional[Progress]):
    from .cache import StreamFailed, scorer_info, stream_statistics

    worker = f"{socket.gethostname()}:{os.getpid()}"
    with _threads(first.loading):
        start = time.perf_counter()
        try:
            scorer, ds, transform, key, asked = _pass_setup(first, faults)
        except Exception as err:
            yield Done(jobs.take(), None, err, time.perf_counter() - start)
            failed = (err, [])
        else:
            info, failed, setup_s = scorer_info(scorer), None, time.perf_counter() - start
            chunks = ((job, job.rows) for job in jobs.of_pass(first.key))
            try:
                for done in stream_statistics(scorer, ds, transform, first.runtime, chunks, asked,
                                              first.loading.workers, faults.before_batch if faults else None,
                                              progress, first.stored_heads):
                    job = done.tag
                    if done.batch_size < asked:  # out of memory: later passes of this key start with what fitted
                        _BATCH_CAP[key] = done.batch_size
                    seconds = done.seconds + (setup_s if job is first else 0.0)  # the first pays the preparation
                    yield Done(job, ChunkResult(key, job.rows, done.arrays, info, seconds, done.batch_size, worker,
                                                _peak_rss_mb()), None, seconds)
            except StreamFailed as stream_failed:
                failed = (stream_failed.error, stream_failed.pending)
        if failed is not None:  # the chunks of this pass already taken fail with it
            err, taken = failed
            for job in [*taken, *jobs.of_pass(first.key)]:
                yield Done(job, None, err, 0.0)


@dataclass(frozen=True)
class ChunkTask:
    """What an executor runs (picklable: it travels to pool workers and Ray tasks).

    ``task(job)``: one chunk with its own DataLoader, in any process. ``task.stream(jobs, progress)``: a
    run's chunks in this process, one DataLoader per pass, progress per batch (``stream_chunks``; the
    local executor). ``faults``: failures to inject (tests, benchmarks/scale.py).
    """

    faults: Optional[Faults] = None

    def __call__(self, job: ChunkJob) -> ChunkResult:
        return compute_chunk(job, self.faults)

    def stream(self, jobs: Iterable[ChunkJob], progress: Optional[Progress] = None) -> Iterator[Done]:
        return stream_chunks(jobs, self.faults, progress)


# ---------------------------------------------------------------- the driver
@dataclass
class Pass:
    """One (model, img_size, dataset) of a run: its cache and what happened to it."""

    model: str
    img_size: Optional[int]  # as asked for (None: the model's own)
    spec: str
    size: Optional[int] = None  # the size it runs at, once the model is prepared
    weights: Optional[str] = None
    dataset: object = None
    cache: object = None
    class_map: object = None
    error: Optional[BaseException] = None
    leader: Optional["Pass"] = None  # an earlier pass of the same cache key computes the chunks
    computed: int = 0  # images through a backbone in this run
    seconds: float = 0.0  # in chunk tasks (summed) and loading

    def failure(self) -> Optional[BaseException]:
        return self.error or (self.leader.failure() if self.leader is not None else None)

    def where(self) -> dict:
        return dict(model=self.model, weights=self.weights, img_size=self.size or self.img_size,
                    dataset_spec=self.spec, dataset=getattr(self.dataset, "short_name", None) or self.spec)


@dataclass
class RunStats:
    """What a run did, for ``table.attrs["run"]`` (benchmarks/scale.py reports it)."""

    executor: str
    chunks: int = 0  # chunks of every pass
    chunks_cached: int = 0  # found valid in the cache
    chunks_computed: int = 0  # computed by a task and written in this run
    chunks_failed: int = 0  # a task raised (→ the pass's error row)
    task_seconds: float = 0.0  # summed over the computed chunks, inside the tasks
    latency_seconds: float = 0.0  # summed: submit → result back in the driver
    wall_seconds: float = 0.0
    batch_sizes: Dict[int, int] = field(default_factory=dict)  # batch size that fitted → chunks
    workers: Dict[str, float] = field(default_factory=dict)  # host:pid → peak resident memory (MiB)


class BenchRun:
    """One benchmark run in the driver: checks, plans, collects and evaluates (see the module docstring)."""

    def __init__(self, names: Sequence[str], specs: Sequence[str], img_sizes: Sequence[Optional[int]],
                 source: ModelSource, loading: LoadOptions, runtime, cache_dir: Path, executor: Executor,
                 extra_heads: tuple = ()):
        self.names, self.specs, self.img_sizes = list(names), list(specs), list(img_sizes)
        self.extra_heads = tuple(extra_heads)  # stored besides the default heads (``choices.extra_heads``)
        self.source, self.runtime, self.cache_dir, self.executor = source, runtime, cache_dir, executor
        self.loading = replace(loading, workers=executor.loader_workers(loading.workers))
        self.passes: List[Pass] = []
        self.stats = RunStats(executor.describe())
        self._estimate = {spec: self._check_dataset(spec) for spec in self.specs}
        self._leaders: Dict[str, Pass] = {}
        self._bar = None
        self._reported: Dict[Tuple[str, int], int] = {}  # (key, chunk) → images the executor reported per batch

    def _check_dataset(self, spec: str) -> int:
        """Build the dataset once before any model is loaded (a bad spec or folder fails here);
        → its image count, for the progress bar."""
        from .datasets import is_size_dependent

        sizes = [s for s in self.img_sizes if s] or [CHECK_SIZE]
        ds = build_dataset(spec, sizes[0] if is_size_dependent(spec) else None, self.loading)
        return len(ds)

    # ---- planning: jobs are pulled lazily by the executor
    def jobs(self) -> Iterator[ChunkJob]:
        for name in self.names:
            for img_size in self.img_sizes:
                passes = [Pass(name, img_size, spec) for spec in self.specs]
                self.passes += passes
                try:
                    prepared = _model(name, img_size, self.source)
                except Exception as err:
                    for p in passes:
                        self._fail(p, err, self._estimate[p.spec])
                    continue
                for p in passes:
                    p.weights, p.size = prepared.weights_label, prepared.img_size
                    yield from self._pass_jobs(p, prepared)

    def _pass_jobs(self, p: Pass, prepared: PreparedModel) -> Iterator[ChunkJob]:
        from .cache import StatsCache
        from .classmaps import class_map_for

        try:
            p.dataset = build_dataset(p.spec, prepared.img_size, self.loading)
            p.class_map = class_map_for(prepared.net.num_classes, p.dataset)
            p.cache = StatsCache(self.cache_dir, pass_fields(prepared, p.dataset, self.runtime), len(p.dataset),
                                 prepared.net.num_classes, self.loading.chunk_size, self.extra_heads)
            p.leader = self._leaders.get(p.cache.key)  # the same statistics as an earlier pass (sizes None, 224)
            todo = [] if p.leader is not None else p.cache.missing_chunks()
        except Exception as err:
            self._fail(p, err, self._estimate[p.spec])
            return
        if p.leader is not None:
            self._progress(-self._estimate[p.spec], 0)
            return
        self._leaders[p.cache.key] = p
        self.stats.chunks += p.cache.n_chunks
        self.stats.chunks_cached += p.cache.n_chunks - len(todo)
        todo_images = [p.cache.rows(chunk)[1] - p.cache.rows(chunk)[0] for chunk in todo]
        self._progress(p.cache.n_images - self._estimate[p.spec], p.cache.n_images - sum(todo_images))
        label = f"{p.model} @{prepared.img_size} on {p.dataset.short_name}"
        for i, chunk in enumerate(todo):
            if p.error is not None:  # a chunk of this pass failed: the rest would fail alike
                self._progress(-sum(todo_images[i:]), 0)
                return
            yield ChunkJob(p.model, p.img_size, self.source, p.spec, self.loading, self.runtime, chunk,
                           p.cache.rows(chunk), p.cache.key, label, self.extra_heads)

    def _fail(self, p: Pass, err: BaseException, estimate: int) -> None:
        p.error = p.error or err
        self._progress(-estimate, 0)

    def _progress(self, more_total: int, done: int) -> None:
        """The bar counts images: ``more_total`` corrects the estimate, ``done`` images are accounted for."""
        if self._bar is not None:
            self._bar.total += more_total
            self._bar.update(done)

    def _on_images(self, job: ChunkJob, n_images: int) -> None:
        """The executor's per-batch progress (``Executor.run``'s ``progress``)."""
        if self._bar is not None:
            self._reported[job.key, job.chunk] = self._reported.get((job.key, job.chunk), 0) + n_images
            self._bar.set_description(job.label, refresh=False)
            self._bar.update(n_images)

    # ---- collecting: the driver verifies and writes every result
    def accept(self, done: Done) -> None:
        job = done.job
        p = self._leaders[job.key]
        self.stats.latency_seconds += done.latency_s
        if done.error is None:
            try:
                result: ChunkResult = done.result
                if result.key != p.cache.key or tuple(result.rows) != p.cache.rows(job.chunk):
                    raise RuntimeError(f"{job.label}: a worker returned chunk rows {result.rows} of key "
                                       f"{result.key[:12]} for chunk {job.chunk} of {p.cache.key[:12]}")
                p.cache.write_chunk(job.chunk, result.arrays, result.info)  # checks shapes; atomic
            except Exception as err:
                done = done._replace(error=err)
        if done.error is not None:
            p.error = p.error or done.error
            self.stats.chunks_failed += 1
        else:
            p.computed += result.rows[1] - result.rows[0]
            p.seconds += result.seconds
            self.stats.chunks_computed += 1
            self.stats.task_seconds += result.seconds
            self.stats.batch_sizes[result.batch_size] = self.stats.batch_sizes.get(result.batch_size, 0) + 1
            self.stats.workers[result.worker] = max(self.stats.workers.get(result.worker, 0.0),
                                                    result.peak_rss_mb)
        if self._bar is not None:  # the chunk's images not yet reported batch by batch
            unreported = job.rows[1] - job.rows[0] - self._reported.pop((job.key, job.chunk), 0)
            self._bar.set_description(job.label, refresh=False)
            self._bar.set_postfix(chunks_computed=self.stats.chunks_computed, cached=self.stats.chunks_cached,
                                  failed=self.stats.chunks_failed, refresh=False)
            self._bar.update(unreported)

    def execute(self) -> "BenchRun":
        """Compute every missing chunk on the executor, writing each into the cache."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        task = ChunkTask(self.executor.faults)
        total = sum(self._estimate.values()) * len(self.names) * len(self.img_sizes)
        try:
            with tqdm(total=total, unit="img", desc=f"bench ({self.executor.name})", file=sys.stderr,
                      disable=not self.loading.progress, dynamic_ncols=True) as self._bar:
                for done in self.executor.run(task, self.jobs(), self._on_images):
                    self.accept(done)
        finally:
            self._bar = None
            self.stats.wall_seconds = time.perf_counter() - start
        return self

    # ---- evaluating: every pass from the cache alone
    def load(self, p: Pass):
        """(stats, info) of a pass from the cache; raises its error when it has one."""
        err = p.failure()
        if err is not None:
            raise err
        start = time.perf_counter()
        stats, info = p.cache.load()
        p.seconds += time.perf_counter() - start
        return stats, info

    def table(self, evaluation: EvalOptions):
        import pandas as pd

        from .datasets import dataset_split
        from .evaluation import COLUMNS, evaluate_stats

        frames = []
        for p in self.passes:
            try:
                stats, info = self.load(p)
                ds = p.dataset
                df = evaluate_stats(stats, ds.targets(), ds.ignore_mask(), evaluation, class_map=p.class_map,
                                    split=(dataset_split(ds, evaluation.val_fraction, evaluation.split_seed)
                                           if evaluation.select_on else None),
                                    notes=info.get("baselines"))
                del stats
                frames.append(df.assign(**p.where(), preprocessing=_preprocessing(ds, p.cache),
                                        exact=info.get("exact"), seconds=round(p.seconds, 3),
                                        cached=(p.leader or p).computed == 0))
            except Exception as err:
                frames.append(pd.DataFrame([{**p.where(), "error": f"{type(err).__name__}: {err}"}]))
        table = pd.concat(frames, ignore_index=True)  # error rows stay in model/size/dataset order
        for column in COLUMNS:
            if column not in table:
                table[column] = None
        table["error"] = table["error"].astype("string")
        for column in ("exact", "cached"):  # error rows have none
            table[column] = table[column].astype("boolean")
        for column in ("img_size", "n_images", "n_classes", "n_always_positive", "heads"):
            try:
                table[column] = table[column].astype("Int64")
            except (TypeError, ValueError):
                pass  # explicit temperatures are labelled by strings
        table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]
        table.attrs["backbone_images"] = sum(p.computed for p in self.passes)
        table.attrs["run"] = asdict(self.stats)
        return table


def _preprocessing(ds, cache) -> str:
    from .choices import preprocessing_mode

    config = cache.fields["data_config"]
    return preprocessing_mode(ds.full_frame, config.get("crop_pct", 0.875), config.get("crop_mode", "center"))


__all__ = ["build_dataset", "pass_fields", "ChunkJob", "ChunkResult", "ChunkTask", "compute_chunk", "stream_chunks",
           "Pass", "RunStats", "BenchRun"]
