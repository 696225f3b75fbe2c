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
    python benchmarks/proxyless_diagnosis.py --budget cpu --variants identity --seeds 0-4

Variants: ``base`` (the library's defaults), ``arch_lr_x10`` (arch Adam lr 1e-2: the paper's ~1e3 arch updates
compressed into 140), ``steps_x4`` (4x the weight steps, 840: is it a matter of training?), ``loss_diff``,
``identity`` (identity-started candidates, ``candidate_init=identity``), ``identity_fair`` (and fair weight paths
with a 10x arch lr). Resumable per cell (benchmarks/_work/<budget>/proxyless_diagnosis/cells/).

For the ``identity`` and ``identity_fair`` cells (added later; the earlier cells' runs are gone) the trained
supernet is also measured without the estimator (``exact_edge_losses``): per edge and op, the held-out loss with
that op on the edge, averaged over random choices of the other edges, and the cell that takes each edge's
lowest-loss op. If that cell is no better than the search's, the estimator's noise is not what limits the search;
the supernet is. They also record the BatchNorm statistics of the found cell's path (``bn_path_statistics``): how
far the running statistics, accumulated over every path the weight steps sampled, sit from that path's own batch
statistics on the held-out images, and the held-out loss with each. Cells stored before this measurement get it
from their finished run directory (the search is not run again).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import reporting  # noqa: E402
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
    # the search-quality method proxyless_identity (same cells): untrained convolutions start as skips
    "identity": ({"candidate_init": "identity"}, ("real", "full")),
    # and every op trained on every batch with a 10x arch lr (search-quality's proxyless_identity_fair): does a
    # supernet whose convolutions had all 210 updates rank the ops?
    "identity_fair": ({"candidate_init": "identity", "proxyless": {"sampling": "fair", "arch_lr": 1e-2}},
                      ("real", "full")),
}
EXACT_VARIANTS = ("identity", "identity_fair")  # variants whose cells also measure the supernet without the estimator
EXACT_PATHS = 10  # random choices of the other edges per edge, shared by the edge's five options


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
    cfg, out = cell_config(budget, variant, seed), cell_run_dir(runs, source, variant, seed, budget)
    res = run_search(cfg, ds, out, device="cpu", progress=progress)
    gt = table.lookup(res.arch)
    ops = list(res.arch.as_dict().values())
    exact: dict[str, Any] = {}
    if variant in EXACT_VARIANTS:
        held = held_out(cfg, ds)
        exact = {**exact_edge_losses(held, res.model, EXACT_PATHS, seed, table),
                 **bn_path_statistics(held, res.model, res.arch)}
    return {"source": source, "variant": variant, "seed": seed, "arch": str(res.arch),
            "nb201_cifar10": gt["cifar10"], "parameter_free_edges": sum(o in PARAMETER_FREE for o in ops),
            "weight_steps": res.result.get("weight_steps"), "wall_s": round(time.perf_counter() - t0, 2),
            **aggregate(out / "log.jsonl"), **exact}


def cell_run_dir(runs: Path, source: str, variant: str, seed: int, budget: sq.Budget) -> Path:
    """The run directory of one cell."""
    return runs / source / variant / common.run_name(f"seed{seed}", cell_hash(budget, variant, seed))


def held_out(cfg: dict[str, Any], ds: Any) -> tuple[Any, Any, Any, Any]:
    """(setup, criterion, x, y): the search's own split, space and criterion, and all its held-out images
    as one batch, x (H, 3, 32, 32) and y (H, ...): what the measurements of a finished supernet run on."""
    from dfnas.data.imageset import iterate_batches
    from dfnas.search.api import prepare_search

    setup = prepare_search(cfg, ds, device="cpu", progress=False)
    x, y = next(iterate_batches(setup.held, len(setup.held), None, augment=False))
    return setup, setup.criterion(), x, y


