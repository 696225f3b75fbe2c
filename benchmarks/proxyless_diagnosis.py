"""Why ProxylessNAS picks parameter-free cells: its own per-epoch counters, at the search-quality budget.

For ProxylessNAS on NAS-Bench-201 (the ``cpu`` budget of ``search_quality.py``: 500 images per source, C=8 N=1,
210 weight steps) and a few variants, every search logs per epoch and decision how often each op ran in a
weight step, how often it was in the arch step's sampled pair, its mean gate gradient dL/dg and its summed
estimator gradient dL/dalpha (``ProxylessMethod.diagnostics_record``). This script runs the searches and
aggregates the counters over the six edges per op: which ops the estimator pushes up (negative summed
dL/dalpha), how far the architecture logits move at all (the spread of softmax(alpha) at the end), how well
the supernet has learnt (held-out accuracy of the derived path), and the NB201 accuracy of the found cell.

    python benchmarks/proxyless_diagnosis.py --budget cpu
    python benchmarks/proxyless_diagnosis.py --budget smoke

Variants: ``base`` (the library's defaults), ``arch_lr_x10`` (arch Adam lr 1e-2: the paper's ~1e3 arch updates
compressed into 140), ``steps_x4`` (4x the weight steps, 840: is it a matter of training?). Resumable per cell
(benchmarks/_work/<budget>/proxyless_diagnosis/cells/).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import search_quality as sq  # noqa: E402
from common import SOURCES  # noqa: E402

NAME = "proxyless_diagnosis"
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")
# variant -> (SearchConfig overrides, sources it runs on)
VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "base": ({}, ("real", "full", "noise")),
    "arch_lr_x10": ({"proxyless": {"arch_lr": 1e-2}}, ("real", "full")),
    "steps_x4": ({"epochs": 120}, ("real", "full")),
    # the pair's measured held-out losses instead of the linearized gate gradient: is the estimator the cause?
    "loss_diff": ({"proxyless": {"estimator": "loss_diff"}}, ("real", "full")),
}


def cell_config(budget: sq.Budget, variant: str, seed: int) -> dict[str, Any]:
    return common.deep_merge(sq.search_config(budget, "proxyless", seed), VARIANTS[variant][0])


def cell_hash(budget: sq.Budget, variant: str, seed: int) -> str:
    from dfnas.config import from_dict
    from dfnas.search.api import SearchConfig

    resolved = from_dict(SearchConfig, cell_config(budget, variant, seed), "search").resolved(only_active_method=True)
    return common.stable_hash({"data": budget.data.as_dict(), "search": resolved})


def aggregate(log_path: Path) -> dict[str, Any]:
    """Per-op sums over edges and epochs of the counters; per-epoch alpha-gradient per op; last probabilities."""
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    epochs = [r for r in recs if r.get("kind") == "epoch" and "paths" in r]
    sampled = {o: 0 for o in OPS}
    paired = {o: 0 for o in OPS}
    gate_sum = {o: 0.0 for o in OPS}
    alpha_sum = {o: 0.0 for o in OPS}
    per_epoch = []
    for r in epochs:
        row = {o: 0.0 for o in OPS}
        for d in r["paths"].values():
            for i, o in enumerate(OPS):
                sampled[o] += d["sampled"][i]
                paired[o] += d["paired"][i]
                gate_sum[o] += d["gate_grad_mean"][i] * d["paired"][i]
                alpha_sum[o] += d["alpha_grad_sum"][i]
                row[o] += d["alpha_grad_sum"][i]
        per_epoch.append({"epoch": r["epoch"], "alpha_grad": row, "held_out_acc": r.get("held_out_acc")})
    last = epochs[-1]
    probs = list(last["alpha"].values())
    spread = max(max(p) - min(p) for p in probs)
    return {"sampled": sampled, "paired": paired,
            "gate_grad_mean": {o: gate_sum[o] / max(1, paired[o]) for o in OPS}, "alpha_grad_sum": alpha_sum,
            "final_prob_spread": spread, "final_probs": last["alpha"],
            "held_out_acc": [e["held_out_acc"] for e in per_epoch], "per_epoch": per_epoch}


def run_cell(ds: Any, source: str, variant: str, seed: int, budget: sq.Budget, runs: Path, table: Any,
             progress: bool) -> dict[str, Any]:
    from dfnas.search import run_search

    t0 = time.perf_counter()
    out = runs / source / variant / common.run_name(f"seed{seed}", cell_hash(budget, variant, seed))
    res = run_search(cell_config(budget, variant, seed), ds, out, device="cpu", progress=progress)
    gt = table.lookup(res.arch)
    ops = list(res.arch.as_dict().values())
    return {"source": source, "variant": variant, "seed": seed, "arch": str(res.arch),
            "nb201_cifar10": gt["cifar10"], "parameter_free_edges": sum(o in PARAMETER_FREE for o in ops),
            "weight_steps": res.result.get("weight_steps"), "wall_s": round(time.perf_counter() - t0, 2),
            **aggregate(out / "log.jsonl")}


def summarize(cells: list[dict[str, Any]], budget_name: str) -> tuple[dict[str, Any], str]:
    groups = []
    for v, (_, sources) in VARIANTS.items():
        for s in sources:
            cs = sorted((c for c in cells if c["variant"] == v and c["source"] == s), key=lambda c: c["seed"])
            if not cs:
                continue
            a_sum = {o: sum(c["alpha_grad_sum"][o] for c in cs) / len(cs) for o in OPS}
            g_mean = {o: sum(c["gate_grad_mean"][o] for c in cs) / len(cs) for o in OPS}
            groups.append({"variant": v, "source": s, "seeds": [c["seed"] for c in cs],
                           "acc": [c["nb201_cifar10"] for c in cs],
                           "parameter_free_edges": [c["parameter_free_edges"] for c in cs],
                           "final_prob_spread": [c["final_prob_spread"] for c in cs],
                           "final_held_out_acc": [c["held_out_acc"][-1] for c in cs],
                           "alpha_grad_sum_mean": a_sum, "gate_grad_mean": g_mean})
    summary = {"benchmark": NAME, "budget": budget_name, "variants": {v: c for v, (c, _) in VARIANTS.items()},
               "groups": groups, "cells": cells, "environment": common.environment()}
    lines = [f"# ProxylessNAS diagnosis ({budget_name} budget)\n",
             "ProxylessNAS on NAS-Bench-201 at the search-quality budget (500 images per source, C=8 N=1, 210 weight "
             "steps, the last two thirds with an arch step each). Per op, summed over the six edges and the search: "
             "the estimator's dL/dalpha (negative = pushed up) and mean gate gradient dL/dg; the largest spread "
             "max - min of softmax(alpha) over the edges at the end (uniform = 0); the held-out accuracy of the "
             "derived path at the end; how many of the found cell's six edges are parameter-free "
             "(none / skip / pool).\n",
             "## Found cells\n"]
    rows = [[g["variant"], SOURCES[g["source"]].label, common.fmt_pm(g["acc"]),
             ", ".join(str(n) for n in g["parameter_free_edges"]),
             ", ".join(f"{x:.3f}" for x in g["final_prob_spread"]),
             ", ".join(f"{x:.1f}" for x in g["final_held_out_acc"])] for g in groups]
    lines.append(common.md_table(["variant", "source", "NB201 CIFAR-10 (mean ± std)", "parameter-free edges per seed",
                                  "softmax(alpha) spread per seed", "held-out acc. per seed"], rows))
    lines.append("\n## Summed dL/dalpha per op (mean over seeds; negative = the estimator raises the op)\n")
    lines.append(common.md_table(["variant", "source", *OPS],
                                 [[g["variant"], SOURCES[g["source"]].label,
                                   *(f"{g['alpha_grad_sum_mean'][o]:+.2f}" for o in OPS)] for g in groups]))
    lines.append("\n## Mean estimator signal per op (mean over seeds): the gate gradient dL/dg, or for `loss_diff` "
                 "the held-out loss measured with the op on its edge (lower = the op fits better)\n")
    lines.append(common.md_table(["variant", "source", *OPS],
                                 [[g["variant"], SOURCES[g["source"]].label,
                                   *(f"{g['gate_grad_mean'][o]:+.4f}" for o in OPS)] for g in groups]))
    return summary, "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Per source of the base variant: cumulative summed dL/dalpha per op over the epochs (mean over seeds)."""
    plt = common.pyplot()
    cells = [c for c in summary["cells"] if c["variant"] == "base"]
    sources = [s for s in SOURCES if any(c["source"] == s for c in cells)]
    fig, axes = plt.subplots(1, max(1, len(sources)), figsize=(4.2 * max(1, len(sources)), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, s in zip(axes[0], sources, strict=False):
        cs = [c for c in cells if c["source"] == s]
        n_ep = min(len(c["per_epoch"]) for c in cs)
        for j, o in enumerate(OPS):
            cum, total = [], 0.0
            for e in range(n_ep):
                total += sum(c["per_epoch"][e]["alpha_grad"][o] for c in cs) / len(cs)
                cum.append(-total)
            ax.plot(range(n_ep), cum, color=colors[j], label=o, lw=1.6 if o in PARAMETER_FREE else 1.0,
                    ls="-" if o in PARAMETER_FREE else "--")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_title(SOURCES[s].label, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("cumulative -dL/dalpha (up = favoured)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"ProxylessNAS: which ops the estimator favours ({summary['budget']} budget, base variant)",
                 fontsize=10)
    fig.tight_layout()
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(sq.BUDGETS))
    p.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: the budget's)")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = sq.BUDGETS[args.budget]
    seeds = common.parse_seeds(args.seeds) if args.seeds else list(budget.seeds)
    store = common.CellStore(work / NAME / "cells")
    common.adopt_published(store, common.RESULTS_DIR / f"{NAME}_{args.budget}.json",
                           lambda c: (c["source"], c["variant"], f"seed{c['seed']}"))
    runs = work / NAME / "runs"

    from dfnas.spaces.nb201_table import NB201Table

    table = NB201Table.load()
    grid = [(s, v, k) for v, (_, srcs) in VARIANTS.items() for s in srcs for k in seeds]
    if not args.summary_only:
        datasets: dict[str, Any] = {}
        for s, v, k in grid:
            if store.get(s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k)) is not None:
                continue
            if s not in datasets:
                datasets[s], _ = common.prepare_source(s, budget.data, work, not args.quiet)
            common.log(f"cell source={s} variant={v} seed={k}")
            rec = run_cell(datasets[s], s, v, k, budget, runs, table, not args.quiet)
            store.put(rec, s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k))
            common.log(f"  found {rec['arch']} -> {rec['nb201_cifar10']:.2f}%")
    cells = [c for s, v, k in grid if (c := store.get(s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k)))]
    summary, md = summarize(cells, args.budget)
    common.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "ProxylessNAS diagnosis",
                   f"{len(cells)} of {len(grid)} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
