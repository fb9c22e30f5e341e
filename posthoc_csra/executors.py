"""Where the benchmark's chunk tasks run: one small interface, a registry of engines.

A chunk task (``runner.ChunkTask``) turns one ``runner.ChunkJob`` — a cache chunk of one (model,
dataset, preprocessing) pass — into that chunk's statistics. ``Executor.run(task, jobs, progress)``
runs tasks and yields a ``Done`` per job as it finishes (in any order), holding the task's result or
the exception it raised; the driver (``bench.run_bench``) verifies each result and writes it into
its cache, so workers never touch the cache and a cluster needs no shared filesystem.

``EXECUTORS`` is the registry ``bench --executor`` reads (name → ``ExecutorKind``: a one-line summary,
the factory, the command-line options it takes); ``make_executor(name, **options)`` builds one:

* ``local``: in this process, in order (the default; no extra dependency). It streams: one
  DataLoader per pass (``task.stream``), each chunk still handed back — and written — as soon as
  it is complete, and ``progress(job, n_images)`` after every batch.
* ``process-pool`` / ``thread-pool``: a ``concurrent.futures`` pool on this machine, one chunk
  per task (``task(job)``, each with its own DataLoader).
* ``ray``: tasks on a Ray cluster (``pip install "posthoc-csra[ray]"``); results come back
  through Ray's object store; a worker process that dies mid-task is retried (``max_retries``).

Executors that run tasks elsewhere report no per-batch progress: the driver moves its bar when a
chunk comes back. ``jobs`` is consumed lazily (at most ``max_in_flight`` tasks are pending; the local
stream reads ahead only as far as its DataLoader prefetches), so the driver prepares models just ahead
of the workers. ``Faults`` injects failures into tasks, to test recovery. Torch-free at import.
"""
from __future__ import annotations

import functools
import os
import signal
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Tuple

from .errors import InputError

#: ``progress(job, n_images)``: images of ``job`` through the backbone since the last call.
Progress = Callable[[Any, int], None]


class Done(NamedTuple):
    """One finished job: ``result`` (the task's return value) or ``error`` (what it raised)."""

    job: Any
    result: Any = None
    error: Optional[BaseException] = None
    latency_s: float = 0.0  # submit → result back in the driver


@dataclass(frozen=True)
class Faults:
    """Failures injected into chunk tasks, to test and measure recovery (tests, benchmarks/scale.py).

    oom_above: a batch of more images than this raises ``torch.cuda.OutOfMemoryError`` (the task
    then retries the chunk with a smaller batch). fail_models: tasks of these model names raise
    RuntimeError (→ an error row). kill_marker: the first task that creates this file (atomically)
    writes its pid there and SIGKILLs its own process before its first forward pass — a worker (or,
    under the local executor, the driver) killed mid-task. delay_s: sleep before each batch (slows
    a run so that a test can kill it halfway).
    """

    oom_above: Optional[int] = None
    fail_models: Tuple[str, ...] = ()
    kill_marker: Optional[str] = None
    delay_s: float = 0.0

    def before_task(self, model: str) -> None:
        if model in self.fail_models:
            raise RuntimeError(f"injected failure in a task of {model}")

    def before_batch(self, n_images: int, batch_index: int) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.kill_marker and batch_index == 0 and _claim(self.kill_marker):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.oom_above is not None and n_images > self.oom_above:
            import torch
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: batch of {n_images} > "
                                              f"{self.oom_above})")


