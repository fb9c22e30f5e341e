"""Device, AMP, channels_last and torch.compile settings shared by score, bench and explain."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from dataclasses import dataclass
from typing import Optional

import torch

from .errors import InputError
from .choices import AMP_CHOICES

AMP_DTYPES = dict(zip(AMP_CHOICES, (None, torch.bfloat16, torch.float16)))


@dataclass(frozen=True)
class Runtime:
    """Where and how the backbone runs: ``device``, autocast dtype ``amp`` (``spec.AMP_CHOICES``),
    ``channels_last`` memory format, ``compile`` (torch.compile of ``forward_features``)."""

    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.amp not in AMP_DTYPES:
            raise InputError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise InputError(f"device {self.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {self.device}: CUDA is not available here; use cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {self.device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move to the device (and memory format, when channels_last)."""
        module = module.to(self.torch_device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def compile_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.compile:
            model.forward_features = torch.compile(model.forward_features)
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.torch_device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        dtype: Optional[torch.dtype] = AMP_DTYPES[self.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.torch_device.type, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim`` (None where the C library has none: macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:  # no loadable C library: nothing to trim
        return None


def release_host_memory() -> None:
    """Hand the heap's free memory back to the operating system (glibc ``malloc_trim(0)``; a no-op elsewhere).

    A statistics pass on the CPU frees hundreds of MiB of activations after every batch; glibc keeps freed
    blocks below its (self-raising) mmap threshold in the heap, where they fragment and hold resident memory
    that grows with the images. A streamed statistics pass calls it after every batch on the CPU (the trim
    costs well under 1 % of a batch there) and after every finished chunk on any device."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
