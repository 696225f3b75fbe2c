"""The training-free part of ``ranking_consistency.py`` (``--zerocost``): zero-cost proxies as rankers.

For every data source, on the source's training split (the split the stand-alone and SPOS rankers train on):

1. *ranking*: every zero-cost proxy (``dfnas.search.zerocost``) scores the benchmark's stratified cells (the
   networks C=8 N=1 of the budget, freshly initialized from (seed, cell), one batch of 64 images); Kendall tau
   and Spearman rho against the NAS-Bench-201 CIFAR-10 test accuracy;
2. *large sample*: a few cheap proxies on 1,000 cells (stratified, seed 1) for a few sources, where 30 cells
   give a tau a standard error of about 0.13 and 1,000 cells about 0.02;
3. *search*: ``dfnas.search.run_search`` with the training-free methods (100 candidates, 3 seeds) on the
   source's dataset (the search scores on its training half, as every method); NAS-Bench-201 accuracy of
   the found cell.

Resumable: one JSON per (source, cell), per (source, chunk of the large sample) and per (source, proxy, seed)
search under ``<work>/<budget>/ranking_consistency/cells/<source>/zerocost*``. Writes
``ranking_consistency_zerocost_<budget>.{json,md,png}`` (the main benchmark's outputs are not touched).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import reporting
import torch
from common import SOURCES


@dataclass(frozen=True)
class ZcBudget:
    batch_size: int  # images per proxy batch
    batches: int  # batches per cell
    proxies: tuple[str, ...]  # rankers of part 1
    large_n: int  # cells of the large sample (part 2)
    large_sources: tuple[str, ...]
    large_proxies: tuple[str, ...]
    search_sources: tuple[str, ...]  # part 3
    search_proxies: tuple[str, ...]  # zerocost.proxy of each search ("a+b": sum of ranks)
    candidates: int
    seeds: tuple[int, ...]


ALL_PROXIES = ("naswot", "synflow", "jacob_cov", "snip", "grad_norm", "params", "flops")
ZC_BUDGETS = {
    "smoke": ZcBudget(8, 1, ALL_PROXIES, 12, ("full",), ("naswot", "synflow"), ("full",), ("naswot",), 6, (0,)),
    "cpu": ZcBudget(64, 1, ALL_PROXIES, 1000, ("full", "generator", "real", "noise"),
                    ("naswot", "synflow", "params", "flops"), ("full", "generator", "real", "noise"),
                    ("naswot", "synflow", "naswot+synflow"), 100, (0, 1, 2)),
}
LARGE_SEED = 1  # the large sample's stratified draw (the 30 cells use the budget's cell_seed)
# combined rankers (sum of the parts' ranks, as zerocost.proxy="a+b"), computed from the stored scores
COMBOS = ("naswot+synflow", "naswot+synflow+jacob_cov")
CHUNK = 100  # cells per resume unit of the large sample
BAR_TAU, BAR_ACC = 0.6, 93.5  # the bar of the issue: tau on a data-free source, found-cell accuracy


def zc_budget(budget_name: str) -> ZcBudget:
    return ZC_BUDGETS["smoke" if budget_name == "smoke" else "cpu"]  # proxies do not train: cpu_long = cpu


# the ZcBudget fields each part's results depend on (sources, proxy and seed lists only say what to run)
_PART_FIELDS = {"rank": ("batch_size", "batches", "proxies"),
                "large": ("batch_size", "batches", "large_n", "large_proxies"),
                "search": ("batch_size", "batches", "candidates")}


def _hash(budget: Any, zb: ZcBudget, part: str) -> str:
    keep = {k: v for k, v in budget.as_dict().items() if k not in ("train", "spos_loop", "bn_batches")}
    return common.stable_hash({"part": part, "budget": keep, **{f: getattr(zb, f) for f in _PART_FIELDS[part]}})


def _space(budget: Any, ds: Any) -> Any:
    from dfnas.spaces import build_space

    return build_space("nb201", num_classes=ds.num_classes, input_size=ds.input_size, **budget.space)


def _batches(train: Any, budget: Any, zb: ZcBudget, proxies: tuple[str, ...]) -> list[Any]:
    from dfnas.repro import make_generator
    from dfnas.search.zerocost import proxy_batches

    return proxy_batches(train, zb.batch_size, zb.batches, make_generator(budget.seed, "zerocost-bench", "batches"),
                         "cpu", proxies, what="the source's training split")


def _scores(space: Any, archs: list[Any], proxies: tuple[str, ...], batches: list[Any], seed: int) -> list[dict]:
    from dfnas.search.zerocost import score_arch
    from dfnas.search.zerocost.scoring import finite_or_none

    out = []
    for a in archs:
        t0 = time.perf_counter()
        s = score_arch(space, a, proxies, batches, seed)
        out.append({"scores": {k: finite_or_none(v) for k, v in s.items()}, "seconds": time.perf_counter() - t0})
    return out


def _correlate(gt: list[float], vals: list[float | None], correlations: Callable[..., dict]) -> dict[str, Any]:
    from dfnas.search.zerocost.scoring import from_json_score, ranks

    # -inf (a cell the proxy cannot tell apart from a constant network) ranks lowest, ties shared
    return correlations(gt, ranks([from_json_score(v) for v in vals]))


def _rankers(recs: list[dict], proxies: tuple[str, ...]) -> dict[str, list[float | None]]:
    """Each proxy's scores over ``recs``, plus the combined rankers whose parts were all scored."""
    from dfnas.search.zerocost import combined_scores
    from dfnas.search.zerocost.scoring import from_json_score

    out: dict[str, list[float | None]] = {p: [r["scores"][p] for r in recs] for p in proxies}
    for combo in COMBOS:
        parts = combo.split("+")
        if set(parts) <= set(proxies):
            scores = [{p: from_json_score(r["scores"][p]) for p in parts} for r in recs]
            out[combo] = list(combined_scores(scores, parts))
    return out


