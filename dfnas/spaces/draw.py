"""Pictures of architectures with matplotlib only (no graphviz): cells as DAGs, chains as strips of layers.

Uses a bare ``Figure`` with the Agg canvas, so drawing never touches pyplot's global state or backend.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from dfnas.errors import ArchError
from dfnas.spaces.base import Arch, ChainSpace, Space, build_space, get_space_cls

Point = tuple[float, float]
NODE_GID, LABEL_GID = "node", "edge-label"  # artist ids: node boxes and edge labels (tests check they never overlap)
_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]


def _colour(op: str, ops: list[str]) -> str:
    return _PALETTE[ops.index(op) % len(_PALETTE)] if op in ops else "#888888"


def _node(ax: Axes, xy: tuple[float, float], label: str, fill: str) -> None:
    ax.add_patch(FancyBboxPatch((xy[0] - 0.32, xy[1] - 0.2), 0.64, 0.4, boxstyle="round,pad=0.02",
                                facecolor=fill, edgecolor="black", zorder=3, gid=NODE_GID))
    ax.text(xy[0], xy[1], label, ha="center", va="center", fontsize=9, zorder=4)


def _arc_point(a: Point, b: Point, rad: float, t: float) -> Point:
    """The point at ``t`` in [0, 1] of matplotlib's ``arc3`` quadratic curve from ``a`` to ``b`` (in data
    coordinates, valid because the axes have equal aspect)."""
    cx, cy = (a[0] + b[0]) / 2 + rad * (b[1] - a[1]), (a[1] + b[1]) / 2 - rad * (b[0] - a[0])
    u = 1.0 - t
    return (u * u * a[0] + 2 * u * t * cx + t * t * b[0], u * u * a[1] + 2 * u * t * cy + t * t * b[1])


def _label_candidates(a: Point, b: Point, rad: float) -> list[Point]:
    """Where an edge's label may go, best first: along the curve from its middle outwards, then beside the
    middle on either side."""
    along = [_arc_point(a, b, rad, 0.5 + d) for k in range(8) for d in ((0.04 * k, -0.04 * k) if k else (0.0,))]
    mx, my = along[0]
    dx, dy = b[0] - a[0], b[1] - a[1]
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    nx, ny = dy / norm, -dx / norm  # the side the curve bends to for rad > 0
    side = 1.0 if rad >= 0 else -1.0
    beside = [(mx + s * k * 0.2 * nx, my + s * k * 0.2 * ny) for k in range(1, 9) for s in (side, -side)]
    return along + beside


def _edge(ax: Axes, a: Point, b: Point, label: str, colour: str, rad: float, labels: list[tuple[Text, list[Point]]],
          dashed: bool = False) -> None:
    ax.add_patch(FancyArrowPatch(a, b, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=12,
                                 color=colour, lw=1.6, linestyle="--" if dashed else "-", shrinkA=14, shrinkB=14,
                                 zorder=2))
    if label:
        where = _label_candidates(a, b, rad)
        text = ax.text(*where[0], label, ha="center", va="center", fontsize=7, color=colour, zorder=5, gid=LABEL_GID,
                       bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
        labels.append((text, where))


def _place_labels(fig: Figure, labels: list[tuple[Text, list[Point]]], pad_px: float = 3.0) -> None:
    """Move each edge label to its first candidate position whose box (``pad_px`` around the text) overlaps
    no node box, preferring one that also overlaps no label placed before it. Measured on the rendered
    figure, so the result holds for the text size actually drawn."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # fixes the equal-aspect transforms
    nodes = [p.get_window_extent(renderer) for ax in fig.axes for p in ax.patches if p.get_gid() == NODE_GID]
    placed: list[Bbox] = []

    def box(text: Text) -> Bbox:
        return text.get_window_extent(renderer).padded(pad_px)

    for text, where in labels:
        clear_of_nodes = None
        for xy in where:
            text.set_position(xy)
            b = box(text)
            if any(b.overlaps(n) for n in nodes):
                continue
            if clear_of_nodes is None:
                clear_of_nodes = xy
            if not any(b.overlaps(p) for p in placed):
                break
        else:
            text.set_position(clear_of_nodes if clear_of_nodes is not None else where[0])
        placed.append(box(text))


def _finish(ax: Axes, title: str) -> None:
    ax.set_aspect("equal")
    ax.autoscale_view()
    ax.margins(0.08)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)