def with_bn_statistics(rec: dict[str, Any], ds: Any, budget: sq.Budget, runs: Path) -> dict[str, Any]:
    """A stored cell with ``bn_path_statistics`` added, measured on its run directory's finished supernet
    (``run_search`` returns a finished run at once; a missing one is searched again, to the same bytes)."""
    from dfnas.search import run_search

    s, v, k = rec["source"], rec["variant"], rec["seed"]
    cfg = cell_config(budget, v, k)
    res = run_search(cfg, ds, cell_run_dir(runs, s, v, k, budget), device="cpu", progress=False)
    if str(res.arch) != rec["arch"]:
        raise common.DfnasError(f"the run of cell {s}/{v}/seed{k} found {res.arch}, the stored cell {rec['arch']}")
    return {**rec, **bn_path_statistics(held_out(cfg, ds), res.model, res.arch)}


def exact_edge_losses(held: tuple[Any, Any, Any, Any], model: Any, n_paths: int, seed: int,
                      table: Any) -> dict[str, Any]:
    """The finished search's supernet (``model``, as ``run_search`` returns it) measured without the estimator.

    Per edge: ``n_paths`` random choices of the other edges (options other than ``none``, so the cell stays
    connected), each evaluated with every option on the edge (common random numbers), on all held-out images
    of the search's own split, with batch statistics as in an architecture step. Returns the mean loss per
    edge and op, the spread of the paired differences (how many paths a reliable ranking needs), and the cell
    of each edge's lowest mean loss with its NB201 accuracy (``exact_cell``, ``exact_cell_nb201``).
    """
    import torch

    from dfnas.search.bn import frozen_running_stats
    from dfnas.spaces.base import Arch

    setup, criterion, x, y = held  # the search's held-out split (as one batch) and criterion
    dec = setup.space.decisions()
    connected = {k: [o for o in opts if o != "none"] for k, opts in dec.items()}
    gen = torch.Generator().manual_seed(seed)
    edges: dict[str, Any] = {}
    model.train()
    with torch.no_grad(), frozen_running_stats(model):
        for k, opts in dec.items():
            losses = torch.zeros(n_paths, len(opts))  # (paths, options)
            for m in range(n_paths):
                rest = {kk: oo[int(torch.randint(len(oo), (1,), generator=gen))] for kk, oo in connected.items()}
                for j, o in enumerate(opts):
                    model.set_path(Arch.of(setup.space.name, {**rest, k: o}))
                    losses[m, j] = criterion(model(x), x, y)
            centred = losses - losses.mean(1, keepdim=True)  # paired: each path's mean over options removed
            edges[k] = {"options": list(opts), "mean_loss": [round(float(v), 5) for v in losses.mean(0)],
                        "paired_sd": [round(float(v), 5) for v in centred.std(0)]}
    cell = Arch.of(setup.space.name, {k: e["options"][min(range(len(e["options"])), key=e["mean_loss"].__getitem__)]
                                      for k, e in edges.items()})
    return {"exact_edges": edges, "exact_cell": str(cell), "exact_cell_nb201": table.lookup(cell)["cifar10"],
            "exact_paths": n_paths}


