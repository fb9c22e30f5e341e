"""Device, AMP, channels_last and torch.compile settings shared by score, bench and explain."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from .spec import AMP_CHOICES

AMP_DTYPES = dict(zip(AMP_CHOICES, (None, torch.bfloat16, torch.float16)))


@dataclass
class Runtime:
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: CUDA is not available here; use --device cpu")

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
