"""ProxylessNAS-style chain space (Cai, Zhu & Han, ICLR 2019), sized for 32 x 32 inputs.

Macro (channels before the width multiplier; every width rounded to a multiple of 8):
  stem 3x3 conv 32, stride 1 -> fixed MBConv(k3, e1) 16 -> 5 searchable stages -> 1x1 conv 1280 -> GAP -> linear.
Stages (width, stride of the first layer): (24, 1), (40, 2), (80, 2), (96, 1), (192, 2). This is the
ImageNet GPU/mobile backbone of the paper with its two earliest stride-2 steps (stem, first stage) turned
into stride 1, so 32 px inputs are downsampled 8x (32 -> 32 -> 16 -> 8 -> 8 -> 4) instead of the paper's
32x on 224 px; the paper's last single-layer 320 stage is folded into the head conv.
Paper depth is 4 searchable layers per stage; default here 2 and width 0.5 so a CPU search is affordable.

Each searchable layer picks an inverted-residual block ``mb_k{3,5,7}_e{3,6}`` (1x1 expand, k x k depthwise
with the stride, 1x1 project; BN + ReLU6 except after the project; residual when stride 1 and in == out),
or ``zero`` (the layer is skipped: output = input) on layers that have the residual (not the first layer of a
stage). The Choice wraps the whole block, residual included, so a supernet path equals the plain network.
Decisions ``layer0 ..``; string ``mb_k3_e3-mb_k5_e6-zero-...``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import ArchError
from dfnas.spaces.base import Arch, ChainSpace, Choice, Supernet, register_space

STAGES = [(24, 1), (40, 2), (80, 2), (96, 1), (192, 2)]
STEM, FIRST, HEAD = 32, 16, 1280
MB_OPS = [f"mb_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 6)]
ZERO = "zero"


def make_divisible(v: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``v``."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def parse_mb(op: str) -> tuple[int, int]:
    """``mb_k5_e6`` -> (kernel 5, expansion 6)."""
    if op not in MB_OPS:
        raise ArchError(f"unknown ProxylessNAS block {op!r}; expected one of {MB_OPS}")
    k, e = op[len("mb_k"):].split("_e")
    return int(k), int(e)


class MBConv(nn.Module):
    """Inverted residual block: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, k: int, e: int, stride: int) -> None:
        super().__init__()
        mid = cin * e
        # e == 1 has nothing to expand: the depthwise conv works on the input channels directly
        self.expand = (nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6())
                       if e != 1 else None)
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class Skip(nn.Module):
    """The ``zero`` option: the block's body is zero, so with its residual the layer is the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_op(op: str, cin: int, cout: int, stride: int) -> nn.Module:
    if op == ZERO:
        if stride != 1 or cin != cout:
            raise ArchError(f"'zero' needs a layer with stride 1 and equal in/out channels, got stride {stride}, "
                            f"{cin} -> {cout}")
        return Skip()
    k, e = parse_mb(op)
    return MBConv(cin, cout, k, e, stride)


# make_layer(index, cin, cout, stride) -> Choice (supernet) or the chosen block (plain network)
LayerFactory = Callable[[int, int, int, int], nn.Module]


class ProxylessNet(Supernet):
    """(B, in_channels, H, W) -> (B, num_classes). ``layers.{i}`` is searchable layer i."""

    def __init__(self, make_layer: LayerFactory, plan: list[tuple[int, int, int]], stem: int, first: int,
                 head: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU6())
        self.first = MBConv(stem, first, 3, 1, 1)
        self.layers = nn.Sequential(*[make_layer(i, cin, cout, s) for i, (cin, cout, s) in enumerate(plan)])
        c_last = plan[-1][1]
        self.head = nn.Sequential(nn.Conv2d(c_last, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6())
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.layers(self.first(self.stem(x))))
        return self.classifier(F.adaptive_avg_pool2d(y, 1).flatten(1))


@register_space
class ProxylessSpace(ChainSpace):
    """MBConv chain: 6 block types per layer, plus ``zero`` where the layer can be skipped."""

    name = "proxyless"
    ops = (*MB_OPS, ZERO)
    cpu_defaults = {"width_mult": 0.35, "layers_per_stage": 2}

    def __init__(self, num_classes: int = 10, input_size: int = 32, width_mult: float = 0.5,
                 layers_per_stage: int | Sequence[int] = 2, head_width: int | None = None,
                 in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        depth = ([int(layers_per_stage)] * len(STAGES) if isinstance(layers_per_stage, int)
                 else [int(n) for n in layers_per_stage])
        if len(depth) != len(STAGES) or min(depth) < 1 or width_mult <= 0:
            raise ArchError(f"proxyless space needs width_mult > 0 and layers_per_stage >= 1 for each of the "
                            f"{len(STAGES)} stages, got width_mult={width_mult}, layers_per_stage={layers_per_stage}")
        self.width_mult, self.depth = float(width_mult), depth
        self.stem_width = make_divisible(STEM * width_mult)
        self.first_width = make_divisible(FIRST * width_mult)
        self.head_width = int(head_width) if head_width else make_divisible(HEAD * width_mult)
        # plan: (in channels, out channels, stride) of each searchable layer
        self.plan: list[tuple[int, int, int]] = []
        c = self.first_width
        for (w, s), n in zip(STAGES, depth, strict=True):
            cout = make_divisible(w * width_mult)
            for j in range(n):
                self.plan.append((c, cout, s if j == 0 else 1))
                c = cout

    def layer_options(self) -> list[list[str]]:
        # only non-first layers of a stage offer 'zero': they are stride 1 with in == out by construction
        return [list(MB_OPS) + ([ZERO] if j > 0 else []) for n in self.depth for j in range(n)]

    def _build(self, make_layer: LayerFactory) -> ProxylessNet:
        return ProxylessNet(make_layer, self.plan, self.stem_width, self.first_width, self.head_width,
                            self.num_classes, self.in_channels)

    def build_supernet(self) -> ProxylessNet:
        opts = self.layer_options()
        return self._build(lambda i, cin, cout, s: Choice(self.layer_key(i),
                                                          {op: make_op(op, cin, cout, s) for op in opts[i]}))

    def build_network(self, arch: Arch) -> ProxylessNet:
        self.check(arch)
        d = arch.as_dict()
        return self._build(lambda i, cin, cout, s: make_op(d[self.layer_key(i)], cin, cout, s))

    def config(self) -> dict:
        return {**super().config(), "width_mult": self.width_mult, "layers_per_stage": list(self.depth),
                "head_width": self.head_width}