def run(args: Any, budget: Any, archs: list[Any], cells: list[dict], sources: list[str], work: Path, out: Path,
        table: Any, split: Callable[[Any, Any], tuple[Any, Any]], correlations: Callable[..., dict]) -> int:
    """Compute what is missing (unless --summary-only), then write the zero-cost summary."""
    zb = zc_budget(args.budget)
    store = common.CellStore(work / "ranking_consistency" / "cells")
    runs = work / "ranking_consistency" / "runs"
    h_rank, h_large, h_search = (_hash(budget, zb, p) for p in ("rank", "large", "search"))
    # one cell per 1/1,000 of the accuracy ranking; isomorphic cells allowed (the weak tail has strata where
    # every cell computes one function, so distinct functions cannot fill 1,000 strata)
    large = table.sample_stratified(zb.large_n, torch.Generator().manual_seed(LARGE_SEED), distinct=False)
    chunks = [large[i:i + CHUNK] for i in range(0, len(large), CHUNK)]
    for s in sources if not args.summary_only else []:
        ds, info = common.prepare_source(s, budget.data, work, not args.quiet)
        common.put_source_info(work / "ranking_consistency", s, info)
        train, _ = split(ds, budget)
        space = _space(budget, ds)
        todo = [i for i in range(len(archs)) if store.get(s, "zerocost", f"cell{i:02d}", cell_hash=h_rank) is None]
        if todo:
            t0 = time.perf_counter()
            batches = _batches(train, budget, zb, zb.proxies)
            for i in todo:
                rec = _scores(space, [archs[i]], zb.proxies, batches, budget.seed)[0]
                store.put({"source": s, "index": i, "arch": str(archs[i]), **rec}, s, "zerocost", f"cell{i:02d}",
                          cell_hash=h_rank)
            common.log(f"{s}: {len(todo)} cells x {len(zb.proxies)} proxies in {time.perf_counter() - t0:.0f} s")
        if s in zb.large_sources:
            batches = _batches(train, budget, zb, zb.large_proxies)
            for j, chunk in enumerate(chunks):
                if store.get(s, "zerocost_large", f"chunk{j:02d}", cell_hash=h_large) is None:
                    t0 = time.perf_counter()
                    recs = _scores(space, chunk, zb.large_proxies, batches, budget.seed)
                    store.put({"source": s, "archs": [str(a) for a in chunk], "records": recs}, s, "zerocost_large",
                              f"chunk{j:02d}", cell_hash=h_large)
                    common.log(f"{s}: large sample chunk {j + 1}/{len(chunks)} in {time.perf_counter() - t0:.0f} s")
        if s in zb.search_sources:
            _searches(s, ds, budget, zb, store, runs, h_search, args.quiet)
    summary, md = summarize(args.budget, budget, zb, cells, large, table, store, (h_rank, h_large, h_search),
                            correlations)
    reporting.publish(out, f"ranking_consistency_zerocost_{args.budget}", summary, md, plot,
                   "zero-cost proxies against NAS-Bench-201")
    return 0


