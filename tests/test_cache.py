"""The statistics cache: hits, misses, corruption, stale keys, resume after an interrupt, atomic writes."""
import hashlib
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.efficientnet import EfficientNet

from posthoc_csra import cache as cache_mod
from posthoc_csra.cache import STAT_KEYS, BadImageError, StatsCache, atomic_path, cache_key, chunk_statistics, \
    scorer_info
from posthoc_csra.models import load_model
from posthoc_csra.runtime import Runtime
from posthoc_csra.scorer import CSRAScorer
from posthoc_csra.prepare import data_transform

IMG = 64  # small inputs keep the random models fast


class TinyImages(torch.utils.data.Dataset):
    """Stand-in for a datasets.py dataset: seeded noise images, multi-hot targets over the first 12 classes."""

    def __init__(self, n=10, n_classes=1000, label_space="imagenet-1k", fail_at=None, seed=0, classes=None):
        rng = np.random.default_rng(seed)
        self.name, self.label_space, self.fail_at, self.seed = "tiny", label_space, fail_at, seed
        self.classes = list(classes) if classes is not None else [f"class_{i}" for i in range(n_classes)]
        c = len(self.classes)
        self._targets = np.zeros((n, c), np.uint8)
        for i in range(n):
            self._targets[i, rng.choice(min(12, c), size=2, replace=False)] = 1
        self._ignore = (rng.random((n, c)) < 0.05) & (self._targets == 0)

    def __len__(self):
        return len(self._targets)

    def __getitem__(self, i):
        if self.fail_at is not None and i == self.fail_at:
            raise RuntimeError(f"simulated interrupt at item {i}")
        pixels = np.random.default_rng([self.seed, i]).integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)
        return Image.fromarray(pixels), self._targets[i].copy(), self._ignore[i].copy()

    def image_id(self, i):
        return f"tiny/{i:04d}.png"

    def targets(self):
        return self._targets.copy()

    def ignore_mask(self):
        return self._ignore.copy()

    def fingerprint(self):
        return hashlib.sha256(f"tiny-{len(self)}-{self.seed}".encode() + self._targets.tobytes()).hexdigest()


@pytest.fixture
def forward_count(monkeypatch):
    """Counts forward_features calls (probe and batches) of every EfficientNet."""
    calls = {"n": 0}
    original = EfficientNet.forward_features

    def counted(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(EfficientNet, "forward_features", counted)
    return calls


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    net = load_model("test_efficientnet", pretrained=False)
    transform, config = data_transform(net, IMG)
    return net, transform, config


def _setup(tmp_path, tiny_model, n=10, chunk_size=4, crop_pct=None, **ds_kwargs):
    net, transform, config = tiny_model
    config = dict(config, **({"crop_pct": crop_pct} if crop_pct else {}))
    ds = TinyImages(n=n, **ds_kwargs)
    fields = dict(model="test_efficientnet", weights="random", data_config=config, dataset=ds.fingerprint())
    cache = StatsCache(tmp_path / "cache", fields, len(ds), net.num_classes, chunk_size)
    return cache, ds, transform, (lambda: CSRAScorer(net, input_size=config["input_size"]))


def ensure_statistics(cache, ds, transform, make_scorer, runtime, batch_size=3, workers=0):
    """(arrays, scorer info, images through the backbone): the missing chunks computed in this process with the
    library's chunk task (``cache.chunk_statistics``), written, then everything loaded — what a local run does."""
    todo = cache.missing_chunks()
    computed = 0
    if todo:
        scorer = make_scorer()
        for chunk in todo:
            arrays, _ = chunk_statistics(scorer, ds, transform, runtime, cache.rows(chunk), batch_size, workers)
            cache.write_chunk(chunk, arrays, scorer_info(scorer))
            computed += len(arrays["logits"])
    arrays, info = cache.load()
    return arrays, info, computed


def _ensure(cache, ds, transform, make_scorer, batch_size=3):
    return ensure_statistics(cache, ds, transform, make_scorer, Runtime(), batch_size=batch_size)


def _assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cache_miss_then_hit_runs_no_backbone(tmp_path, tiny_model, forward_count):
    cache, ds, transform, make = _setup(tmp_path, tiny_model)
    stats, info, computed = _ensure(cache, ds, transform, make)
    assert computed == 10 and forward_count["n"] > 0 and info["exact"] is True
    assert stats["logit_att"].shape == (10, 8, 1000) and stats["prob_base"].shape == (10, 1000)
    assert all(stats[k].dtype == np.float32 for k in stats)
    forward_count["n"] = 0
    again, _, computed = _ensure(*_setup(tmp_path, tiny_model)[:4])
    assert computed == 0 and forward_count["n"] == 0
    _assert_same(stats, again)


def test_cached_arrays_equal_scorer_statistics(tmp_path, tiny_model):
    cache, ds, transform, make = _setup(tmp_path, tiny_model, n=5)
    stats, _, _ = _ensure(cache, ds, transform, make)
    x = torch.stack([transform(ds[i][0]) for i in range(5)])
    direct = make().statistics(x)
    for k, v in direct.items():
        np.testing.assert_allclose(stats[k], v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "sidecar", "delete"])
