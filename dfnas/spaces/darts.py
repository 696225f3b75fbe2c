"""The DARTS CNN cell space (Liu, Simonyan & Yang, ICLR 2019), CIFAR macro-architecture.

Cell: inputs 0 = c_{k-2}, 1 = c_{k-1} (each preprocessed to C channels: ReLU-Conv1x1-BN, or FactorizedReduce
when the previous cell halved the resolution), intermediate nodes 2..5, node j = sum over i < j of
op_{j<-i}(node i); output = channel concat of nodes 2..5 (4C channels). In a reduction cell the edges leaving
the two inputs have stride 2. Ops: none, max/avg pool 3x3, skip_connect (identity, or FactorizedReduce at
stride 2), sep_conv 3x3/5x5 (ReLU-dw-pw-BN applied twice), dil_conv 3x3/5x5 (ReLU-dw(dilation 2)-pw-BN).
Macro: 3x3 conv stem to 3C, ``layers`` cells, reduction cells at layers//3 and 2*layers//3 (channels
doubled there), global average pool, linear. Paper: C=16, 8 layers to search, C=36, 20 layers to evaluate;
the defaults here (C=16, 5 layers) keep a CPU search affordable.

Decisions: one per edge and cell type, ``normal.e{j}_{i}`` / ``reduce.e{j}_{i}`` (node j <- input i), with the
8 ops; every cell of a type shares them. A genotype keeps exactly 2 non-``none`` incoming edges per node.
String: the DARTS ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...],
reduce_concat=[2, 3, 4, 5])``, two ``(op, input)`` pairs per node in node order (inputs ascending when
formatted; any order and ``range(2, 6)`` accepted when parsed).

Search-time details kept in both supernet and plain network (so weights transfer): ``pool_bn`` puts an
affine-free BatchNorm after the pools (as DARTS's search network does, to match conv output scales in the
weighted sum; set False for the paper's evaluation network), ``affine`` sets the BN affine flag of the ops.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import ArchError
from dfnas.spaces.base import Arch, Choice, Space, Supernet, register_space

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]
NODES = (2, 3, 4, 5)
CELL_TYPES = ("normal", "reduce")
CONCAT = [2, 3, 4, 5]


def edge_name(j: int, i: int) -> str:
    """Module name of edge node j <- input i inside a cell (no dots: it is a ModuleDict key)."""
    return f"e{j}_{i}"


def decision_key(cell_type: str, j: int, i: int) -> str:
    return f"{cell_type}.{edge_name(j, i)}"


class Zero(nn.Module):
    """'none': zeros of the output shape (strided like the other ops of a reduction edge)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, k, stride, pad, bias=False),
                         nn.BatchNorm2d(cout, affine=affine))


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k (stride, dilation) -> pointwise 1x1 -> BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(cin, cin, k, stride, pad, dilation=dilation, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, affine=affine))