def _searches(s: str, ds: Any, budget: Any, zb: ZcBudget, store: common.CellStore, runs: Path, h: str,
              quiet: bool) -> None:
    """The training-free search of the library, per proxy and seed, on the source's whole dataset."""
    from dfnas.search import run_search

    for proxy in zb.search_proxies:
        for seed in zb.seeds:
            key = f"{proxy.replace('+', '_')}-seed{seed}"
            if store.get(s, "zerocost_search", key, cell_hash=h) is not None:
                continue
            cfg = {"method": "zerocost", "seed": seed, "device": "cpu",
                   "space": {"name": "nb201", "options": dict(budget.space)},
                   "zerocost": {"proxy": proxy, "candidates": zb.candidates, "batch_size": zb.batch_size,
                                "batches": zb.batches}}
            res = run_search(cfg, ds, runs / s / "zerocost_search" / common.run_name(key, h), device="cpu",
                             progress=not quiet)
            r = res.result
            store.put({"source": s, "proxy": proxy, "seed": seed, "arch": r["arch_str"],
                       "nb201_cifar10": (r.get("nb201") or {}).get("cifar10"),
                       "nb201_percentile": (r.get("nb201") or {}).get("percentile"),
                       "search_time_s": r["search_time_s"]}, s, "zerocost_search", key, cell_hash=h)
            common.log(f"{s}: {proxy} search seed {seed}: {r['arch_str']} "
                       f"({(r.get('nb201') or {}).get('cifar10')} %) in {r['search_time_s']:.0f} s")


