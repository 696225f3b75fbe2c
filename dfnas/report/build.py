"""The run report: ``report.md`` and ``report.html`` (same content) with their PNGs beside them.

Built only from files in the run directory (config, stage markers, the stages' outputs), so it can be
rebuilt at any time with ``dfnas report RUN_DIR``. Pictures the stages already drew (synthesis sample grid
and loss curves, search and training curves) are copied in; the found cell is drawn here.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfnas.errors import DfnasError
from dfnas.io import atomic_write_text, check_writable, read_json

NB201_MISSING = "ground truth unavailable: set DFNAS_NB201 to the NAS-Bench-201 nats_bench.csv (or DFNAS_ASSETS)"


@dataclass
class Doc:
    """A tiny document model rendered to both Markdown and HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, rows: Sequence[Sequence[Any]], header: Sequence[str] = ("", "")) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def img(self, name: str, caption: str) -> None:
        self.blocks.append(("img", (name, caption)))

    def code(self, text: str, lang: str = "") -> None:
        self.blocks.append(("code", (text, lang)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.blocks:
            if kind == "h2":
                out += [f"## {val}", ""]
            elif kind == "p":
                out += [val, ""]
            elif kind == "table":
                header, rows = val
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                name, caption = val
                out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
            elif kind == "code":
                text, lang = val
                out += [f"```{lang}", text.rstrip("\n"), "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}"
                 "figure{margin:1em 0}figcaption{font-style:italic;color:#555}pre{background:#f6f6f6;padding:.6em;"
                 "overflow:auto;font-size:85%}code{font-size:90%}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        for kind, val in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{e(val)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{_inline_code(e(val))}</p>")
            elif kind == "table":
                header, rows = val
                parts.append("<table>")
                if any(header):
                    parts.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{_inline_code(e(str(c)))}</td>" for c in r) + "</tr>" for r in rows]
                parts.append("</table>")
            elif kind == "img":
                name, caption = val
                parts.append(f"<figure><img src='{e(name)}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption>"
                             "</figure>")
            elif kind == "code":
                parts.append(f"<pre><code>{e(val[0])}</code></pre>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _inline_code(escaped: str) -> str:
    """Markdown-style `code` spans in already-escaped text -> <code> elements."""
    pieces = escaped.split("`")
    return "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(pieces))


def _maybe_json(path: Path) -> Any:
    try:
        return read_json(path)
    except DfnasError:
        return None


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if isinstance(v, (int, float)) else "n/a"


def _fmt_pct(v: Any, digits: int = 2) -> str:
    return f"{float(v):.{digits}f} %" if isinstance(v, (int, float)) else "n/a"


def _fmt_s(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "n/a"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _copy_png(src: Path, dst_dir: Path, name: str) -> str | None:
    """Copy ``src`` into the report folder as ``name``; None when it does not exist or is empty."""
    if not src.is_file() or src.stat().st_size == 0:
        return None
    shutil.copyfile(src, dst_dir / name)
    return name


def _synthesis_pictures(run: Path, rep: Path) -> tuple[str | None, str | None]:
    """(sample grid, loss curves) in the report folder, redrawn from the data when synthesis left none."""
    data = run / "data"
    grid = _copy_png(data / "samples.png", rep, "synthetic_samples.png")
    curves = _copy_png(data / "loss_curves.png", rep, "synthesis_losses.png")
    if grid is None and (data / "manifest.json").is_file():
        from dfnas.synthesis.runner import save_dataset_grid

        save_dataset_grid(data, rep / "synthetic_samples.png")  # bounded memory: never the whole dataset
        grid = "synthetic_samples.png"
    if curves is None:
        from dfnas.synthesis.plots import save_loss_curves

        if save_loss_curves(sorted(data.glob("synthesis_log*.jsonl")), rep / "synthesis_losses.png") is not None:
            curves = "synthesis_losses.png"
    return grid, curves


def _curves(run_sub: Path, rep: Path, name: str, title: str) -> str | None:
    """The stage's progress.png (drawn from its log.jsonl when missing)."""
    got = _copy_png(run_sub / "progress.png", rep, name)
    if got is None and (run_sub / "log.jsonl").is_file():
        from dfnas.search.report import plot_progress

        if plot_progress(run_sub / "log.jsonl", rep / name, title) is not None:
            got = name
    return got


def _nb201_text(res: dict[str, Any] | None) -> str:
    gt = (res or {}).get("nb201")
    if isinstance(gt, dict) and "cifar10" in gt:
        pct = gt.get("percentile")
        pct_s = (f" (at least as good as {float(pct):.1f} % of the 15,625 cells)" if isinstance(pct, (int, float))
                 else "")
        return f"{float(gt['cifar10']):.2f} % CIFAR-10 test accuracy after 200 epochs{pct_s}"
    note = (res or {}).get("nb201_note") or ""
    if "only nb201" in note or "no ground-truth table for space" in note:
        return f"not applicable ({note})"
    return NB201_MISSING


def build_report(run_dir: str | Path, table_path: str | Path | None = None) -> list[Path]:
    """Write ``RUN/report/report.md`` and ``report.html`` (plus PNGs); return the files written."""
    from dfnas.pipeline.rundir import STAGES, read_marker, read_run_config

    run = Path(run_dir)
    conf = read_run_config(run)
    cfg, env = conf.get("config", {}), conf.get("environment", {})
    rep = run / "report"
    check_writable(rep, "report directory", "fix the run directory's permissions, or copy the run somewhere "
                   "writable and build the report there")
    rep.mkdir(parents=True, exist_ok=True)
    markers = {s: read_marker(run, s) for s in STAGES}
    teacher = markers["teacher"].get("identity") or {}
    search_res = _maybe_json(run / "search" / "result.json") or {}
    export_meta = _maybe_json(run / "export" / "arch.json") or {}
    exp = markers["export"]
    arch_str = exp.get("arch") or search_res.get("arch_str") or "n/a"
    if search_res.get("nb201") is None and search_res.get("arch"):
        search_res = dict(search_res)  # the table may be available now (given, or found by the settings)
        from dfnas.spaces.archfile import nb201_ground_truth
        from dfnas.spaces.base import Arch, space_from_config

        space = space_from_config(search_res["space"])
        search_res["nb201"], search_res["nb201_note"] = nb201_ground_truth(space, Arch.from_json(search_res["arch"]),
                                                                           table_path)

    doc = Doc(f"dfnas run report: {cfg.get('name', run.name)}")
    syn_cfg, search_cfg = cfg.get("synthesis", {}), cfg.get("search", {})
    space_name = search_cfg.get("space", {}).get("name", "?")
    teacher_name = teacher.get("name", cfg.get("teacher", {}).get("name"))
    doc.p(f"Data-free architecture search from the teacher `{teacher_name}`: synthetic images "
          f"({syn_cfg.get('method', '?')} synthesis) -> {search_cfg.get('method', '?')} search on the `{space_name}` "
          "space -> exported network.")

    doc.h2("Result")
    t_real = (markers["teacher"].get("real_test") or {})
    rows = [
        ("found architecture", f"`{arch_str}`"),
        ("MACs / parameters (exported network)", f"{_fmt_int(exp.get('macs'))} / {_fmt_int(exp.get('params'))}"),
        ("NAS-Bench-201 ground truth", _nb201_text(search_res)),
        ("exported weights", exp.get("weights_source", "n/a")),
    ]
    if exp.get("real_test_top1") is not None:
        rows.append(("exported network, real test top-1 (evaluation only)",
                     f"{_fmt_pct(exp['real_test_top1'])} on {exp.get('real_test_n')} images of "
                     f"`{Path(str(exp.get('real_test'))).name}`"))
    if t_real.get("top1") is not None:
        rows.append(("teacher, real test top-1", f"{_fmt_pct(t_real['top1'])} on {t_real.get('n')} images"))
    doc.table(rows, ("", ""))
    space_cfg = export_meta.get("space") or exp.get("space") or {}
    onnx_meta = export_meta.get("onnx") or {}
    onnx_text = (f" + `{onnx_meta['file']}`, ONNX opset {onnx_meta.get('opset')}" if onnx_meta.get("file") else "")
    doc.p(f"Exported to `export/` (`arch.json` + `model.safetensors`{onnx_text}, space settings "
          f"`{json.dumps(space_cfg, sort_keys=True)}`); input: RGB in [0, 1], no normalization. Load it with:")
    if onnx_meta.get("skipped"):
        doc.p(f"No ONNX file: {onnx_meta['skipped']}.")
    doc.code("from dfnas.export import load_exported\nnet = load_exported('export')  # a plain torch.nn.Module",
             "python")

    doc.h2("Found cell")
    cell = _draw_cell(run, rep, export_meta)
    if cell:
        doc.img(cell, f"the found cell: {arch_str}")
    else:
        doc.p("(no drawing available for this space)")

    doc.h2("Synthetic data")
    syn = markers["synthesis"]
    summ = syn.get("summary") or {}
    met = syn.get("metrics") or {}
    doc.table([
        ("images / rounds", f"{syn.get('num_images', 'n/a')} / {syn.get('rounds', 'n/a')}"),
        ("label mode", syn.get("label_mode", "n/a")),
        ("teacher agrees with the target class", _fmt_pct(100 * met["agreement"]) if "agreement" in met else "n/a"),
        ("agreement per round", ", ".join(f"{100 * a:.1f} %" for a in summ.get("agreement_per_round", []))
         or "n/a"),
        ("mean teacher entropy (nats)", f"{met['mean_entropy']:.3f}" if "mean_entropy" in met else "n/a"),
        ("diversity (1 - mean feature cosine)", f"{met['diversity']:.3f}" if "diversity" in met else "n/a"),
        ("images per class", ", ".join(str(c) for c in summ.get("class_counts", [])) or "n/a"),
    ], ("", ""))
    grid, curves = _synthesis_pictures(run, rep)
    if grid:
        doc.img(grid, "synthetic images, one row per class (the class each image was optimized for)")
    if curves:
        doc.img(curves, "synthesis loss terms per step (mean over shards, one line per round)")

    doc.h2("Search")
    doc.p(f"{search_res.get('method', cfg.get('search', {}).get('method'))}: {search_res.get('epochs', 'n/a')} epochs, "
          f"{search_res.get('weight_steps', 'n/a')} weight steps, {_fmt_s(search_res.get('search_time_s'))}.")
    sc = _curves(run / "search", rep, "search_curves.png", f"search: {arch_str}")
    if sc:
        doc.img(sc, "search curves (loss, accuracy, and the method's architecture signal)")
    tr = markers["train"]
    if not tr.get("skipped") and (run / "train").is_dir():
        doc.h2("Training the exported network")
        doc.p(f"{tr.get('epochs', 'n/a')} epochs, {tr.get('weight_steps', 'n/a')} steps on the synthetic data, "
              f"label mode {tr.get('label_mode', 'n/a')}, {_fmt_s(tr.get('train_time_s'))}.")
        tc = _curves(run / "train", rep, "train_curves.png", "training the exported network")
        if tc:
            doc.img(tc, "training curves of the exported network")

    doc.h2("Reproducibility")
    doc.table([
        ("teacher", f"{teacher.get('name', 'n/a')} ({teacher.get('num_classes', '?')} classes, "
                    f"{teacher.get('input_size', '?')} px)"),
        ("teacher weights sha256", teacher.get("sha256") or "n/a"),
        ("seeds", ", ".join(f"{s}={cfg.get(s, {}).get('seed')}" for s in ("synthesis", "search", "train"))),
        ("versions", ", ".join(f"{k} {env.get(k)}" for k in ("dfnas", "torch", "numpy", "python") if env.get(k))),
        ("platform", f"{env.get('platform', 'n/a')}, device {cfg.get('device')}, search processes "
                     f"{markers['search'].get('world_size', 1)}"),
        ("config hash", conf.get("config_hash", "n/a")),
    ], ("", ""))
    doc.table([(s, m.get("status", "pending"), _fmt_s(m.get("seconds_total", m.get("seconds"))), m.get("attempts", 0))
               for s, m in markers.items() if s != "report"], ("stage", "status", "wall time", "attempts"))
    total = sum(float(m.get("seconds_total", 0.0)) for s, m in markers.items() if s != "report")
    doc.p(f"Total wall time of the stages above: {_fmt_s(total)} (summed over attempts; a resumed stage counts "
          "the time of every attempt).")
    doc.code(json.dumps(cfg, indent=2, sort_keys=True), "json")

    md = atomic_write_text(rep / "report.md", doc.markdown())
    hp = atomic_write_text(rep / "report.html", doc.html())
    return [md, hp, *sorted(rep.glob("*.png"))]


def _draw_cell(run: Path, rep: Path, export_meta: dict[str, Any]) -> str | None:
    """Draw the exported (else the searched) architecture as ``cell.png``."""
    from dfnas.spaces.archfile import read_arch_file
    from dfnas.spaces.base import space_from_config
    from dfnas.spaces.draw import draw_arch

    src = run / "export" / "arch.json" if export_meta else run / "search" / "arch.json"
    if not src.is_file():
        return None
    arch, space_cfg = read_arch_file(src)
    space = space_from_config(space_cfg or {"name": arch.space})
    draw_arch(space, arch, rep / "cell.png")
    return "cell.png"

