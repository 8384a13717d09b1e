"""How the trainers compute on their device: bf16 autocast and channels_last tensors on GPUs; float32 and
contiguous tensors on the CPU, where both would be slower and bf16 would make runs irreproducible.

    p = Precision.of(env.device, bf16=cfg.bf16, channels_last=cfg.channels_last)
    model = p.place(model)                   # on the device, channels_last where it applies
    with p.autocast():                       # bf16 where it applies, else nothing
        loss = model(p.inputs(x))            # on the device, in the model's memory format

One object for trainer.simclr, trainer.finetune and the benchmarks, so that a benchmark measures what
the trainers run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    device: torch.device
    bf16: bool            # autocast to bfloat16 (losses and metrics cast back to float32 themselves)
    channels_last: bool   # NHWC weights and inputs: the layout cuDNN's tensor-core convolutions want

    @classmethod
    def of(cls, device: torch.device | str, bf16: bool = True, channels_last: bool = True) -> "Precision":
        """The flags as they apply to `device`: both only on CUDA."""
        device = torch.device(device)
        gpu = device.type == "cuda"
        return cls(device, bf16 and gpu, channels_last and gpu)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """A context: bf16 autocast on the GPU, else one that changes nothing."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images [B, C, H, W] on the device, in the model's memory format."""
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module on the device, its 4-d weights in the memory format."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module
