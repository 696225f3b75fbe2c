"""The NAS-Bench-201 cell space, built exactly like the benchmark's networks so its table applies.

Cell: 4 nodes, node j = sum over i < j of op_{j<-i}(node i); 6 edges in the order 1<-0, 2<-0, 2<-1, 3<-0,
3<-1, 3<-2; ops none / skip_connect / nor_conv_1x1 / nor_conv_3x3 / avg_pool_3x3 (convs are ReLU-Conv-BN).
Macro: 3x3 conv + BN stem; 3 stages of N cells at C, 2C, 4C channels, joined by residual reduction blocks;
BN-ReLU, global average pool, linear head. The benchmark trains C=16, N=5; CPU search uses smaller C and N.
String: ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import ArchError
from dfnas.spaces.base import Arch, Choice, Space, Supernet, register_space

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
EDGES = [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]  # (to, from) in string order


def edge_key(j: int, i: int) -> str:
    return f"{j}<-{i}"


class Zero(nn.Module):
    """The 'none' op: a zero tensor of the input's shape (keeps the graph shape-consistent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, k, stride, pad, bias=False),
                         nn.BatchNorm2d(cout))


def make_op(name: str, c: int) -> nn.Module:
    """One candidate op on c channels, stride 1."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1, 0)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ArchError(f"unknown NAS-Bench-201 op {name!r}; expected one of {OPS}")


class ResBlock(nn.Module):
    """The benchmark's reduction block: ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3) + avgpool-1x1 shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2, 1)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, 1, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class Cell(nn.Module):
    """A cell; ``edges[j<-i]`` is a Choice (supernet) or the chosen op itself (plain network)."""

    def __init__(self, edges: dict[str, nn.Module]) -> None:
        super().__init__()
        self.edges = nn.ModuleDict(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, 4):
            terms = [self.edges[edge_key(j, i)](nodes[i]) for i in range(j)
                     if not isinstance(self.edges[edge_key(j, i)], Zero)]
            nodes.append(torch.stack(terms).sum(0) if len(terms) > 1 else terms[0] if terms else x.mul(0.0))
        return nodes[3]


class NB201Net(Supernet):
    """Stem -> [N cells, ResBlock] x 2 -> N cells -> BN-ReLU-GAP-linear. (B, 3, H, W) -> (B, classes)."""

    def __init__(self, make_edge, C: int, N: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        c = C
        for stage in range(3):
            if stage > 0:
                layers.append(ResBlock(c, 2 * c))
                c *= 2
            for _ in range(N):
                layers.append(Cell({edge_key(j, i): make_edge(edge_key(j, i), c) for j, i in EDGES}))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_space
class NB201Space(Space):
    """NAS-Bench-201 topology space: 5**6 = 15,625 cells."""

    name = "nb201"

    def __init__(self, num_classes: int = 10, input_size: int = 32, C: int = 16, N: int = 5) -> None:
        super().__init__(num_classes, input_size)
        if C < 1 or N < 1:
            raise ArchError(f"nb201 space needs C >= 1 and N >= 1, got C={C}, N={N}")
        self.C, self.N = C, N

    @classmethod
    def decisions(cls) -> dict[str, list[str]]:
        return {edge_key(j, i): list(OPS) for j, i in EDGES}

    @classmethod
    def format(cls, arch: Arch) -> str:
        d = arch.as_dict()
        nodes = ["|" + "|".join(f"{d[edge_key(j, i)]}~{i}" for i in range(j)) + "|" for j in range(1, 4)]
        return "+".join(nodes)

    @classmethod
    def parse(cls, s: str) -> Arch:
        expected = "expected a NAS-Bench-201 string like |nor_conv_3x3~0|+|none~0|skip_connect~1|+|...~0|...~1|...~2|"
        s = s.strip()
        nodes = s.split("+")
        if len(nodes) != 3:
            raise ArchError(f"architecture {s!r}: {expected}")
        out: dict[str, str] = {}
        for j, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")):
                raise ArchError(f"architecture {s!r}: node {j} {node!r} must be wrapped in '|'; {expected}")
            items = node[1:-1].split("|")
            if len(items) != j:
                raise ArchError(f"architecture {s!r}: node {j} must have {j} inputs, got {len(items)}")
            for i, item in enumerate(items):
                op, sep, src = item.partition("~")
                if not sep or src != str(i):
                    raise ArchError(f"architecture {s!r}: input {i} of node {j} must read 'op~{i}', got {item!r}")
                if op not in OPS:
                    raise ArchError(f"architecture {s!r}: unknown op {op!r}; expected one of {OPS}")
                out[edge_key(j, i)] = op
        return Arch.of(cls.name, {edge_key(j, i): out[edge_key(j, i)] for j, i in EDGES})

    def build_supernet(self) -> NB201Net:
        return NB201Net(lambda key, c: Choice(key, {op: make_op(op, c) for op in OPS}),
                        self.C, self.N, self.num_classes)

    def build_network(self, arch: Arch) -> NB201Net:
        self.validate(arch)
        d = arch.as_dict()
        return NB201Net(lambda key, c: make_op(d[key], c), self.C, self.N, self.num_classes)

    def config(self) -> dict:
        return {**super().config(), "C": self.C, "N": self.N}