class SepConv(nn.Sequential):
    """Two depthwise-separable blocks; only the first has the stride (the paper's sep_conv)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, affine: bool = True) -> None:
        pad = k // 2
        super().__init__(DilConv(cin, cin, k, stride, pad, 1, affine), DilConv(cin, cout, k, 1, pad, 1, affine))


class FactorizedReduce(nn.Module):
    """Halve the resolution without dropping pixels: two 1x1 stride-2 convs on offset grids, concatenated.

    (B, cin, H, W) -> (B, cout, H/2, W/2); H and W must be even.
    """

    def __init__(self, cin: int, cout: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        # stride 1 here, the subsampling in forward: a 1x1 stride-2 conv is the 1x1 conv of every second pixel
        # (the same arithmetic, up to float rounding), and oneDNN's strided 1x1 weight-gradient kernel on
        # channels-last input with fewer input channels than its block (8 with AVX2, 16 with AVX-512) writes past
        # its workspace and corrupts the heap (the search aborted at random on 2-channel test supernets; oneDNN
        # issue #6035)
        self.conv_1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)  # (B, cin, H, W)
        # the second grid is shifted by one pixel, so together they cover every input pixel
        halves = [self.conv_1(x[:, :, ::2, ::2]), self.conv_2(x[:, :, 1::2, 1::2])]  # (B, cout/2, H/2, W/2) each
        return self.bn(torch.cat(halves, dim=1))


def make_op(name: str, c: int, stride: int, pool_bn: bool = True, affine: bool = True) -> nn.Module:
    """Candidate op ``name`` on c channels (c -> c, resolution / stride)."""
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool: nn.Module = (nn.MaxPool2d(3, stride, 1) if name == "max_pool_3x3"
                           else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if pool_bn else pool
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine)
    raise ArchError(f"unknown DARTS op {name!r}; expected one of {PRIMITIVES}")


# make_edge(cell_type, j, i, channels, stride) -> Choice (supernet), op (plain net) or None (absent edge)
EdgeFactory = Callable[[str, int, int, int, int], "nn.Module | None"]


class Cell(nn.Module):
    """One DARTS cell: (B, c_pp, ., .), (B, c_p, ., .) -> (B, 4c, H', W') with H' = H/2 in reduction cells."""

    def __init__(self, make_edge: EdgeFactory, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, affine: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(c_pp, c, affine) if reduction_prev
                            else ReLUConvBN(c_pp, c, 1, 1, 0, affine))
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine)
        cell_type = "reduce" if reduction else "normal"
        edges: dict[str, nn.Module] = {}
        for j in NODES:
            for i in range(j):
                op = make_edge(cell_type, j, i, c, 2 if reduction and i < 2 else 1)
                if op is not None:  # plain networks leave 'none' edges out entirely
                    edges[edge_name(j, i)] = op
        self.edges = nn.ModuleDict(edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for j in NODES:
            out: torch.Tensor | None = None
            for i in range(j):
                e = self.edges[edge_name(j, i)] if edge_name(j, i) in self.edges else None
                # a single-path Choice on 'none' adds exact zeros: skip it, so the sum equals the plain net's
                if e is None or (isinstance(e, Choice) and e.weights is None and e.active == "none"):
                    continue
                y = e(states[i])
                out = y if out is None else out + y
            if out is None:  # every edge 'none' (only reachable through an invalid supernet path)
                out = self.edges[edge_name(j, 0)](states[0])
            states.append(out)
        return torch.cat([states[j] for j in CONCAT], dim=1)


class DartsNet(Supernet):
    """Stem -> cells -> GAP -> linear: (B, in_channels, H, W) -> (B, num_classes). Supernet or plain by
    ``make_edge``."""

    def __init__(self, make_edge: EdgeFactory, C: int, layers: int, num_classes: int, affine: bool = True,
                 in_channels: int = 3) -> None:
        super().__init__()
        c_stem = 3 * C  # the DARTS stem multiplier (not the image channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, c = c_stem, c_stem, C
        cells: list[nn.Module] = []
        reduction_prev = False
        for k in range(layers):
            reduction = k in reduction_layers(layers)
            if reduction:
                c *= 2
            cells.append(Cell(make_edge, c_pp, c_p, c, reduction, reduction_prev, affine))
            reduction_prev = reduction
            c_pp, c_p = c_p, len(CONCAT) * c
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: 1/3 and 2/3 of the depth (deduplicated for very shallow nets)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def cell_edges(arch: Arch, cell_type: str) -> list[tuple[int, int, str]]:
    """The non-'none' edges of one cell type as ``(node j, input i, op)``, by node then input."""
    d = arch.as_dict()
    return [(j, i, d[decision_key(cell_type, j, i)]) for j in NODES for i in range(j)
            if d[decision_key(cell_type, j, i)] != "none"]


def _parse_concat(node: ast.expr, s: str) -> list[int]:
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords):
        try:
            return list(range(*[ast.literal_eval(a) for a in node.args]))
        except (ValueError, TypeError) as e:
            raise ArchError(f"genotype {s!r}: bad concat range ({e})") from None
    try:
        return list(ast.literal_eval(node))
    except (ValueError, TypeError) as e:
        raise ArchError(f"genotype {s!r}: concat must be [2, 3, 4, 5] ({e})") from None