def _draw_nb201(fig: Figure, arch: Arch) -> None:
    from dfnas.spaces.nb201 import EDGES, OPS, edge_key

    d = arch.as_dict()
    ax = fig.add_subplot(1, 1, 1)
    pos = {j: (1.6 * j, 0.0) for j in range(4)}
    labels: list[tuple[Text, list[Point]]] = []
    for j, i in EDGES:
        op = d[edge_key(j, i)]
        if op != "none":
            # longer hops bend further so that parallel edges do not overlap
            _edge(ax, pos[i], pos[j], op, _colour(op, OPS), 0.35 * (j - i) if (j - i) > 1 else 0.15, labels)
    for j, xy in pos.items():
        _node(ax, xy, "in" if j == 0 else "out" if j == 3 else f"n{j}", "#dddddd" if j in (0, 3) else "#a6cee3")
    ax.set_xlim(-0.6, 1.6 * 3 + 0.6)
    ax.set_ylim(-3.0, 0.8)
    _finish(ax, f"NAS-Bench-201 cell\n{arch}")
    _place_labels(fig, labels)


def _draw_darts(fig: Figure, arch: Arch) -> None:
    from dfnas.spaces.darts import CONCAT, PRIMITIVES, cell_edges

    edge_labels: list[tuple[Text, list[Point]]] = []
    for k, t in enumerate(("normal", "reduce")):
        ax = fig.add_subplot(2, 1, k + 1)
        pos = {0: (0.0, 1.4), 1: (0.0, -1.4), 2: (2.0, 1.0), 3: (3.6, -1.0), 4: (5.2, 1.0), 5: (6.8, -1.0)}
        out = (8.6, 0.0)
        for j, i, op in cell_edges(arch, t):
            _edge(ax, pos[i], pos[j], op, _colour(op, PRIMITIVES), 0.12 if (i + j) % 2 else -0.12, edge_labels)
        for j in CONCAT:
            _edge(ax, pos[j], out, "", "#999999", 0.0, edge_labels, dashed=True)
        labels = {0: "$c_{k-2}$", 1: "$c_{k-1}$"}
        for j, xy in pos.items():
            _node(ax, xy, labels.get(j, str(j - 2)), "#dddddd" if j < 2 else "#a6cee3")
        _node(ax, out, "$c_{k}$", "#dddddd")
        ax.set_xlim(-0.6, 9.2)
        ax.set_ylim(-2.0, 2.0)
        _finish(ax, f"DARTS {t} cell")
    _place_labels(fig, edge_labels)


def _draw_chain(fig: Figure, space_cls: type[ChainSpace], arch: Arch) -> None:
    ops = list(space_cls.ops)
    d = arch.as_dict()
    n = len(d)
    ax = fig.add_subplot(1, 1, 1)
    for i in range(n):
        op = d[space_cls.layer_key(i)]
        skipped = op == "zero"
        ax.add_patch(FancyBboxPatch((i + 0.08, 0.0), 0.84, 0.4 if skipped else 2.0, boxstyle="round,pad=0.02",
                                    facecolor="white" if skipped else _colour(op, ops), edgecolor="black",
                                    hatch="//" if skipped else None))
        ax.text(i + 0.5, 1.0 if not skipped else 0.7, op, rotation=90, ha="center", va="center", fontsize=8)
        ax.text(i + 0.5, -0.3, str(i), ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.2, n + 0.2)
    ax.set_ylim(-0.6, 2.4)
    ax.set_axis_off()
    ax.set_title(f"{space_cls.name}: {n} searchable layers", fontsize=10)


def arch_figure(space: Space | str, arch: Arch) -> Figure:
    """The picture of ``arch`` as a matplotlib ``Figure`` (Agg canvas): a DAG for cell spaces (nb201, darts;
    'none' edges left out; every edge label placed clear of the node boxes), a strip of layer boxes for chain
    spaces (skipped ``zero`` layers hatched)."""
    if isinstance(space, str):
        space = build_space(space)
    if arch.space != space.name:
        raise ArchError(f"cannot draw an architecture of space {arch.space!r} as space {space.name!r}")
    space.validate(arch)
    cls = get_space_cls(space.name)
    if space.name == "nb201":
        fig = Figure(figsize=(7, 3.6))
        _draw_nb201(fig, arch)
    elif space.name == "darts":
        fig = Figure(figsize=(8, 6))
        _draw_darts(fig, arch)
    elif issubclass(cls, ChainSpace):
        fig = Figure(figsize=(max(4.0, 0.45 * len(arch.choices) + 1), 3))
        _draw_chain(fig, cls, arch)
    else:
        raise ArchError(f"no drawing for space {space.name!r}")
    FigureCanvasAgg(fig)
    return fig


def draw_arch(space: Space | str, arch: Arch, path_png: str | Path) -> Path:
    """Draw ``arch`` (``arch_figure``) to a PNG; returns the written path."""
    fig = arch_figure(space, arch)
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