def bn_path_statistics(held: tuple[Any, Any, Any, Any], model: Any, arch: Any) -> dict[str, Any]:
    """The BatchNorm statistics of path ``arch`` in the finished supernet ``model``, on the search's held-out split
    (``held``, as ``held_out`` gives it).

    Per BatchNorm layer on the path: the batch mean and variance of its input (H images) against its running
    statistics, which the weight steps accumulated over every path they sampled. Returns the layer count, the mean
    over layers of |batch mean - running mean| / running std (averaged over channels), of |log(batch var /
    running var)|, and the held-out loss with running statistics (eval mode) and with batch statistics (train
    mode, as architecture steps and the measured derivation use; running statistics left untouched).
    """
    import torch

    from dfnas.search.bn import frozen_running_stats

    _, criterion, x, y = held
    model.set_path(arch)
    shift: list[float] = []
    log_var: list[float] = []

    def hook(bn: Any, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        a = inputs[0].detach()  # (H, C, h, w) on the path; layers off the path do not run
        mean, var = a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=False)  # (C,)
        shift.append(float(((mean - bn.running_mean).abs() / (bn.running_var + bn.eps).sqrt()).mean()))
        log_var.append(float(((var + bn.eps).log() - (bn.running_var + bn.eps).log()).abs().mean()))

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None]
    handles = [m.register_forward_hook(hook) for m in bns]
    with torch.no_grad():
        model.eval()
        try:
            loss_running = float(criterion(model(x), x, y))
        finally:  # the hooks must not outlive this measurement
            for h in handles:
                h.remove()
        model.train()
        with frozen_running_stats(model):
            loss_batch = float(criterion(model(x), x, y))
    return {"bn_layers": len(shift), "bn_mean_shift": round(sum(shift) / max(1, len(shift)), 4),
            "bn_log_var_ratio": round(sum(log_var) / max(1, len(log_var)), 4),
            "held_out_loss_running_stats": round(loss_running, 4), "held_out_loss_batch_stats": round(loss_batch, 4)}


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
               "groups": groups, "cells": cells, "environment": reporting.environment()}
    lines = [f"# ProxylessNAS diagnosis ({budget_name} budget)\n",
             "ProxylessNAS on NAS-Bench-201 at the search-quality budget (500 images per source, C=8 N=1, 210 weight "
             "steps, the last two thirds with an arch step each). Per op, summed over the six edges and the search: "
             "the estimator's dL/dalpha (negative = pushed up) and mean gate gradient dL/dg; the largest spread "
             "max - min of softmax(alpha) over the edges at the end (uniform = 0); the held-out accuracy of the "
             "derived path at the end; how many of the found cell's six edges are parameter-free "
             "(none / skip / pool).\n",
             "## Found cells\n"]
    rows = [[g["variant"], SOURCES[g["source"]].label, reporting.fmt_pm(g["acc"]),
             ", ".join(str(n) for n in g["parameter_free_edges"]),
             ", ".join(f"{x:.3f}" for x in g["final_prob_spread"]),
             ", ".join(f"{x:.1f}" for x in g["final_held_out_acc"])] for g in groups]
    lines.append(reporting.md_table(["variant", "source", "NB201 CIFAR-10 (mean ± std)",
                                     "parameter-free edges per seed", "softmax(alpha) spread per seed",
                                     "held-out acc. per seed"], rows))
    lines.append("\n## Summed dL/dalpha per op (mean over seeds; negative = the estimator raises the op)\n")
    lines.append(reporting.md_table(["variant", "source", *OPS],
                                 [[g["variant"], SOURCES[g["source"]].label,
                                   *(f"{g['alpha_grad_sum_mean'][o]:+.2f}" for o in OPS)] for g in groups]))
    lines.append("\n## Mean estimator signal per op (mean over seeds): the gate gradient dL/dg, or for `loss_diff` "
                 "the held-out loss measured with the op on its edge (lower = the op fits better)\n")
    lines.append(reporting.md_table(["variant", "source", *OPS],
                                 [[g["variant"], SOURCES[g["source"]].label,
                                   *(f"{g['gate_grad_mean'][o]:+.4f}" for o in OPS)] for g in groups]))
    lines += exact_section(cells)
    return summary, "\n".join(lines)