def _parse_cell(node: ast.expr, cell_type: str, s: str) -> dict[str, str]:
    try:
        pairs = ast.literal_eval(node)
    except ValueError:
        raise ArchError(f"genotype {s!r}: {cell_type} must be a list of (op, input) pairs") from None
    if not isinstance(pairs, (list, tuple)) or len(pairs) != 2 * len(NODES):
        n = len(pairs) if isinstance(pairs, (list, tuple)) else "not a list"
        raise ArchError(f"genotype {s!r}: {cell_type} needs exactly 2 inputs for each of the {len(NODES)} nodes "
                        f"({2 * len(NODES)} (op, input) pairs), got {n}")
    out = {decision_key(cell_type, j, i): "none" for j in NODES for i in range(j)}
    for n_idx, j in enumerate(NODES):
        seen: set[int] = set()
        for pair in pairs[2 * n_idx: 2 * n_idx + 2]:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)
                    and isinstance(pair[1], int)):
                raise ArchError(f"genotype {s!r}: {cell_type} entry {pair!r} must be ('op', input index)")
            op, i = pair
            if op not in PRIMITIVES or op == "none":
                raise ArchError(f"genotype {s!r}: unknown op {op!r} in {cell_type}; expected one of "
                                f"{PRIMITIVES[1:]}")
            if not 0 <= i < j:
                raise ArchError(f"genotype {s!r}: {cell_type} node {j - 2} can only take inputs 0..{j - 1}, got {i}")
            if i in seen:
                raise ArchError(f"genotype {s!r}: {cell_type} node {j - 2} takes input {i} twice; it needs 2 "
                                "different inputs")
            seen.add(i)
            out[decision_key(cell_type, j, i)] = op
    return out


_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