def summarize(budget_name: str, budget: Any, zb: ZcBudget, cells: list[dict], large: list[Any], table: Any,
              store: common.CellStore, hashes: tuple[str, str, str], correlations: Callable[..., dict]
              ) -> tuple[dict[str, Any], str]:
    h_rank, h_large, h_search = hashes
    gt = [c["nb201_cifar10"] for c in cells]
    gt_large = [table.lookup(a)["cifar10"] for a in large]
    fmt = reporting.fmt_pm
    rank: dict[str, Any] = {}
    big: dict[str, Any] = {}
    search: dict[str, Any] = {}
    for s in SOURCES:
        recs = [store.get(s, "zerocost", f"cell{i:02d}", cell_hash=h_rank) for i in range(len(cells))]
        if all(r is not None for r in recs):
            vals = _rankers([r for r in recs if r], zb.proxies)
            rank[s] = {p: {**_correlate(gt, v, correlations), "scores": v} for p, v in vals.items()}
            rank[s]["seconds_per_cell"] = sum(r["seconds"] for r in recs if r) / len(recs)
        chunks = [store.get(s, "zerocost_large", f"chunk{j:02d}", cell_hash=h_large)
                  for j in range(-(-len(large) // CHUNK))]
        if all(c is not None for c in chunks):
            recs_l = [r for c in chunks if c for r in c["records"]]
            big[s] = {p: _correlate(gt_large, v, correlations)
                      for p, v in _rankers(recs_l, zb.large_proxies).items()}
        found = {p: [store.get(s, "zerocost_search", f"{p.replace('+', '_')}-seed{k}", cell_hash=h_search)
                     for k in zb.seeds] for p in zb.search_proxies}
        done = {p: [r for r in v if r] for p, v in found.items() if all(r is not None for r in v)}
        if done:
            search[s] = {p: {"accs": [r["nb201_cifar10"] for r in v], "archs": [r["arch"] for r in v],
                             "search_time_s": [r["search_time_s"] for r in v]} for p, v in done.items()}
    summary = {"benchmark": "ranking_consistency_zerocost", "budget": budget_name, "zerocost": asdict(zb),
               "cells": cells, "rank": rank, "large_sample": {"n": len(large), "seed": LARGE_SEED, "stats": big},
               "search": search, "bar": {"kendall_tau": BAR_TAU, "found_acc": BAR_ACC},
               "environment": reporting.environment()}
    lines = [f"# Zero-cost proxies as rankers ({budget_name} budget)\n",
             f"Training-free: each proxy scores the untrained network (NB201 C={budget.space.get('C')} "
             f"N={budget.space.get('N')}, initialized from (seed {budget.seed}, cell)) on {zb.batches} batch(es) "
             f"of {zb.batch_size} images of the source's training split. τ = Kendall tau-b, ρ = Spearman rho "
             "against the NAS-Bench-201 CIFAR-10 test accuracy; a cell a proxy cannot score (−∞: e.g. an output "
             "that does not depend on the input) ranks lowest.\n",
             f"## {len(cells)} stratified cells (the cells of the trained rankers)\n"]
    rows = [[SOURCES[s].label] + [f"{rank[s][p]['kendall_tau']:.2f} / {rank[s][p]['spearman_rho']:.2f}"
                                  for p in _names(rank)] + [f"{rank[s]['seconds_per_cell']:.2f}"] for s in rank]
    lines.append(reporting.md_table(["source"] + [f"{p} τ / ρ" for p in _names(rank)] + ["s per cell (all)"], rows))
    lines.append(f"\n## Large sample: {len(large)} stratified cells (seed {LARGE_SEED})\n")
    rows = [[SOURCES[s].label] + [f"{big[s][p]['kendall_tau']:.3f} / {big[s][p]['spearman_rho']:.3f}"
                                  for p in _names(big)] for s in big]
    lines.append(reporting.md_table(["source"] + [f"{p} τ / ρ" for p in _names(big)], rows))
    lines.append(f"\n## Training-free search: NB201 CIFAR-10 accuracy of the found cell ({zb.candidates} "
                 f"candidates, seeds {list(zb.seeds)}; mean ± std)\n")
    procs = list(zb.search_proxies)
    rows = [[SOURCES[s].label] + [fmt(search[s][p]["accs"]) if p in search[s] else "–" for p in procs]
            for s in search]
    lines.append(reporting.md_table(["source"] + procs, rows))
    same = [p for p in procs if len({tuple(search[s][p]["archs"]) for s in search if p in search[s]}) == 1]
    if len(search) > 1 and same:
        lines.append(f"\nWith {', '.join(same)}, every source finds the very same cell for each seed: the search's "
                     "outcome does not depend on the images.\n")
    lines.append(f"\n## Bar: τ ≥ {BAR_TAU} on a data-free source and a found cell ≥ {BAR_ACC} % (mean of 3 seeds)\n")
    rows = []
    for s in search:  # τ from the large sample where it was run, else from the 30 cells
        stats, n = (big[s], len(large)) if s in big else (rank.get(s, {}), len(cells))
        for p in procs:
            if p in search[s] and p in stats:
                tau, (m, _) = stats[p]["kendall_tau"], reporting.mean_std(search[s][p]["accs"])
                met = "yes" if tau >= BAR_TAU and m >= BAR_ACC else "no"
                rows.append([SOURCES[s].label, p, f"{tau:.3f} ({n} cells)", f"{m:.2f}", met])
    lines.append(reporting.md_table(["source", "ranker / search proxy", "τ", "found cell (%)", "bar met"], rows))
    return summary, "\n".join(lines)


def _names(stats: dict[str, dict[str, Any]]) -> list[str]:
    """The rankers of a stats table (the same for every source), in their order."""
    first = next(iter(stats.values()), {})
    return [k for k, v in first.items() if isinstance(v, dict)]


def plot(summary: dict[str, Any], path: Path) -> Path:
    """NASWOT score against NB201 accuracy per source (the 30 cells)."""
    plt = reporting.pyplot()
    srcs = list(summary["rank"]) or ["-"]
    gt = [c["nb201_cifar10"] for c in summary["cells"]]
    fig, axes = plt.subplots(1, len(srcs), figsize=(2.4 * len(srcs) + 0.6, 2.6), squeeze=False)
    for ax, s in zip(axes[0], srcs, strict=True):
        st = summary["rank"].get(s, {}).get("naswot")
        if st is None:
            ax.set_axis_off()
            continue
        pts = [(g, v) for g, v in zip(gt, st["scores"], strict=True) if v is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10)
        ax.set_title(f"{SOURCES[s].label}\nNASWOT τ={st['kendall_tau']:.2f}", fontsize=7)
        ax.set_xlabel("NB201 CIFAR-10 acc. (%)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("NASWOT log|K_H|", fontsize=7)
    return reporting.save_figure(fig, path)
