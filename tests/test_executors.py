"""Option groups and executors: one table from the local executor, a thread/process pool and a real local Ray;
the local executor streams a pass through one DataLoader with progress per batch, and still hands back (and the
driver writes) every chunk as it completes; only missing chunks are scheduled; the CLI reads the executor
registry; options and datasets are checked before any model is loaded."""
import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from posthoc_csra import runner
from posthoc_csra.cli import main
from posthoc_csra.errors import InputError, MissingInputError
from posthoc_csra.executors import EXECUTORS, LocalExecutor, PoolExecutor, RayExecutor, make_executor
from posthoc_csra.options import EvalOptions, LoadOptions, ModelSource
from posthoc_csra.bench import run_bench
from posthoc_csra.runner import ChunkJob
from posthoc_csra.runtime import Runtime

MODEL, IMG = "test_efficientnet", 64
#: Columns that say how a run went, not what it measured.
RUN_COLUMNS = ["seconds", "cached"]


def csv_dataset(folder, n: int = 12, n_classes: int = 1000) -> str:
    """``csv:FILE`` of n noise images whose labels cover n_classes classes (a 1000-class model's own)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_row = -(-n_classes // n)
    rows = ["image,labels"]
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        labels = {f"k{j % n_classes:04d}" for j in range(i * per_row, (i + 1) * per_row)} | {f"k{i % 5:04d}"}
        rows.append(f"{i}.png,{'|'.join(sorted(labels))}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{folder / 'labels.csv'}"


def bench(specs, cache_dir, executor=None, models=(MODEL,), **loading):
    """run_bench with a random-weights model at IMG px, chunks of 2 images, one thread per task (as a
    1-CPU Ray task: every executor then computes bit-identical statistics), no progress bar."""
    loading = LoadOptions(**{**dict(batch_size=2, workers=0, chunk_size=2, progress=False, threads=1), **loading})
    return run_bench(list(models), specs, EvalOptions(lams="0,0.5", heads="1,8"), loading, img_sizes=[IMG],
                     source=ModelSource(pretrained=False), cache_dir=cache_dir, executor=executor)


def assert_same_table(a, b):
    """Row for row, every column but the run's timing and cache flags."""
    pd.testing.assert_frame_equal(a.drop(columns=RUN_COLUMNS), b.drop(columns=RUN_COLUMNS),
                                  check_exact=False, rtol=1e-6)