@register_space
class DartsSpace(Space):
    """DARTS cell space: normal and reduction cell genotypes, 2 inputs per node out of 8 ops."""

    name = "darts"
    cpu_defaults = {"C": 8, "layers": 5}  # the paper's search size is C=16 layers=8
    structural_options = ("none",)  # marks an unselected edge (2 inputs per node): a restriction keeps it
    # on the normal cell's edges (skip_cap_decisions): the identity and pooling (at most a BatchNorm after it)
    parameter_free = frozenset({"skip_connect", "max_pool_3x3", "avg_pool_3x3"})

    def __init__(self, num_classes: int = 10, input_size: int = 32, C: int = 16, layers: int = 5,
                 pool_bn: bool = True, affine: bool = True, in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        if C < 1 or layers < 3:
            raise ArchError(f"darts space needs C >= 1 and layers >= 3 (two reduction cells), got C={C}, "
                            f"layers={layers}")
        if input_size % 4:
            raise ArchError(f"darts space halves the resolution twice; input_size must be a multiple of 4, "
                            f"got {input_size}")
        self.C, self.layers, self.pool_bn, self.affine = C, layers, pool_bn, affine

    @classmethod
    def decisions(cls) -> dict[str, list[str]]:
        return {decision_key(t, j, i): list(PRIMITIVES) for t in CELL_TYPES for j in NODES for i in range(j)}

    def skip_cap_decisions(self) -> list[str]:
        """The normal cell's edges only (P-DARTS caps skips there; a reduction cell's skip from a cell input is a
        stride-2 FactorizedReduce, a convolution)."""
        return [k for k in self.decisions() if k.startswith("normal.")]

    @classmethod
    def validate(cls, arch: Arch) -> None:
        super().validate(arch)
        d = arch.as_dict()
        for t in CELL_TYPES:
            for j in NODES:
                n = sum(d[decision_key(t, j, i)] != "none" for i in range(j))
                if n != 2:
                    raise ArchError(f"darts architecture: {t} node {j - 2} must have exactly 2 non-'none' "
                                    f"input edges, got {n}")

    @classmethod
    def format(cls, arch: Arch) -> str:
        parts = []
        for t in CELL_TYPES:
            pairs = ", ".join(f"({op!r}, {i})" for _, i, op in cell_edges(arch, t))
            parts.append(f"{t}=[{pairs}], {t}_concat={CONCAT}")
        return f"Genotype({', '.join(parts)})"

    @classmethod
    def parse(cls, s: str) -> Arch:
        expected = "expected Genotype(normal=[('op', input), ...], normal_concat=[2, 3, 4, 5], reduce=[...], " \
                   "reduce_concat=[2, 3, 4, 5])"
        s = s.strip()
        try:
            call = ast.parse(s, mode="eval").body
        except SyntaxError:
            raise ArchError(f"genotype {s!r} is not valid syntax; {expected}") from None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
            raise ArchError(f"genotype {s!r}: {expected}")
        fields: dict[str, ast.expr] = dict(zip(_FIELDS, call.args, strict=False))  # positional fields
        for kw in call.keywords:
            if kw.arg not in _FIELDS or kw.arg in fields:
                raise ArchError(f"genotype {s!r}: unexpected or repeated field {kw.arg!r}; {expected}")
            fields[kw.arg] = kw.value
        if len(call.args) > len(_FIELDS) or set(fields) != set(_FIELDS):
            raise ArchError(f"genotype {s!r}: needs fields {list(_FIELDS)}, got {sorted(fields)}")
        out: dict[str, str] = {}
        for t in CELL_TYPES:
            if _parse_concat(fields[f"{t}_concat"], s) != CONCAT:
                raise ArchError(f"genotype {s!r}: {t}_concat must be {CONCAT} (all intermediate nodes)")
            out.update(_parse_cell(fields[t], t, s))
        return Arch.of(cls.name, {k: out[k] for k in cls.decisions()})

    def sample(self, generator: torch.Generator) -> Arch:
        """Uniform valid genotype: per node 2 distinct inputs, each with a uniform non-'none' op (of the
        decision's options: a restricted space may offer fewer)."""
        dec = self.decisions()
        out = {k: "none" for k in dec}
        for t in CELL_TYPES:
            for j in NODES:
                for i in torch.randperm(j, generator=generator)[:2].tolist():
                    key = decision_key(t, j, i)
                    ops = [o for o in dec[key] if o != "none"]
                    out[key] = ops[int(torch.randint(len(ops), (1,), generator=generator))]
        return Arch.of(self.name, out)

    def derive(self, weights: Mapping[str, torch.Tensor], softmax: bool = True) -> Arch:
        """DARTS's discretisation of architecture weights ``{key: (num_options,)}`` over the decision's options
        (8, or fewer in a restricted space; logits, or probabilities with ``softmax=False``): per node keep the
        2 incoming edges whose strongest non-'none' op weight is largest, each with that op. Ties go to the
        lower input index / earlier op."""
        dec = self.decisions()
        out = {k: "none" for k in dec}
        for t in CELL_TYPES:
            for j in NODES:
                scored = []
                for i in range(j):
                    key = decision_key(t, j, i)
                    w = torch.as_tensor(weights[key], dtype=torch.float64).detach().cpu()
                    if softmax:
                        w = torch.softmax(w, dim=0)
                    w = w.clone()
                    w[dec[key].index("none")] = -float("inf")  # rank and pick among real ops only
                    best = int(torch.argmax(w))
                    scored.append((-float(w[best]), i, dec[key][best]))
                for _, i, op in sorted(scored)[:2]:
                    out[decision_key(t, j, i)] = op
        return Arch.of(self.name, out)

    def build_supernet(self) -> DartsNet:
        def make_edge(t: str, j: int, i: int, c: int, stride: int) -> nn.Module:
            return Choice(decision_key(t, j, i),
                          {op: make_op(op, c, stride, self.pool_bn, self.affine) for op in PRIMITIVES})

        return DartsNet(make_edge, self.C, self.layers, self.num_classes, self.affine, self.in_channels)

    def build_network(self, arch: Arch) -> DartsNet:
        self.check(arch)
        d = arch.as_dict()

        def make_edge(t: str, j: int, i: int, c: int, stride: int) -> nn.Module | None:
            op = d[decision_key(t, j, i)]
            return None if op == "none" else make_op(op, c, stride, self.pool_bn, self.affine)

        return DartsNet(make_edge, self.C, self.layers, self.num_classes, self.affine, self.in_channels)

    def config(self) -> dict:
        return {**super().config(), "C": self.C, "layers": self.layers, "pool_bn": self.pool_bn,
                "affine": self.affine}
