"""Search quality by data source: does searching on the teacher's synthetic images find good cells?

For every data source (real JPEG images with true labels, full synthesis, its two ablations, plain
inversion, Gaussian noise with random labels, real images with random labels) and every search method
(DARTS with the beta-decay collapse remedy, plain DARTS, ProxylessNAS, SPOS) and seed, one architecture
search on NAS-Bench-201 at one fixed CPU budget; the found cell is scored by its NAS-Bench-201 ground truth
(CIFAR-10 test accuracy after 200 epochs at C=16, N=5). Every source has the same number of images and every
search the same settings; datasets are made once per source and shared by all methods and seeds.

    python benchmarks/search_quality.py --budget smoke            # end-to-end check, ~minutes
    python benchmarks/search_quality.py --budget cpu              # the real grid (hours on 2 cores)
    python benchmarks/search_quality.py --budget cpu --sources full,plain --methods spos --seeds 0,1

Resumable: each (source, method, seed) result is one JSON under benchmarks/_work/<budget>/search_quality/
cells/; rerunning skips finished cells (and an interrupted search resumes from its checkpoint). Writes
search_quality_<budget>.{json,md,png} into --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import costs  # noqa: E402
import reporting  # noqa: E402
import search_quality_report as report  # noqa: E402
from common import SOURCES  # noqa: E402
from search_quality_grid import BUDGETS, METHODS, NAME, Budget  # noqa: E402


def search_config(budget: Budget, method: str, seed: int) -> dict[str, Any]:
    """The full SearchConfig dict of one cell."""
    cfg = common.deep_merge(budget.search, METHODS[method].config)
    return {**cfg, "seed": seed, "device": "cpu", "space": {"name": "nb201", "options": dict(budget.space)}}


def resolved_search_config(budget: Budget, method: str, seed: int) -> dict[str, Any]:
    """The cell's SearchConfig as its run directory records it (library defaults filled in), less the option
    blocks of the methods that do not run."""
    from dfnas.config import from_dict
    from dfnas.search import SearchConfig

    return from_dict(SearchConfig, search_config(budget, method, seed), "search").resolved(only_active_method=True)


def cell_hash(budget: Budget, method: str, seed: int) -> str:
    # hashed after resolution: a changed library default (not only a changed budget) makes the cell stale; a cell
    # on another cell's supernet is stale with it (its hash, not its run directory's path, enters)
    donor = METHODS[method].supernet_of
    return common.stable_hash({"data": budget.data.as_dict(), "search": resolved_search_config(budget, method, seed),
                               **({"supernet_of": cell_hash(budget, donor, seed)} if donor else {})})


def cell_run_dir(runs: Path, source: str, method: str, seed: int, budget: Budget) -> Path:
    """The run directory of one cell."""
    return runs / source / method / common.run_name(f"seed{seed}", cell_hash(budget, method, seed))


# ----------------------------------------------------------------------------------------------------------
# cost model (up-front estimate)
# ----------------------------------------------------------------------------------------------------------

def cell_estimate(budget: Budget, method: str, cal: costs.Calibration) -> float:
    """Seconds one search should take on this machine, from the calibrated per-image costs."""
    from dfnas.config import from_dict
    from dfnas.search import SearchConfig

    cfg = from_dict(SearchConfig, search_config(budget, method, 0), "search")
    n = budget.data.n_images
    n_held = int(round(n * cfg.held_out))
    n_train = n - n_held
    bs = min(cfg.batch_size, n_train)
    planned = cfg.loop().epochs  # the method's default when the budget leaves epochs unset
    per_epoch = max(1, n_train // bs)  # weight steps per epoch (the loop drops the last partial batch)
    steps = planned * per_epoch
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    epochs = min(planned, -(-steps // per_epoch))
    n_eval = n_held if cfg.eval_max_batches is None else min(n_held, cfg.eval_max_batches * 256)
    m = cfg.method
    # single-path weight steps: one path, or with strict-fairness sampling (SPOS and ProxylessNAS `sampling:
    # fair`) every option of each edge once (NB201: five options per edge)
    paths = 5 if getattr(cfg.method_options(), "sampling", None) == "fair" else 1
    if m == "darts":
        # architecture step on a held-out batch + weight step, both through the weighted supernet
        train = steps * bs * 2 * cal.supernet_step
        return train + epochs * n_eval * cal.supernet_step / 3
    if m == "proxyless":
        # weight step on `paths` paths; the architecture step (after the warm-up) runs the two sampled paths of
        # every decision
        w = cfg.proxyless.warmup_epochs  # None: the first third of the steps (ProxylessMethod.wants_arch_step)
        warm_steps = steps // 3 if w is None else min(w * per_epoch, steps)
        arch_steps = steps - warm_steps
        train = (paths * steps + 2 * arch_steps) * bs * cal.path_step
        # derive: measured: every option of every decision on derive_paths draws of the others, on n_eval images
        measured = 0.0
        if cfg.proxyless.derive == "measured":
            from dfnas.spaces.nb201 import NB201Space

            dec = list(NB201Space.decisions().values())
            measured = len(dec) * len(dec[0]) * cfg.proxyless.derive_paths * n_eval * cal.path_eval
            if cfg.proxyless.derive_weights == "both":  # measured twice, then two whole cells scored
                measured = 2 * measured + 2 * n_eval * cal.path_eval
        if METHODS[method].supernet_of is not None:  # the supernet is another cell's: counted there
            return measured
        return train + epochs * n_eval * cal.path_eval + measured
    o = cfg.spos
    n_score = n_held if o.eval_batches is None else min(n_held, o.eval_batches * 256)
    candidates = o.population * o.generations  # an upper bound: repeated candidates are not rescored
    evolution = candidates * (o.bn_batches * bs + n_score) * cal.path_eval
    evolution += o.rerank_top * (o.rerank_steps * bs * cal.path_step + n_held * cal.path_eval)
    if METHODS[method].supernet_of is not None:  # the supernet is another cell's: counted there
        return evolution
    return steps * bs * paths * cal.path_step + evolution


# ----------------------------------------------------------------------------------------------------------
# running cells
# ----------------------------------------------------------------------------------------------------------

def run_cell(ds: Any, source: str, method: str, seed: int, budget: Budget, runs: Path, table: Any,
             progress: bool) -> dict[str, Any]:
    """One architecture search; returns the cell record (found cell, its ground truth, timing)."""
    from dfnas.search import run_search

    t0 = time.perf_counter()
    load0 = common.load_average()
    cfg = search_config(budget, method, seed)
    if (donor := METHODS[method].supernet_of) is not None:
        # the donor cell's search (returned at once when finished; else it runs here and its own cell adopts it)
        donor_dir = run_search(search_config(budget, donor, seed), ds, cell_run_dir(runs, source, donor, seed, budget),
                               device="cpu", progress=progress).out_dir
        m = cfg["method"]
        cfg[m] = {**cfg.get(m, {}), "supernet_from": str(donor_dir)}
    res = run_search(cfg, ds, cell_run_dir(runs, source, method, seed, budget), device="cpu", progress=progress)
    gt = table.lookup(res.arch)
    r = res.result
    return {
        "source": source, "method": method, "seed": seed, "arch": str(res.arch),
        "nb201_cifar10": gt["cifar10"], "nb201_cifar100": gt["cifar100"], "nb201_imagenet16": gt["imagenet16"],
        "nb201_index": gt["index"], "nb201_percentile": gt["percentile"],
        "search_time_s": r.get("search_time_s"), "wall_s": round(time.perf_counter() - t0, 2),
        "weight_steps": r.get("weight_steps"), "final_held_out": r.get("final_held_out"),
        "macs": r.get("macs"), "params": r.get("params"), "spos": r.get("spos"),
        "load_average_1min": [load0, common.load_average()], "run_dir": str(res.out_dir),
        **({"prefilter": prefilter_record(r["prefilter"], table)} if r.get("prefilter") else {}),
        # a capped derivation (darts.max_skip) also records the cell the same search gives without the cap
        **({"uncapped": {"arch": r["darts"]["arch_uncapped"],
                         "nb201_cifar10": table.lookup(r["darts"]["arch_uncapped"])["cifar10"]}}
           if r.get("darts") else {}),
    }


def prefilter_record(pf: dict[str, Any], table: Any) -> dict[str, Any]:
    """What the zero-cost pre-filter left and what it scores alone: its own best-scored cell, and a uniformly
    random cell of the restricted space (mean and best over all of its cells, from the ground truth)."""
    import itertools

    from dfnas.spaces.base import Arch

    allowed = pf["allowed"]
    accs = [table.lookup(Arch.of("nb201", dict(zip(allowed, combo, strict=True))))["cifar10"]
            for combo in itertools.product(*allowed.values())]
    return {"allowed": allowed, "best_candidate": pf["best_candidate"],
            "best_candidate_nb201": pf["best_candidate_nb201"]["cifar10"],
            "space_cells": len(accs), "space_mean_nb201": sum(accs) / len(accs), "space_best_nb201": max(accs)}


# ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(BUDGETS))
    common.add_sources_arg(p)
    p.add_argument("--methods", default="all", help=f"comma-separated subset of {list(METHODS)}")
    p.add_argument("--seeds", default=None, help="e.g. 0,1,2 or 0-4 (default: the budget's)")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = BUDGETS[args.budget]
    sources = common.chosen_sources(args)
    methods = common.parse_subset(args.methods, list(METHODS), "methods")
    seeds = common.parse_seeds(args.seeds) if args.seeds else list(budget.seeds)
    store = common.CellStore(work / NAME / "cells")
    common.adopt_published(store, common.RESULTS_DIR / f"{NAME}_{args.budget}.json",
                           lambda c: (c["source"], c["method"], f"seed{c['seed']}"), work / NAME)
    runs = work / NAME / "runs"
    progress = not args.quiet

    from dfnas.spaces.nb201_table import NB201Table

    table = NB201Table.load()
    todo = [(s, m, k) for s in sources for m in methods for k in seeds
            if store.get(s, m, f"seed{k}", cell_hash=cell_hash(budget, m, k)) is None]
    if not args.summary_only and (todo or args.estimate_only):
        common.log(f"{NAME} [{args.budget}]: {len(sources)} sources x {len(methods)} methods x {len(seeds)} seeds; "
                   f"{len(todo)} cells to run. Calibrating the cost model ...")
        cals = costs.calibrate(budget.space, int(budget.search["batch_size"]),
                                need_teacher=any(SOURCES[s].kind == "synthesis" for s, _, _ in todo))
        for what, fn in (
                ("datasets", lambda c: costs.synthesis_estimate({s for s, _, _ in todo}, budget.data, work, c)),
                *((f"one {m} search", lambda c, m=m: cell_estimate(budget, m, c)) for m in methods),
                ("all searches", lambda c: sum(cell_estimate(budget, m, c) for _, m, _ in todo)),
                ("total", lambda c: costs.synthesis_estimate({s for s, _, _ in todo}, budget.data, work, c)
                 + sum(cell_estimate(budget, m, c) for _, m, _ in todo))):
            common.log(f"estimate, {what}: {costs.estimate_line(fn, cals)}")
        cal = cals[0]
        per_method = {m: cell_estimate(budget, m, cal) for m in methods}
        search_s = sum(per_method[m] for _, m, _ in todo)
        if args.estimate_only:
            return 0
        eta = common.Eta(search_s)
        data_info: dict[str, Any] = {}
        for s in sources:
            todo_s = [(m, k) for ss, m, k in todo if ss == s]
            if not todo_s:
                continue
            ds, data_info[s] = common.prepare_source(s, budget.data, work, progress)
            common.put_source_info(work / NAME, s, data_info[s])
            for m, k in todo_s:
                common.log(f"cell source={s} method={m} seed={k}")
                t0 = time.perf_counter()
                rec = run_cell(ds, s, m, k, budget, runs, table, progress)
                store.put(rec, s, m, f"seed{k}", cell_hash=cell_hash(budget, m, k))
                common.log(f"  found {rec['arch']} -> {rec['nb201_cifar10']:.2f}% "
                           f"({rec['nb201_percentile']:.1f} pct); {eta.done(per_method[m], time.perf_counter() - t0)}")
    # the summary covers every finished cell of this budget (every seed in the store, adopted ones included), not
    # only this invocation's subset, so the grid can be run in pieces (or in parallel processes) and the last
    # piece writes the complete report
    all_seeds = sorted(set(seeds) | set(budget.seeds) | store.seeds())
    cells = [c for s in SOURCES for m in METHODS for k in all_seeds
             if (c := store.get(s, m, f"seed{k}", cell_hash=cell_hash(budget, m, k))) is not None]
    shown_s = [s for s in SOURCES if any(c["source"] == s for c in cells)]
    shown_m = [m for m in METHODS if any(c["method"] == m for c in cells)]
    info = {s: common.get_source_info(work / NAME, s) for s in shown_s}
    summary, md = report.summarize(cells, args.budget, budget, table, shown_s, shown_m, info)
    n_grid = len(common.grid_sources()) * len(METHODS) * len(budget.seeds)
    reporting.publish(out, f"{NAME}_{args.budget}", summary, md, report.plot, "search quality",
                   f"{sum(c['source'] in common.grid_sources() for c in cells)} of the grid's {n_grid} cells, "
                   f"{sum(c['source'] not in common.grid_sources() for c in cells)} control cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