class Recording(LocalExecutor):
    """The local executor, remembering the jobs it ran."""

    def __init__(self):
        super().__init__()
        self.jobs = []

    def run(self, task, jobs, progress=None):
        for done in super().run(task, jobs, progress):
            self.jobs.append(done.job)
            yield done


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two dataset specs (a CSV of 12 images and 2×2 mosaics of it) and their reference table."""
    root = tmp_path_factory.mktemp("executors")
    spec = csv_dataset(root / "csv")
    specs = [spec, f"mosaic:{spec}"]
    return specs, bench(specs, root / "reference-cache")


def test_options_are_frozen_picklable_values_checked_when_built():
    evaluation, loading, source = EvalOptions(lams="0:1:0.5", heads="1,8"), LoadOptions(), ModelSource("w.pt")
    runtime = Runtime(amp="bf16")
    job = ChunkJob(MODEL, None, source, "csv:x.csv", loading, runtime, 3, (6, 8), "k" * 64, "label")
    for value in (evaluation, loading, source, runtime, job):
        assert pickle.loads(pickle.dumps(value)) == value and hash(value) == hash(pickle.loads(pickle.dumps(value)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, None)
    assert evaluation.lams == (0.0, 0.5, 1.0) and evaluation.heads == (1, 8)
    for bad in (dict(lams="x"), dict(heads="3"), dict(select_on="test"), dict(val_fraction=1.0), dict(pool="avg")):
        with pytest.raises(InputError):
            EvalOptions(**bad)
    for bad in (dict(batch_size=0), dict(workers=-1), dict(chunk_size=0), dict(mosaic_count=0), dict(threads=0)):
        with pytest.raises(InputError):
            LoadOptions(**bad)
    with pytest.raises(InputError, match="not both"):
        ModelSource("w.pt", pretrained=False)


def test_datasets_are_checked_before_any_model_is_loaded(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the datasets were checked")

    monkeypatch.setattr(runner, "prepare_model", no_model)
    with pytest.raises(InputError, match="unknown dataset spec 'foo:bar'"):
        bench(["foo:bar"], tmp_path, models=[MODEL, "test_vit"])
    with pytest.raises(MissingInputError, match="missing.csv"):
        bench([f"csv:{tmp_path / 'missing.csv'}"], tmp_path)
    result = CliRunner().invoke(main, ["bench", "-m", MODEL, "--random-weights", "-d", "foo:bar",
                                       "--cache-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1 and "unknown dataset spec 'foo:bar'" in result.output, result.output
    assert "Traceback" not in result.output


def test_only_missing_chunks_are_scheduled(data, tmp_path):
    specs, reference = data
    first = bench(specs[:1], tmp_path)
    assert first.attrs["run"]["chunks_computed"] == 6 and first.attrs["backbone_images"] == 12
    (cache,) = [p for p in (tmp_path / "stats").iterdir()]
    for chunk in (1, 4):
        (cache / f"chunk-{chunk:05d}.npz").unlink()
    executor = Recording()
    again = bench(specs[:1], tmp_path, executor)
    assert [(job.chunk, job.rows) for job in executor.jobs] == [(1, (2, 4)), (4, (8, 10))]
    assert again.attrs["backbone_images"] == 4 and not again["cached"].any()
    assert_same_table(again, reference[reference["dataset_spec"] == specs[0]].reset_index(drop=True))
    executor = Recording()
    assert bench(specs[:1], tmp_path, executor)["cached"].all() and executor.jobs == []


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_pool_gives_the_same_table(data, tmp_path, kind):
    specs, reference = data
    if kind == "process":  # spawned interpreters: one dataset keeps it short
        specs, reference = specs[:1], reference[reference["dataset_spec"] == specs[0]].reset_index(drop=True)
    with PoolExecutor(workers=2, kind=kind) as pool:
        table = bench(specs, tmp_path, pool)
    assert_same_table(table, reference)
    assert len(table.attrs["run"]["workers"]) == (2 if kind == "process" else 1)  # threads share one process


def test_ray_gives_the_same_table_row_for_row(data, tmp_path, ray_session):
    specs, reference = data
    with RayExecutor(address=ray_session) as executor:
        table = bench(specs, tmp_path, executor)
    assert_same_table(table, reference)
    run = table.attrs["run"]
    assert run["executor"].startswith("ray") and run["chunks_computed"] == run["chunks"] == 6 + 2
    assert len(run["workers"]) >= 1 and all(mb > 0 for mb in run["workers"].values())


def test_progress_bar_counts_images_and_names_model_and_dataset(data, tmp_path, capsys):
    specs, _ = data
    bench(specs[:1], tmp_path, progress=True)
    err = capsys.readouterr().err
    assert f"{MODEL} @{IMG} on csv:labels.csv" in err and "12/12" in err and "img" in err


class Events(LocalExecutor):
    """The local executor, recording per-batch progress and finished chunks in the order they happen."""

    def __init__(self):
        super().__init__()
        self.events = []

    def run(self, task, jobs, progress=None):
        def batch(job, n):
            self.events.append(("batch", job.chunk, n))
            progress(job, n)

        for done in super().run(task, jobs, batch):
            self.events.append(("chunk", done.job.chunk, done.error is None))
            yield done


def test_local_executor_streams_one_loader_per_pass_with_progress_per_batch(data, tmp_path, monkeypatch):
    """One DataLoader for the whole pass (not one per chunk), progress after every batch, each chunk handed
    back as soon as its last batch is through — and the same statistics, bit for bit, as chunk-by-chunk tasks."""
    import torch.utils.data

    specs, reference = data
    loaders = []

    class Counted(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            loaders.append(kwargs.get("num_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Counted)
    executor = Events()
    table = bench(specs[:1], tmp_path / "stream", executor, progress=True, batch_size=2, chunk_size=4, workers=1)
    assert len(loaders) == 1 and loaders == [1]  # 3 chunks, one loader (and its one worker process)
    assert executor.events == [(kind, chunk, value) for chunk in range(3)
                               for kind, value in (("batch", 2), ("batch", 2), ("chunk", True))]
    assert_same_table(table, reference[reference["dataset_spec"] == specs[0]].reset_index(drop=True))
    loaders.clear()
    with PoolExecutor(workers=1, kind="thread") as pool:  # chunk by chunk, one loader each
        bench(specs[:1], tmp_path / "chunks", pool, batch_size=2, chunk_size=4, workers=1)
    assert len(loaders) == 3
    (streamed,), (chunked,) = [list((tmp_path / run / "stats").iterdir()) for run in ("stream", "chunks")]
    for chunk in range(3):
        with np.load(streamed / f"chunk-{chunk:05d}.npz") as a, np.load(chunked / f"chunk-{chunk:05d}.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_cpu_stream_hands_freed_heap_memory_back_after_every_batch(tmp_path, monkeypatch):
    """On the CPU the batch's activations live in the host heap: the stream trims it after every batch (before
    progress moves) and again once a finished chunk has been handed over, so resident memory stays flat in
    the number of images (perf.md (d) measures it on the 2,000 VOC images)."""
    from posthoc_csra import runtime

    executor = Events()
    monkeypatch.setattr(runtime, "release_host_memory", lambda: executor.events.append(("trim",)))
    table = bench([csv_dataset(tmp_path / "csv", n=8)], tmp_path / "cache", executor, batch_size=2, chunk_size=4)
    assert table["error"].isna().all()
    assert executor.events == [event for chunk in range(2)
                               for event in (("trim",), ("batch", chunk, 2), ("trim",), ("batch", chunk, 2),
                                             ("chunk", chunk, True), ("trim",))]


def test_a_stream_that_fails_keeps_the_chunks_it_finished(tmp_path):
    """A bad image in the third chunk: the two chunks before it are in the cache, and once the image is
    fixed the next run computes only the rest."""
    spec = csv_dataset(tmp_path / "csv")
    good = (tmp_path / "csv" / "5.png").read_bytes()
    (tmp_path / "csv" / "5.png").write_bytes(b"not an image")
    executor = Events()
    failed = bench([spec], tmp_path / "cache", executor)
    assert failed["error"].notna().all() and "5.png" in failed["error"].iloc[0]
    assert ("chunk", 0, True) in executor.events and ("chunk", 1, True) in executor.events
    assert ("chunk", 2, False) in executor.events
    (tmp_path / "csv" / "5.png").write_bytes(good)
    executor = Recording()
    again = bench([spec], tmp_path / "cache", executor)
    assert [job.chunk for job in executor.jobs] == [2, 3, 4, 5] and again["error"].isna().all()
    assert again.attrs["run"]["chunks_cached"] == 2


def test_cli_executor_options(data, tmp_path, ray_session):
    specs, reference = data
    args = ["bench", "-m", MODEL, "--random-weights", "-d", specs[0], "--img-size", str(IMG), "--lam", "0,0.5",
            "--heads", "1,8", "-b", "2", "-j", "0", "--chunk-size", "2", "--cache-dir", str(tmp_path),
            "--no-progress", "-o", str(tmp_path / "t.csv")]
    for bad, message in ((["--ray", "--executor", "local"], "--ray is short for --executor ray"),
                         (["--gpus-per-task", "1"], "apply to --executor ray only"),
                         (["--pool-workers", "2"], "apply to --executor process-pool or thread-pool only"),
                         (["--executor", "process-pool", "--ray-address", "auto"], "apply to --executor ray only")):
        result = CliRunner().invoke(main, args + bad)
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, args + ["--ray", "--ray-address", ray_session])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "t.csv")
    expected = reference[reference["dataset_spec"] == specs[0]]
    assert len(table) == len(expected) and np.allclose(table["mAP"], expected["mAP"], rtol=1e-6, equal_nan=True)


def test_executors_are_a_registry_the_cli_reads(data, tmp_path):
    """Every registered executor is a --executor choice with its summary in --help; the process pool is
    chosen from the command line and gives the same table."""
    help_text = CliRunner().invoke(main, ["bench", "--help"], terminal_width=400).output
    for name, kind in EXECUTORS.items():
        assert name in help_text and kind.summary.split(",")[0] in help_text
        if not kind.options:
            assert type(make_executor(name)).__name__ == kind.build.__name__
    with pytest.raises(InputError, match="unknown executor 'dask'; choose one of local, process-pool"):
        make_executor("dask")
    with make_executor("process-pool", pool_workers=3) as pool:
        assert pool.describe() == "process-pool (3 workers)" and pool.loader_workers(2) == 0
    specs, reference = data
    args = ["bench", "-m", MODEL, "--random-weights", "-d", specs[0], "--img-size", str(IMG), "--lam", "0,0.5",
            "--heads", "1,8", "-b", "2", "-j", "0", "--chunk-size", "2", "--cache-dir", str(tmp_path),
            "--no-progress", "-o", str(tmp_path / "t.csv"), "--executor", "process-pool", "--pool-workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "t.csv")
    expected = reference[reference["dataset_spec"] == specs[0]]
    assert len(table) == len(expected) and np.allclose(table["mAP"], expected["mAP"], rtol=1e-6, equal_nan=True)
