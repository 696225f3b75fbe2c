"""Pictures saved next to a dataset: a per-class sample grid (PIL) and loss curves (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from dfnas.io import atomic_write_bytes, read_jsonl


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: str | Path,
                     per_class: int = 8, scale: int = 2) -> Path:
    """PNG with one row per class (rows = classes, first ``per_class`` images of each class).

    images: uint8 (N, C, H, W); labels: (N,) class indices. Empty cells stay grey.
    """
    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    k = len(class_names)
    label_w, pad = 90, 2
    cell_h, cell_w = h * scale + pad, w * scale + pad
    grid = Image.new("RGB", (label_w + per_class * cell_w, max(1, k) * cell_h), (128, 128, 128))
    draw = ImageDraw.Draw(grid)
    for ci, name in enumerate(class_names):
        draw.text((4, ci * cell_h + cell_h // 2 - 6), name[:14], fill=(255, 255, 255))
        idx = torch.nonzero(labels == ci).flatten()[:per_class]
        for col, i in enumerate(idx.tolist()):
            arr = images[i].permute(1, 2, 0).cpu().numpy()  # (H, W, C) uint8
            if c == 1:
                arr = np.repeat(arr, 3, axis=2)
            tile = Image.fromarray(np.ascontiguousarray(arr[..., :3])).resize((w * scale, h * scale),
                                                                              Image.NEAREST)
            grid.paste(tile, (label_w + col * cell_w, ci * cell_h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_loss_curves(log_paths: list[Path], path: str | Path) -> Path | None:
    """One panel per logged loss term, one line per round (mean over shards at each step); log y-axis.

    Records from an interrupted attempt are superseded by later ones of the same (round, shard, step).
    Returns None when the logs hold no step records.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    latest: dict[tuple[int, int, int], dict] = {}
    for lp in log_paths:
        for rec in read_jsonl(lp):
            if "step" in rec and "round" in rec and "shard" in rec:
                latest[(rec["round"], rec["shard"], rec["step"])] = rec
    if not latest:
        return None
    terms = sorted({k for r in latest.values() for k in r if k.startswith("loss")})
    # (term, round) -> step -> values over shards
    series: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (rnd, _shard, step), rec in latest.items():
        for t in terms:
            if t in rec and rec[t] is not None:
                series[(t, rnd)][step].append(float(rec[t]))
    fig = Figure(figsize=(3.2 * len(terms), 3.0))
    FigureCanvasAgg(fig)
    for i, t in enumerate(terms):
        ax = fig.add_subplot(1, len(terms), i + 1)
        for (term, rnd), by_step in sorted(series.items()):
            if term != t:
                continue
            steps = sorted(by_step)
            ax.plot(steps, [float(np.mean(by_step[s])) for s in steps], label=f"round {rnd}")
        ax.set_title(t)
        ax.set_xlabel("step")
        if all(v > 0 for (term, _), d in series.items() if term == t for vs in d.values() for v in vs):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    # fixed margins: tight_layout measures every tick label and takes seconds for a small figure
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.16, top=0.88, wspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return atomic_write_bytes(path, buf.getvalue())