def test_corrupt_chunk_is_detected_and_recomputed(tmp_path, tiny_model, damage):
    cache, ds, transform, make = _setup(tmp_path, tiny_model)
    stats, _, _ = _ensure(cache, ds, transform, make)
    data, side = cache.path / "chunk-00001.npz", cache.path / "chunk-00001.json"
    blob = data.read_bytes()
    if damage == "truncate":
        data.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        data.write_bytes(np.random.default_rng(0).bytes(len(blob)))
    elif damage == "sidecar":
        side.write_text("{not json")
    else:
        data.unlink()
    if damage == "delete":  # a missing chunk is no corruption: recomputed silently
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again, _, computed = _ensure(cache, ds, transform, make)
    else:
        with pytest.warns(UserWarning, match="chunk-00001.npz is corrupt"):
            again, _, computed = _ensure(cache, ds, transform, make)
    assert computed == 4  # only the damaged chunk
    for k in stats:
        np.testing.assert_allclose(again[k], stats[k], rtol=1e-6, atol=1e-7)


def test_wrong_shape_chunk_is_recomputed(tmp_path, tiny_model):
    cache, ds, transform, make = _setup(tmp_path, tiny_model)
    _ensure(cache, ds, transform, make)
    data, side = cache.path / "chunk-00000.npz", cache.path / "chunk-00000.json"
    import io
    buf = io.BytesIO()
    np.savez(buf, **{k: np.zeros((2, 3), np.float32) for k in STAT_KEYS})  # valid npz, valid checksum, bad shape
    data.write_bytes(buf.getvalue())
    sidecar = json.loads(side.read_text())
    side.write_text(json.dumps({**sidecar, "bytes": len(buf.getvalue()),
                                "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}))
    with pytest.warns(UserWarning, match="wrong shape"):
        _, _, computed = _ensure(cache, ds, transform, make)
    assert computed == 4


def test_unreadable_meta_is_stale_and_rebuilt(tmp_path, tiny_model):
    cache, ds, transform, make = _setup(tmp_path, tiny_model)
    _ensure(cache, ds, transform, make)
    (cache.path / "meta.json").write_text("garbage")
    with pytest.warns(UserWarning, match="stale or unreadable"):
        cache, ds, transform, make = _setup(tmp_path, tiny_model)
    _, _, computed = _ensure(cache, ds, transform, make)
    assert computed == 10


def test_other_chunk_size_reuses_the_cache_and_old_temp_files_go(tmp_path, tiny_model, forward_count):
    cache, ds, transform, make = _setup(tmp_path, tiny_model, chunk_size=4)
    stats, _, _ = _ensure(cache, ds, transform, make)
    old = cache.path / ".chunk-00009.npz.tmp-1-dead"  # left by a killed run
    old.write_bytes(b"partial")
    os.utime(old, (0, 0))
    fresh = cache.path / ".chunk-00008.npz.tmp-2-live"  # maybe another process writing right now
    fresh.write_bytes(b"partial")
    forward_count["n"] = 0
    cache, ds, transform, make = _setup(tmp_path, tiny_model, chunk_size=7)
    assert cache.chunk_size == 4 and not old.exists() and fresh.exists()
    again, _, computed = _ensure(cache, ds, transform, make)
    assert computed == 0 and forward_count["n"] == 0
    _assert_same(stats, again)


def test_stale_key_when_preprocessing_changes(tmp_path, tiny_model, forward_count):
    a = _setup(tmp_path, tiny_model)[0]
    b = _setup(tmp_path, tiny_model, crop_pct=0.5)[0]
    c = _setup(tmp_path, tiny_model, seed=1)[0]  # other dataset fingerprint
    assert len({a.key, b.key, c.key}) == 3 and len({a.path, b.path, c.path}) == 3
    base = dict(model="m", weights="w", data_config={"input_size": [3, 224, 224]}, amp="none")
    assert cache_key(base) == cache_key(dict(reversed(list(base.items()))))  # order-free
    for change in (dict(amp="bf16"), dict(weights="w2"), dict(data_config={"input_size": [3, 448, 448]})):
        assert cache_key({**base, **change}) != cache_key(base)


def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path, tiny_model, forward_count):
    cache, ds, transform, make = _setup(tmp_path / "a", tiny_model, fail_at=9)  # chunks [0,4) [4,8) [8,10)
    with pytest.raises(BadImageError, match="tiny/0009.png.*simulated interrupt"):
        _ensure(cache, ds, transform, make)
    assert sorted(p.name for p in cache.path.glob("chunk-*.npz")) == ["chunk-00000.npz", "chunk-00001.npz"]
    assert not list(cache.path.glob(".*")), "no temp files may be left behind"
    ds.fail_at = None
    forward_count["n"] = 0
    resumed, _, computed = _ensure(cache, ds, transform, make)
    assert computed == 2  # only the missing chunk
    assert forward_count["n"] == 2  # the probe + one batch of 2 images
    clean_cache, clean_ds, _, _ = _setup(tmp_path / "b", tiny_model)
    full, _, computed = _ensure(clean_cache, clean_ds, transform, make)
    assert computed == 10
    for k in full:
        np.testing.assert_allclose(resumed[k], full[k], rtol=1e-6, atol=1e-7)


def test_bad_image_fails_loudly_naming_the_file(tmp_path, tiny_model):
    from posthoc_csra.datasets import LabeledImages

    net, transform, config = tiny_model
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((IMG, IMG, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    paths[1].write_bytes(b"not an image at all")
    ds = LabeledImages("csv:x", "x", "imagenet-1k", [f"c{i}" for i in range(1000)], paths,
                       [p.name for p in paths], np.eye(3, 1000, dtype=np.uint8))
    cache = StatsCache(tmp_path / "cache", {"dataset": ds.fingerprint()}, 3, 1000, chunk_size=8)
    with pytest.raises(BadImageError, match=r"img1\.png.*not an image"):
        ensure_statistics(cache, ds, transform, lambda: CSRAScorer(net, input_size=config["input_size"]),
                          Runtime(), batch_size=2, workers=1)


def test_atomic_writes_leave_no_partial_files(tmp_path, tiny_model, monkeypatch):
    target = tmp_path / "x" / "file.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not target.exists() and list(target.parent.iterdir()) == []
    cache, ds, transform, make = _setup(tmp_path, tiny_model, n=4)

    def failing_fsync(fd):  # the chunk's bytes are in the temp file; the rename never happens
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        _ensure(cache, ds, transform, make)
    assert sorted(p.name for p in cache.path.iterdir()) == ["meta.json"]
    monkeypatch.undo()
    _, _, computed = _ensure(cache, ds, transform, make)
    assert computed == 4 and not list(cache.path.glob(".*"))


def test_temp_files_of_dead_writers_on_this_host_are_removed(tmp_path, tiny_model):
    import subprocess
    import sys

    cache = _setup(tmp_path, tiny_model)[0]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = cache_mod._temp_name(cache.path / "x").name.split(".tmp-")[1].rsplit("-", 2)[0]
    dead = cache.path / f".chunk-00000.npz.tmp-{host}-{gone.pid}-0123abcd"  # a killed driver's
    live = cache.path / f".chunk-00001.npz.tmp-{host}-{os.getpid()}-0123abcd"  # still writing
    remote = cache.path / f".chunk-00002.npz.tmp-otherhost-{gone.pid}-0123abcd"  # cannot be asked
    for path in (dead, live, remote):
        path.write_bytes(b"partial")
    _setup(tmp_path, tiny_model)  # reopening the key cleans up
    assert not dead.exists() and live.exists() and remote.exists()
