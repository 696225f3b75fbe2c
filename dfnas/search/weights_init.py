"""Seeded parameter initialization: module constructors draw from torch's global RNG, which dfnas never
relies on. ``init_parameters`` redraws every parameter from an explicit generator, so a run's initial
weights depend only on its seed (and are the same on every device: values are drawn on the CPU).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    u = torch.rand(t.shape, generator=generator, dtype=torch.float64)  # CPU draw: device independent
    t.copy_(((u * 2 - 1) * bound).to(dtype=t.dtype, device=t.device))


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default initialization, drawn from ``generator``; returns ``model``.

    Conv/Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the default kaiming_uniform with
    a = sqrt(5)); norm layers: their deterministic defaults (ones, zeros, fresh running statistics); any
    other module with its own parameters: its ``reset_parameters`` under a forked, seeded global RNG (the
    caller's global RNG state is restored afterwards).
    """
    for m in model.modules():
        if isinstance(m, (*_CONVS, nn.Linear)):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            _uniform_(m.weight, bound, generator)
            if m.bias is not None:
                _uniform_(m.bias, bound, generator)
        elif isinstance(m, _NORMS):
            m.reset_parameters()
        elif next(m.parameters(recurse=False), None) is not None:
            reset = getattr(m, "reset_parameters", None)
            if not callable(reset):
                raise TypeError(f"cannot re-initialize {type(m).__name__}: it has parameters but no reset_parameters")
            seed = int(torch.randint(2**62, (1,), generator=generator))
            devices = [p.device for p in m.parameters(recurse=False) if p.device.type == "cuda"]
            with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
                torch.manual_seed(seed)
                reset()
    return model