def exact_section(cells: list[dict[str, Any]]) -> list[str]:
    """Markdown of the supernet measured without the estimator (cells with ``exact_cell``), per variant and
    source: the search's cell against the cell of each edge's lowest held-out loss, and per op its mean loss
    relative to the edge's mean (over edges and seeds) with the paired spread of one path."""
    out: list[str] = []
    for v in VARIANTS:
        for s in SOURCES:
            cs = sorted((c for c in cells if c["variant"] == v and c["source"] == s and "exact_cell" in c),
                        key=lambda c: c["seed"])
            if not cs:
                continue
            if not out:
                out += ["\n## The trained supernet without the estimator\n",
                        f"Per edge, the held-out loss of the finished supernet with each op on the edge, averaged "
                        f"over {cs[0]['exact_paths']} random choices of the other edges (the same for every op); "
                        "'lowest-loss cell': each edge's op of lowest mean loss. 'op − edge mean': that op's mean "
                        "loss minus the edge's mean over its ops, averaged over edges and seeds (negative = fits "
                        "better); 'paired sd': the spread of one path's op − path-mean difference (a ranking of "
                        "two ops needs ~(sd / gap)^2 paths).\n"]
            gap = {o: sum(e["mean_loss"][i] - sum(e["mean_loss"]) / len(e["mean_loss"])
                          for c in cs for e in c["exact_edges"].values() for i, oo in enumerate(e["options"])
                          if oo == o) / (len(cs) * len(cs[0]["exact_edges"])) for o in OPS}
            sd = {o: sum(e["paired_sd"][i] for c in cs for e in c["exact_edges"].values()
                         for i, oo in enumerate(e["options"]) if oo == o) / (len(cs) * len(cs[0]["exact_edges"]))
                  for o in OPS}
            out.append(f"**{v}, {SOURCES[s].label}** (seeds {', '.join(str(c['seed']) for c in cs)})\n")
            out.append(reporting.md_table(
                ["", "NB201 CIFAR-10 per seed", "mean ± std"],
                [["search's cell", ", ".join(f"{c['nb201_cifar10']:.2f}" for c in cs),
                  reporting.fmt_pm([c["nb201_cifar10"] for c in cs])],
                 ["lowest-loss cell", ", ".join(f"{c['exact_cell_nb201']:.2f}" for c in cs),
                  reporting.fmt_pm([c["exact_cell_nb201"] for c in cs])]]))
            out.append("")
            out.append(reporting.md_table(["", *OPS], [["op − edge mean", *(f"{gap[o]:+.4f}" for o in OPS)],
                                                    ["paired sd", *(f"{sd[o]:.4f}" for o in OPS)]]))
            out.append("")
            if all("bn_layers" in c for c in cs):
                out.append("BatchNorm statistics of the search's cell on its path (per seed): running against batch "
                           "statistics on the held-out images (mean over the path's layers and channels), and the "
                           "held-out loss with each\n")
                out.append(reporting.md_table(
                    ["seed", "BN layers", "abs(Δmean) / running std", "abs(log(var / running var))",
                     "loss, running stats", "loss, batch stats"],
                    [[c["seed"], c["bn_layers"], f"{c['bn_mean_shift']:.2f}", f"{c['bn_log_var_ratio']:.2f}",
                      f"{c['held_out_loss_running_stats']:.2f}", f"{c['held_out_loss_batch_stats']:.2f}"]
                     for c in cs]))
                out.append("")
    return out


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Per source of the base variant (else of the first variant with cells): cumulative summed dL/dalpha per op
    over the epochs (mean over seeds)."""
    plt = reporting.pyplot()
    variant = next((v for v in VARIANTS if any(c["variant"] == v for c in summary["cells"])), "base")
    cells = [c for c in summary["cells"] if c["variant"] == variant]
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
    fig.suptitle(f"ProxylessNAS: which ops the estimator favours ({summary['budget']} budget, {variant} variant)",
                 fontsize=10)
    fig.tight_layout()
    return reporting.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(sq.BUDGETS))
    p.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: the budget's)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
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
    if not args.summary_only:  # the summary keeps every variant's stored cells; only the asked ones run
        datasets: dict[str, Any] = {}
        for s, v, k in grid:
            if v not in variants or store.get(s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k)) is not None:
                continue
            if s not in datasets:
                datasets[s], _ = common.prepare_source(s, budget.data, work, not args.quiet)
            common.log(f"cell source={s} variant={v} seed={k}")
            rec = run_cell(datasets[s], s, v, k, budget, runs, table, not args.quiet)
            store.put(rec, s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k))
            common.log(f"  found {rec['arch']} -> {rec['nb201_cifar10']:.2f}%")
        for s, v, k in grid:  # cells stored before the BatchNorm measurement: measured on their finished run
            rec = store.get(s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k))
            if v in variants and v in EXACT_VARIANTS and rec is not None and "bn_layers" not in rec:
                if s not in datasets:
                    datasets[s], _ = common.prepare_source(s, budget.data, work, not args.quiet)
                store.put(with_bn_statistics(rec, datasets[s], budget, runs), s, v, f"seed{k}",
                          cell_hash=cell_hash(budget, v, k))
    # every finished cell of the budget, not only this invocation's seeds, so pieces run apart add up to one report
    cells = [c for v, (_, srcs) in VARIANTS.items() for s in srcs for k in sorted(set(seeds) | store.seeds())
             if (c := store.get(s, v, f"seed{k}", cell_hash=cell_hash(budget, v, k)))]
    summary, md = summarize(cells, args.budget)
    reporting.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "ProxylessNAS diagnosis",
                   f"{len(cells)} of {len(grid)} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
