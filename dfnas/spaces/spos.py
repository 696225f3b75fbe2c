"""Single Path One-Shot (Guo et al., ECCV 2020) ShuffleNetV2 space, sized for 32 x 32 inputs.

Macro (widths before the width multiplier, each rounded to a multiple of 8 so channel splits are even):
  stem 3x3 conv 16, stride 1 -> 4 stages of 64, 160, 320, 640 channels -> 1x1 conv 1024 -> GAP -> linear.
The first layer of stages 2-4 has stride 2; stage 1 keeps stride 1 (the paper's stride-2 stem and max-pool
are dropped for 32 px), so 32 px inputs end at 4 x 4. Paper depth [4, 4, 8, 4] at width 1.0; defaults here
[2, 2, 2, 2] at width 0.25 for CPU search.

Every layer chooses a ShuffleNetV2 unit: ``shuffle3`` / ``shuffle5`` / ``shuffle7`` (branch 1x1-dw kxk-1x1)
or ``xception`` (branch of three depthwise-separable 3x3 convs). A unit whose input and output shapes match
splits the channels in two (even / odd channels: the 2-group channel shuffle folded into the split), passes
one half through unchanged and the other through the branch, then concatenates. The first unit of a stage
(stride 2, or new width) feeds the whole input to both a projection branch (dw kxk - 1x1) and the main branch.
Decisions ``layer0 ..``; string ``shuffle3-xception-...``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import ArchError
from dfnas.spaces.base import Arch, ChainSpace, Choice, Supernet, register_space
from dfnas.spaces.proxyless import make_divisible

STAGE_WIDTHS = [64, 160, 320, 640]
STEM, HEAD = 16, 1024
OPS = ["shuffle3", "shuffle5", "shuffle7", "xception"]


def _dw(c: int, k: int, stride: int) -> list[nn.Module]:
    """Depthwise k x k + BN (ShuffleNetV2 puts no activation after depthwise convs)."""
    return [nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False), nn.BatchNorm2d(c)]


def _pw(cin: int, cout: int) -> list[nn.Module]:
    """Pointwise 1x1 + BN + ReLU."""
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: (B, cin, H, W) -> (B, cout, H/stride, W/stride).

    ``split`` units (stride 1, cin == cout) transform half the channels; the others transform all of them
    twice (projection + main branch) and concatenate, which widens to cout.
    """

    def __init__(self, op: str, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if op not in OPS:
            raise ArchError(f"unknown SPOS op {op!r}; expected one of {OPS}")
        self.split = stride == 1 and cin == cout
        b_in = cin // 2 if self.split else cin  # channels entering the main branch
        b_out = cout - b_in if self.split else cout - cin  # concatenated next to the (half / projected) input
        if b_out < 1:
            raise ArchError(f"SPOS unit {cin} -> {cout} channels cannot widen (output must exceed input)")
        mid = cout // 2
        if op == "xception":
            main = [*_dw(b_in, 3, stride), *_pw(b_in, mid), *_dw(mid, 3, 1), *_pw(mid, mid),
                    *_dw(mid, 3, 1), *_pw(mid, b_out)]
            k = 3
        else:
            k = int(op[len("shuffle"):])
            main = [*_pw(b_in, mid), *_dw(mid, k, stride), *_pw(mid, b_out)]
        self.main = nn.Sequential(*main)
        self.proj = None if self.split else nn.Sequential(*_dw(cin, k, stride), *_pw(cin, cin))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            # even / odd channels: mixes the two halves the previous unit concatenated (channel shuffle)
            return torch.cat([x[:, 0::2], self.main(x[:, 1::2])], dim=1)
        return torch.cat([self.proj(x), self.main(x)], dim=1)


# make_layer(index, cin, cout, stride) -> Choice (supernet) or the chosen unit (plain network)
LayerFactory = Callable[[int, int, int, int], nn.Module]


class SposNet(Supernet):
    """(B, in_channels, H, W) -> (B, num_classes). ``layers.{i}`` is searchable layer i."""

    def __init__(self, make_layer: LayerFactory, plan: list[tuple[int, int, int]], stem: int, head: int,
                 num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=False))
        self.layers = nn.Sequential(*[make_layer(i, cin, cout, s) for i, (cin, cout, s) in enumerate(plan)])
        self.head = nn.Sequential(*_pw(plan[-1][1], head))
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.layers(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(y, 1).flatten(1))


@register_space
class SposSpace(ChainSpace):
    """ShuffleNetV2 chain: every layer picks one of 4 units (4**n architectures)."""

    name = "spos"
    ops = tuple(OPS)
    cpu_defaults = {"width_mult": 0.25, "layers": [1, 1, 2, 1]}

    def __init__(self, num_classes: int = 10, input_size: int = 32, width_mult: float = 0.25,
                 layers: Sequence[int] = (2, 2, 2, 2), head_width: int | None = None,
                 in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        depth = [int(n) for n in layers]
        if len(depth) != len(STAGE_WIDTHS) or min(depth) < 1 or width_mult <= 0:
            raise ArchError(f"spos space needs width_mult > 0 and {len(STAGE_WIDTHS)} stage depths >= 1, "
                            f"got width_mult={width_mult}, layers={list(layers)}")
        self.width_mult, self.depth = float(width_mult), depth
        self.stem_width = make_divisible(STEM * width_mult)
        self.head_width = int(head_width) if head_width else make_divisible(HEAD * width_mult)
        # plan: (in channels, out channels, stride) of each layer
        self.plan: list[tuple[int, int, int]] = []
        c = self.stem_width
        for stage, (w, n) in enumerate(zip(STAGE_WIDTHS, depth, strict=True)):
            cout = make_divisible(w * width_mult)
            if cout <= c:
                raise ArchError(f"spos stage {stage + 1}: width {cout} must exceed its input width {c}")
            for j in range(n):
                self.plan.append((c, cout, 2 if j == 0 and stage > 0 else 1))
                c = cout

    def layer_options(self) -> list[list[str]]:
        return [list(OPS) for _ in self.plan]

    def _build(self, make_layer: LayerFactory) -> SposNet:
        return SposNet(make_layer, self.plan, self.stem_width, self.head_width, self.num_classes, self.in_channels)

    def build_supernet(self) -> SposNet:
        return self._build(lambda i, cin, cout, s: Choice(self.layer_key(i),
                                                          {op: ShuffleUnit(op, cin, cout, s) for op in OPS}))

    def build_network(self, arch: Arch) -> SposNet:
        self.check(arch)
        d = arch.as_dict()
        return self._build(lambda i, cin, cout, s: ShuffleUnit(d[self.layer_key(i)], cin, cout, s))

    def config(self) -> dict:
        return {**super().config(), "width_mult": self.width_mult, "layers": list(self.depth),
                "head_width": self.head_width}