def _claim(marker: str) -> bool:
    """True for the one process that creates ``marker`` first (it writes its pid there)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


class Executor:
    """Runs chunk tasks; ``run(task, jobs)`` yields a ``Done`` per job as it finishes.

    ``faults``: failures to inject into every task (None in real runs). Use as a context manager
    (or call ``close``) to release what the executor started.
    """

    name = "executor"

    def __init__(self, faults: Optional[Faults] = None):
        self.faults = faults

    def run(self, task: Callable, jobs: Iterable, progress: Optional[Progress] = None) -> Iterator[Done]:
        """Run ``task`` on every job; ``progress`` is called per batch by executors that can see batches."""
        raise NotImplementedError

    def loader_workers(self, requested: int) -> int:
        """DataLoader workers each task may start (the pool's own processes already use the CPUs)."""
        return requested

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Release what this executor started (pools, a Ray instance it began)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Every task in this process, in job order: streamed through one DataLoader per pass when the task
    can (``task.stream(jobs, progress)``), else one ``task(job)`` after the other."""

    name = "local"

    def run(self, task: Callable, jobs: Iterable, progress: Optional[Progress] = None) -> Iterator[Done]:
        stream = getattr(task, "stream", None)
        if stream is not None:
            yield from stream(jobs, progress)
            return
        for job in jobs:
            start = time.perf_counter()
            try:
                result = task(job)
            except Exception as err:
                yield Done(job, None, err, time.perf_counter() - start)
            else:
                yield Done(job, result, None, time.perf_counter() - start)


class _Windowed(Executor):
    """Submits lazily (at most ``max_in_flight`` pending) and yields results as they finish."""

    def __init__(self, max_in_flight: Optional[int] = None, faults: Optional[Faults] = None):
        super().__init__(faults)
        if max_in_flight is not None and max_in_flight < 1:
            raise InputError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight

    def _submit(self, task: Callable, job) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list) -> list:
        """Some finished handles (at least one)."""
        raise NotImplementedError

    def _value(self, handle) -> Any:
        raise NotImplementedError

    def _cancel(self, handles: list) -> None:
        raise NotImplementedError

    def _capacity(self) -> int:
        raise NotImplementedError

    def run(self, task: Callable, jobs: Iterable, progress: Optional[Progress] = None) -> Iterator[Done]:
        cap = self.max_in_flight or self._capacity()
        pending: dict = {}
        jobs = iter(jobs)
        more = True
        try:
            while True:
                while more and len(pending) < cap:
                    job = next(jobs, _END)
                    if job is _END:
                        more = False
                    else:
                        pending[self._submit(task, job)] = (job, time.perf_counter())
                if not pending:
                    return
                for handle in self._wait(list(pending)):
                    job, start = pending.pop(handle)
                    try:
                        value = self._value(handle)
                    except Exception as err:
                        yield Done(job, None, _cause(err), time.perf_counter() - start)
                    else:
                        yield Done(job, value, None, time.perf_counter() - start)
        finally:
            if pending:
                self._cancel(list(pending))


_END = object()


class PoolExecutor(_Windowed):
    """Tasks in a ``concurrent.futures`` pool on this machine: ``kind`` "process" (spawned
    interpreters; a crashed one fails its tasks, no retry) or "thread"."""

    def __init__(self, workers: int = 2, kind: str = "process", max_in_flight: Optional[int] = None,
                 faults: Optional[Faults] = None):
        super().__init__(max_in_flight, faults)
        if kind not in ("process", "thread"):
            raise InputError(f"PoolExecutor kind must be 'process' or 'thread', got {kind!r}")
        if workers < 1:
            raise InputError(f"PoolExecutor workers must be >= 1, got {workers}")
        self.workers, self.kind, self._pool = workers, kind, None
        self.name = f"{kind}-pool"

    def describe(self) -> str:
        return f"{self.name} ({self.workers} workers)"

    def loader_workers(self, requested: int) -> int:
        return 0 if self.kind == "process" else requested

    def _capacity(self) -> int:
        return 2 * self.workers

    def _submit(self, task, job):
        if self._pool is None:
            if self.kind == "process":
                import multiprocessing
                self._pool = futures.ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"))
            else:
                self._pool = futures.ThreadPoolExecutor(self.workers)
        return self._pool.submit(task, job)

    def _wait(self, handles):
        return list(futures.wait(handles, return_when=futures.FIRST_COMPLETED).done)

    def _value(self, handle):
        return handle.result()

    def _cancel(self, handles):
        for handle in handles:
            handle.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _call(task: Callable, job):
    """The Ray task: ``task(job)`` in a worker process."""
    return task(job)


class RayExecutor(_Windowed):
    """Chunk tasks on a Ray cluster; results return through the object store to the driver.

    address: None starts a local Ray instance when none is running (it is shut down by ``close``);
    "auto" or "HOST:PORT" joins a running cluster. cpus_per_task / gpus_per_task: Ray resources of
    one task (a task also uses up to ``cpus_per_task - 1`` DataLoader workers). max_retries: how
    often Ray reruns a task whose worker process died (an exception raised by the task itself is
    not retried: it becomes an error row). init_kwargs: more ``ray.init`` arguments.
    """

    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_task: float = 1, gpus_per_task: float = 0,
                 max_retries: int = 3, max_in_flight: Optional[int] = None, init_kwargs: Optional[dict] = None,
                 faults: Optional[Faults] = None):
        super().__init__(max_in_flight, faults)
        if not cpus_per_task > 0 or gpus_per_task < 0 or max_retries < 0:
            raise InputError(f"Ray resources: cpus_per_task must be > 0 (got {cpus_per_task}), gpus_per_task "
                             f">= 0 (got {gpus_per_task}) and max_retries >= 0 (got {max_retries})")
        import_ray()  # a missing Ray is a clear error now, not at the first task
        self.address, self.cpus_per_task, self.gpus_per_task = address, cpus_per_task, gpus_per_task
        self.max_retries, self.init_kwargs = max_retries, dict(init_kwargs or {})
        self._started, self._remote, self._task_refs = False, None, {}

    def describe(self) -> str:
        return (f"ray ({self.address or 'local'}; {self.cpus_per_task:g} CPU, {self.gpus_per_task:g} GPU "
                f"per task, max_retries={self.max_retries})")

    def loader_workers(self, requested: int) -> int:
        return min(requested, max(0, int(self.cpus_per_task) - 1))

    def _ray(self):
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_kwargs)
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(_call).options(
                num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                retry_exceptions=False)
        return ray

    def _capacity(self) -> int:
        cpus = self._ray().cluster_resources().get("CPU", 1)
        return max(2, 2 * int(cpus // self.cpus_per_task))

    def _submit(self, task, job):
        ray = self._ray()
        if id(task) not in self._task_refs:  # one copy of the task per run in the object store
            self._task_refs = {id(task): ray.put(task)}
        return self._remote.remote(self._task_refs[id(task)], job)

    def _wait(self, handles):
        return self._ray().wait(handles, num_returns=1)[0]

    def _value(self, handle):
        return self._ray().get(handle)

    def _cancel(self, handles):
        ray = self._ray()
        for handle in handles:
            ray.cancel(handle, force=True)

    def close(self) -> None:
        self._remote, self._task_refs = None, {}
        if self._started:
            import ray
            ray.shutdown()
            self._started = False


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("the Ray executor needs Ray, which is not installed: pip install 'posthoc-csra[ray]' "
                         "(or use the local executor)") from None
    return ray


def _cause(err: BaseException) -> BaseException:
    """The task's own exception inside a Ray error (Ray wraps it with the remote traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


@dataclass(frozen=True)
class ExecutorKind:
    """One entry of the registry: ``bench --executor NAME``.

    summary: one line for ``--help``. build: the factory. options: the command-line options it takes,
    by their keyword in ``make_executor`` → the factory's parameter.
    """

    name: str
    summary: str
    build: Callable[..., Executor]
    options: Tuple[Tuple[str, str], ...] = ()

    def make(self, **options) -> Executor:
        return self.build(**{dict(self.options)[k]: v for k, v in options.items()})


_POOL_OPTIONS = (("pool_workers", "workers"),)
_RAY_OPTIONS = (("ray_address", "address"), ("cpus_per_task", "cpus_per_task"), ("gpus_per_task", "gpus_per_task"))

#: The registry: every executor ``bench --executor`` offers, by name (the CLI's choices and help come from here).
EXECUTORS: Dict[str, ExecutorKind] = {kind.name: kind for kind in (
    ExecutorKind("local", "this process, one DataLoader per pass, progress per batch", LocalExecutor),
    ExecutorKind("process-pool", "--pool-workers spawned processes on this machine, one chunk per task",
                 functools.partial(PoolExecutor, kind="process"), _POOL_OPTIONS),
    ExecutorKind("thread-pool", "--pool-workers threads of this process, one chunk per task",
                 functools.partial(PoolExecutor, kind="thread"), _POOL_OPTIONS),
    ExecutorKind("ray", "tasks on a Ray cluster, results written by this process (pip install 'posthoc-csra[ray]')",
                 RayExecutor, _RAY_OPTIONS),
)}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def make_executor(name: str = "local", **options) -> Executor:
    """The executor ``--executor NAME`` asks for, from the registry; ``options`` (None: not given) are the
    command-line options of ``EXECUTORS[name].options``. An option given for an executor that does not take
    it is an error naming the executors that do."""
    kind = EXECUTORS.get(name)
    if kind is None:
        raise InputError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    given = {k: v for k, v in options.items() if v is not None}
    takes = dict(kind.options)
    foreign = [k for k in given if k not in takes]
    if foreign:
        owners = sorted({other.name for other in EXECUTORS.values() for k in foreign if k in dict(other.options)})
        raise InputError(f"{', '.join(_flag(k) for k in foreign)} (given with --executor {name}): they apply to "
                         f"--executor {' or '.join(owners) or 'none'} only")
    return kind.make(**given)


__all__ = ["EXECUTORS", "ExecutorKind", "Progress", "Done", "Faults", "Executor", "LocalExecutor", "PoolExecutor",
           "RayExecutor", "make_executor", "import_ray"]
