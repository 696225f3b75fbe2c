"""Progress curves of a search or training run (``progress.png`` from ``log.jsonl``).

Architecture files and NAS-Bench-201 ground truth live with the spaces: ``dfnas.spaces.archfile``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.io import atomic_write, read_jsonl


def _last_by(records: list[dict[str, Any]], kind: str, key: str) -> list[dict[str, Any]]:
    """Records of ``kind``, keeping the last one per ``key`` (a resumed run re-logs some steps), sorted."""
    by: dict[Any, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == kind and key in r:
            by[r[key]] = r
    return [by[k] for k in sorted(by)]


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_progress(log_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Search curves from ``log.jsonl``: training loss, accuracies, alpha entropy or evolution scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = list(read_jsonl(log_path))
    steps = _last_by(recs, "step", "step")
    epochs = _last_by(recs, "epoch", "epoch")
    gens = _last_by(recs, "generation", "generation")
    if not (steps or epochs or gens):
        return None
    fig = Figure(figsize=(12, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    ax = axes[0]
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train loss (step)")
        if any("arch_loss" in r for r in steps):
            arch = [r for r in steps if "arch_loss" in r]
            ax.plot([r["step"] for r in arch], [r["arch_loss"] for r in arch], lw=1, label="held-out loss (arch step)")
    if epochs:
        ax.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o", ms=3, label="train loss (epoch)")
    ax.set_xlabel("weight step")
    ax.set_title("loss")
    _legend(ax)
    ax = axes[1]
    if epochs:
        e = [r["epoch"] + 1 for r in epochs]
        ax.plot(e, [r["train_acc"] for r in epochs], "o-", label="train (running)")
        ev = [r for r in epochs if "held_out_acc" in r]
        if ev:
            ax.plot([r["epoch"] + 1 for r in ev], [r["held_out_acc"] for r in ev], "s-", label="held-out")
    ax.set_xlabel("epoch")
    ax.set_title("top-1 accuracy (%)")
    _legend(ax)
    ax = axes[2]
    if gens:
        g = [r["generation"] for r in gens]
        ax.plot(g, [r["best_score"] for r in gens], "o-", label="best so far")
        ax.plot(g, [r["mean_score"] for r in gens], "s-", label="population mean")
        ax.set_xlabel("generation")
        ax.set_title("evolution: held-out accuracy (%)")
        ax.legend(fontsize=7)
    elif any("entropy" in r for r in epochs):
        ent = [r for r in epochs if "entropy" in r]
        ax.plot([r["epoch"] + 1 for r in ent], [r["entropy"] for r in ent], "o-", label="mean entropy")
        ax.axhline(ent[0].get("entropy_max", 0.0), ls="--", c="gray", lw=1, label="uniform")
        ax.set_xlabel("epoch")
        ax.set_title("softmax(alpha) entropy (nats)")
        ax.legend(fontsize=7)
    else:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic_write(png_path, lambda fh: fig.savefig(fh, format="png", dpi=90))
