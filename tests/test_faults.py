"""Faults survived, with real processes killed: a driver SIGKILLed halfway (then resumed under the
other executor), a Ray worker SIGKILLed mid-task, out-of-memory batches, a failing model."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_executors import MODEL, assert_same_table, bench, csv_dataset

from posthoc_csra.cache import chunk_statistics
from posthoc_csra.executors import Faults, LocalExecutor, RayExecutor
from posthoc_csra.runtime import Runtime

N_CHUNKS = 6  # 12 images in chunks of 2

#: A benchmark driver in its own process, slowed so that the test can kill it halfway.
DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_executors import bench
from posthoc_csra.executors import Faults, LocalExecutor, RayExecutor
kind, spec, cache, address = sys.argv[1:5]
faults = Faults(delay_s=1.0)
executor = LocalExecutor(faults=faults) if kind == "local" else RayExecutor(address=address, faults=faults)
bench([spec], cache, executor)
print("finished uninterrupted")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CSV dataset of 12 images and its table from an uninterrupted local run."""
    root = tmp_path_factory.mktemp("faults")
    spec = csv_dataset(root / "csv")
    return spec, bench([spec], root / "reference-cache")


def complete_chunks(cache_dir: Path) -> list:
    """Chunks whose data file and sidecar are both in place."""
    return [p for p in cache_dir.glob("stats/*/chunk-*.json") if p.with_suffix(".npz").is_file()]


@pytest.mark.parametrize("killed, resumed", [("local", "ray"), ("ray", "local")])
def test_driver_killed_halfway_resumes_under_the_other_executor(data, tmp_path, ray_session, killed, resumed):
    spec, reference = data
    cache_dir = tmp_path / "cache"
    script = DRIVER.format(tests=str(Path(__file__).parent))
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen([sys.executable, "-c", script, killed, spec, str(cache_dir), ray_session],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while len(complete_chunks(cache_dir)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver (and anything it started)
        driver.wait()
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == -signal.SIGKILL and "finished" not in output, output
    kept = len(complete_chunks(cache_dir))
    assert 2 <= kept < N_CHUNKS, f"the driver was not killed halfway: {kept} chunks"
    executor = LocalExecutor() if resumed == "local" else RayExecutor(address=ray_session)
    with executor:
        table = bench([spec], cache_dir, executor)
    run = table.attrs["run"]
    assert run["chunks_cached"] == kept and run["chunks_computed"] == N_CHUNKS - kept  # only what was missing
    assert table.attrs["backbone_images"] == 2 * (N_CHUNKS - kept)
    assert_same_table(table, reference)
    (folder,) = (cache_dir / "stats").iterdir()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "a temp file was left behind"
    assert len(complete_chunks(cache_dir)) == N_CHUNKS


def test_ray_worker_killed_mid_task_is_retried(data, tmp_path, ray_session):
    spec, reference = data
    marker = tmp_path / "killed"
    with RayExecutor(address=ray_session, max_retries=2, faults=Faults(kill_marker=str(marker))) as executor:
        table = bench([spec], tmp_path / "cache", executor)
    victim = int(marker.read_text())  # the worker that SIGKILLed itself before its first forward pass
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    run = table.attrs["run"]
    assert run["chunks_computed"] == N_CHUNKS and run["chunks_failed"] == 0
    assert all(not worker.endswith(f":{victim}") for worker in run["workers"])
    assert_same_table(table, reference)


def test_out_of_memory_retries_with_smaller_batch_and_failing_model_is_an_error_row(data, tmp_path):
    spec, reference = data
    faults = Faults(oom_above=1, fail_models=("test_vit",))
    table = bench([spec], tmp_path / "cache", LocalExecutor(faults=faults), models=["test_vit", MODEL], batch_size=4,
                  chunk_size=4)
    errors = table[table["error"].notna()]
    assert list(errors["model"]) == ["test_vit"] and "injected failure in a task of test_vit" in errors["error"].iloc[0]
    rows = table[table["model"] == MODEL].reset_index(drop=True)
    assert_same_table(rows, reference)
    assert table.attrs["run"]["batch_sizes"] == {1: 3}  # 4 → 2 → 1 on every chunk of 4 images


def test_same_faults_under_ray(data, tmp_path, ray_session):
    spec, reference = data
    faults = Faults(oom_above=1, fail_models=("test_vit",))
    with RayExecutor(address=ray_session, faults=faults) as executor:
        table = bench([spec], tmp_path / "cache", executor, models=["test_vit", MODEL])
    errors = table[table["error"].notna()]
    assert list(errors["model"]) == ["test_vit"] and "injected failure" in errors["error"].iloc[0]
    assert_same_table(table[table["model"] == MODEL].reset_index(drop=True), reference)
    assert table.attrs["run"]["batch_sizes"] == {1: N_CHUNKS}


class _Scorer:
    """Statistics of a batch as its mean pixel, for the retry loop alone."""

    def statistics(self, x):
        from posthoc_csra.cache import STAT_KEYS
        v = x.mean(dim=(1, 2, 3))[:, None]
        return {k: (v[:, None].expand(-1, 8, 3) if k.endswith("_att") else v.expand(-1, 3)) for k in STAT_KEYS}


class _Images:
    name = "noise"

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((3, 4, 4), float(i)), None, None


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("CUDA error: out of memory")])
def test_chunk_statistics_halves_the_batch_on_out_of_memory(error):
    seen = []

    def hook(n, index):
        seen.append(n)
        if n > 2:
            raise error

    arrays, batch_size = chunk_statistics(_Scorer(), _Images(), lambda x: x, Runtime(), (0, 8), 8, 0, hook)
    assert batch_size == 2 and seen == [8, 4, 2, 2, 2, 2]
    assert arrays["logits"][:, 0].tolist() == list(range(8))


def test_chunk_statistics_raises_other_errors_at_once():
    seen = []

    def hook(n, index):
        seen.append(n)
        raise RuntimeError("CUDA error: device-side assert triggered")

    with pytest.raises(RuntimeError, match="device-side assert"):
        chunk_statistics(_Scorer(), _Images(), lambda x: x, Runtime(), (0, 8), 8, 0, hook)
    assert seen == [8]
