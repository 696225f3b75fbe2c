"""Run-directory outputs of a search: architecture files, NAS-Bench-201 ground truth, progress curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.errors import DfnasError
from dfnas.io import atomic_write, atomic_write_json, atomic_write_text, read_json, read_jsonl
from dfnas.spaces.base import Arch, Space, build_space

ARCH_FORMAT = "dfnas-arch/1"


def write_arch_files(out_dir: Path, space: Space, arch: Arch, info: dict[str, Any] | None = None) -> None:
    """``arch.json`` ({"format", "arch": Arch.to_json(), "space": Space.config(), "info"}) and ``arch.txt``."""
    atomic_write_json(out_dir / "arch.json", {"format": ARCH_FORMAT, "arch": arch.to_json(), "space": space.config(),
                                              "info": info or {}})
    atomic_write_text(out_dir / "arch.txt", str(arch) + "\n")


def read_arch_file(path: str | Path) -> tuple[Arch, dict[str, Any] | None]:
    """(arch, space settings or None) from an ``arch.json`` written by search or export, a bare
    ``Arch.to_json`` object, or a text file holding an architecture string of a known space."""
    from dfnas.spaces import SPACES

    p = Path(path)
    if not p.is_file():
        raise DfnasError(f"architecture file {str(p)!r} does not exist")
    if p.suffix.lower() != ".json":
        return parse_arch_string(p.read_text()), None
    obj = read_json(p, what="architecture file")
    if isinstance(obj, dict) and isinstance(obj.get("arch"), dict):  # search / export layout
        space_cfg = obj.get("space") if isinstance(obj.get("space"), dict) else None
        return Arch.from_json(obj["arch"]), space_cfg
    if isinstance(obj, dict) and obj.get("space") in SPACES:
        return Arch.from_json(obj), None
    raise DfnasError(f"{str(p)!r} is not an architecture file: expected arch.json from `dfnas search` or "
                     "an object with 'space' and 'arch'")


def parse_arch_string(s: str, space: str | None = None) -> Arch:
    """Parse an architecture string of ``space``, or of whichever registered space accepts it.

    Without ``space`` the error names the space the string most resembles (``|`` -> nb201,
    ``Genotype(`` -> darts), else every space's complaint.
    """
    from dfnas.errors import ArchError
    from dfnas.spaces import SPACES, get_space_cls

    if space is not None:
        return get_space_cls(space).parse(s)
    errors: dict[str, str] = {}
    for name in SPACES.names():
        try:
            return get_space_cls(name).parse(s)
        except ArchError as e:
            errors[name] = str(e)
    t = s.strip()
    likely = "nb201" if t.startswith("|") else "darts" if t.startswith("Genotype") else None
    if likely in errors:
        raise ArchError(errors[likely])
    raise ArchError(f"{t!r} is not an architecture string of any space ({'; '.join(errors.values())})")


def nb201_ground_truth(space: Space, arch: Arch, table_path: str | Path | None) -> tuple[dict | None, str | None]:
    """(NAS-Bench-201 lookup of ``arch``, None) or (None, why not): only nb201 archs, only with the table."""
    if space.name != "nb201":
        return None, f"no ground-truth table for space {space.name!r} (only nb201)"
    try:
        from dfnas.spaces.nb201_table import NB201Table

        return NB201Table.load(table_path).lookup(arch), None
    except DfnasError as e:
        return None, str(e)


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


def space_from_config(cfg: dict[str, Any], **overrides: Any) -> Space:
    """Rebuild a space from ``Space.config()`` output (``name`` plus settings), with overrides."""
    c = {**cfg, **overrides}
    name = c.pop("name", None)
    if not name:
        raise DfnasError(f"space settings {cfg} have no 'name'")
    return build_space(str(name), **c)
