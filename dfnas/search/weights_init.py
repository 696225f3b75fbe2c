"""Seeded parameter initialization: module constructors draw from torch's global RNG, which dfnas never
relies on. ``init_parameters`` redraws every parameter from an explicit generator, so a run's initial
weights depend only on its seed (and are the same on every device: values are drawn on the CPU).
``identity_init_candidates`` then optionally starts a supernet's candidate convolutions as the identity
(``candidate_init: identity``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dfnas.spaces.base import Choice

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


CANDIDATE_INITS = ("default", "identity")


def _keeps_shape(conv: nn.Conv2d) -> bool:
    """Same channels in and out, stride 1, and padding that keeps the spatial size (odd kernels)."""
    k, d, p = conv.kernel_size, conv.dilation, conv.padding
    return (conv.in_channels == conv.out_channels and conv.stride == (1, 1) and isinstance(p, tuple)
            and all(ki % 2 == 1 and pi == di * (ki - 1) // 2 for ki, di, pi in zip(k, d, p, strict=True)))


@torch.no_grad()
def identity_init_candidates(model: nn.Module) -> int:
    """Add the identity kernel (Dirac delta) to the convolutions of every supernet candidate whose
    convolutions all keep their input's shape; returns how many candidates changed.

    Why: a freshly drawn convolution outputs noise, while skip and pooling pass their input's content from the
    first step; after a few hundred single-path weight steps each convolution has had only its share of them,
    and the supernet still fits better through the parameter-free ops, which a loss-driven search then picks
    (measured on NAS-Bench-201: benchmarks/search_quality, methods ``proxyless_identity``, ``spos_identity``).
    Started as the identity plus their random draw, a candidate's convolutions pass the input like a skip
    (through its ReLU and BatchNorm), and training moves them on from there. Candidates with a convolution that
    changes channels or resolution (reductions, expansions) keep their default draw; a network without
    ``Choice`` modules is unchanged.
    """
    changed = 0
    for choice in (m for m in model.modules() if isinstance(m, Choice)):
        for cand in choice.candidates.values():
            convs = [m for m in cand.modules() if isinstance(m, _CONVS)]
            if not convs or not all(isinstance(c, nn.Conv2d) and _keeps_shape(c) for c in convs):
                continue
            for c in convs:
                delta = torch.zeros_like(c.weight)
                nn.init.dirac_(delta, groups=c.groups)  # (C, C / groups, k, k): 1 at each channel's centre tap
                c.weight.add_(delta)
            changed += 1
    return changed
