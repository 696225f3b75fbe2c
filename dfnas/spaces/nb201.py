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
            nodes.append(_node_sum(terms) if terms else x.mul(0.0))
        return nodes[3]


def _node_sum(terms: list[torch.Tensor]) -> torch.Tensor:
    """terms[0] + terms[1] + ... in that order: the same values as ``torch.stack(terms).sum(0)``, without its
    (len, B, C, H, W) copy, which also drops a channels-last layout (3x slower at 8 channels on CPU)."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


class NB201Net(Supernet):
    """Stem -> [N cells, ResBlock] x 2 -> N cells -> BN-ReLU-GAP-linear. (B, in_channels, H, W) -> (B, classes)."""

    def __init__(self, make_edge, C: int, N: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C))
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
    cpu_defaults = {"C": 8, "N": 1}  # the benchmark's size is C=16 N=5
    parameter_free = frozenset({"skip_connect", "avg_pool_3x3"})  # identity and pooling (make_op)

    def __init__(self, num_classes: int = 10, input_size: int = 32, C: int = 16, N: int = 5,
                 in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
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
                        self.C, self.N, self.num_classes, self.in_channels)

    def build_network(self, arch: Arch) -> NB201Net:
        self.validate(arch)
        d = arch.as_dict()
        return NB201Net(lambda key, c: make_op(d[key], c), self.C, self.N, self.num_classes, self.in_channels)

    @classmethod
    def function_key(cls, arch: Arch) -> str:
        """Cells with one key compute the same function (see the module function ``function_key``)."""
        return function_key(arch)

    def config(self) -> dict:
        return {**super().config(), "C": self.C, "N": self.N}


# -- isomorphism keys --------------------------------------------------------------------------------------
# Many of the 15,625 strings compute the same function: an edge out of a node that never reaches the output,
# a node all of whose inputs are `none`, or a relabelling of nodes 1 and 2 changes the string, not the cell.
# A node's value is written as a sorted multiset of terms, so the order of a node's inputs and the numbering
# of the intermediate nodes drop out; the key of a cell is the written value of node 3.
_OP_SYMBOL = {"nor_conv_1x1": "conv1x1", "nor_conv_3x3": "conv3x3", "avg_pool_3x3": "avgpool"}


def function_key(arch: Arch) -> str:
    """A key shared by NAS-Bench-201 cells that compute the same function of the cell input.

    The value of node 0 is ``x``; each other node is the sum of its incoming edges, written as a sorted
    multiset of terms (``x+x`` is 2x and differs from ``x``). An edge contributes nothing when its op is
    ``none`` or its source node is zero; ``skip_connect`` passes its source's terms on; ``avg_pool_3x3``
    (count_include_pad=False, a linear map) is applied to each term of its source separately, because
    pool(a + b) = pool(a) + pool(b); a convolution (ReLU-Conv-BN, not linear) wraps its source's whole
    sum. By convention a convolution of a zero node counts as zero too (in a real network it is the
    BatchNorm bias, a learned per-channel constant). A cell whose output is zero has key ``0``.

    Every identity used here holds for the same weights, so two cells with one key compute the same
    function (up to that BatchNorm-bias convention). Over all 15,625 cells there are 4,660 keys; the
    benchmark's own, coarser, count of 6,466 is reproduced by ``benchmark_unique_string``.
    """
    NB201Space.validate(arch)
    d = arch.as_dict()
    nodes: list[list[str]] = [["x"]]
    for j in range(1, 4):
        terms: list[str] = []
        for i in range(j):
            op, src = d[edge_key(j, i)], nodes[i]
            if op == "none" or not src:
                continue
            if op == "skip_connect":
                terms.extend(src)
            elif op == "avg_pool_3x3":
                terms.extend(f"avgpool({t})" for t in src)
            else:
                terms.append(f"{_OP_SYMBOL[op]}({'+'.join(src)})")
        nodes.append(sorted(terms))
    return "+".join(nodes[3]) or "0"


def benchmark_unique_string(arch: Arch) -> str:
    """The NAS-Bench-201 benchmark's own isomorphism string (the ``UniqueString`` of its table).

    Its convention differs from ``function_key``: a ``none`` edge stays in the sum as a ``#`` term (so the
    number of ``none`` inputs matters), and an op applied to a zero node is kept unless that node is a
    single ``#``; no op is distributed over a sum. It gives the 6,466 "unique" cells the benchmark reports;
    ``function_key`` merges some of those that still compute the same function.
    """
    NB201Space.validate(arch)
    d = arch.as_dict()
    nodes = ["0"]
    for j in range(1, 4):
        terms = []
        for i in range(j):
            op = d[edge_key(j, i)]
            if op == "none" or nodes[i] == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(nodes[i])
            else:
                terms.append(f"({nodes[i]})@{op}")
        nodes.append("+".join(sorted(terms)))
    return nodes[3]
