"""Ranking consistency: does a short training on each data source rank NAS-Bench-201 cells like the benchmark?

Samples cells spread over the whole NAS-Bench-201 accuracy range (``NB201Table.sample_stratified``; no two
computing the same function, except in the ``cpu`` and ``cpu_long`` budgets, which keep the sample their
committed results were measured on: 30 cells of 28 functions), then for every data source (the same sources
and cached datasets as ``search_quality.py``):

1. *stand-alone*: each cell's plain network (small: C=8, N=1) is trained from scratch for a few epochs on the
   source's training split with ``dfnas.train.train_network`` (same settings for every cell and source);
2. *SPOS inherited weights*: one SPOS supernet is trained on the same split (uniform single paths, the SPOS
   method of ``dfnas.search``); each cell is evaluated with the supernet's weights after recalibrating
   BatchNorm statistics for its path (``dfnas.search.bn.recalibrate_bn``, as SPOS does for its candidates).

Each network is scored twice: top-1 on the real CIFAR-10 test subset (1,017 bit-exact images, true labels)
and agreement with the source's own labels on a held-out split of the source (20 %; for synthetic data the
teacher's argmax, for the random-label sources those random labels). Kendall tau and Spearman rho
(scipy.stats) of each score against the NAS-Bench-201 CIFAR-10 test accuracy measure how well the source
ranks architectures.

    python benchmarks/ranking_consistency.py --budget smoke
    python benchmarks/ranking_consistency.py --budget cpu [--sources real,full] [--no-spos]
    python benchmarks/ranking_consistency.py --budget cpu --zerocost   # zero-cost proxies only (minutes)

Resumable: one JSON per (source, cell) and per source for the SPOS evaluation under
benchmarks/_work/<budget>/ranking_consistency/cells/. Writes ranking_consistency_<budget>.{json,md,png}.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import costs  # noqa: E402
import reporting  # noqa: E402
from common import SOURCES, DataBudget  # noqa: E402

NAME = "ranking_consistency"
PROXIES = ("trained", "spos", "spos_fair")
PROXY_LABELS = {"trained": "stand-alone training", "spos": "SPOS inherited weights",
                "spos_fair": "SPOS inherited weights, strict-fairness supernet"}
SCORES = ("real_test", "held_out")
SCORE_LABELS = {"real_test": "real exact test (true labels)", "held_out": "source held-out split (source labels)"}


@dataclass(frozen=True)
class Budget:
    data: DataBudget
    n_cells: int  # cells sampled across the accuracy range
    cell_seed: int  # seed of the stratified sample (the same cells for every source)
    held_out: float  # fraction of each source held out for the source-label score
    space: dict[str, Any]  # NB201 options of the networks trained here
    train: dict[str, Any]  # dfnas.train.TrainConfig fields of the stand-alone training
    spos_loop: dict[str, Any]  # dfnas.search.loop.LoopConfig fields of the supernet training
    bn_batches: int  # training batches (of the supernet's batch size) used to recalibrate BN per cell
    seed: int = 0  # training seed (networks, batches, split)
    note: str = ""
    # sample only cells of distinct functions (NB201 function_key); False: the sampling of the committed
    # cpu / cpu_long results, made before the key existed (2 of its 30 cells repeat another cell's function)
    distinct_cells: bool = True

    def as_dict(self) -> dict[str, Any]:
        d = {"data": self.data.as_dict(), "n_cells": self.n_cells, "cell_seed": self.cell_seed,
             "held_out": self.held_out, "space": self.space, "train": self.train, "spos_loop": self.spos_loop,
             "bn_batches": self.bn_batches, "seed": self.seed}
        # recorded only when on, so the legacy sampling keeps the settings hashes its cached results carry
        if self.distinct_cells:
            d["distinct_cells"] = True
        return d


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        data=common.DATA_BUDGETS["smoke"], n_cells=4, cell_seed=0, held_out=0.25, space={"C": 4, "N": 1},
        train={"epochs": 1, "batch_size": 10, "max_steps": 2},
        spos_loop={"epochs": 1, "batch_size": 10, "max_steps": 2, "eval_max_batches": 0},
        bn_batches=1, note="smoke: sizes cut down to check the script runs; the numbers mean nothing"),
    # 30 cells x 7 sources. Stand-alone: 15 epochs of batch 32 on the 800-image training split (375 steps),
    # TrainConfig's recipe (SGD 0.05 Nesterov, cosine). Supernet: 30 epochs (750 single-path steps), the
    # search's recipe (SGD 0.025 -> 0.001, as in SearchConfig), BN recalibrated on 4 x 32 training images.
    "cpu": Budget(
        data=common.DATA_BUDGETS["cpu_train"], n_cells=30, cell_seed=0, held_out=0.2, space={"C": 8, "N": 1},
        train={"epochs": 15, "batch_size": 32, "lr": 0.05, "lr_min": 0.0, "nesterov": True,
               "weight_decay": 5e-4},
        spos_loop={"epochs": 30, "batch_size": 32, "lr": 0.025, "lr_min": 0.001, "weight_decay": 3e-4,
                   "eval_max_batches": 0},
        bn_batches=4, distinct_cells=False,
        note="cpu: 1,000 images per source (800 train / 200 held out); networks C=8 N=1; stand-alone 15 epochs "
             "(375 steps of 32); SPOS supernet 30 epochs (750 single-path steps of 32)"),
}

# the same cells, images and recipes with 4x the training: does ranking sharpen with budget, and does it
# sharpen for synthetic data as for real data? (same datasets as 'cpu')
BUDGETS["cpu_long"] = replace(
    BUDGETS["cpu"], train={**BUDGETS["cpu"].train, "epochs": 60},
    spos_loop={**BUDGETS["cpu"].spos_loop, "epochs": 120},
    note="cpu_long: as 'cpu' with 4x the training: stand-alone 60 epochs (1,500 steps of 32); SPOS supernet "
         "120 epochs (3,000 single-path steps of 32)")


def trained_hash(budget: Budget) -> str:
    return common.stable_hash({k: v for k, v in budget.as_dict().items() if k != "spos_loop"})


def spos_hash(budget: Budget, sampling: str = "uniform") -> str:
    d = {k: v for k, v in budget.as_dict().items() if k != "train"}
    if sampling != "uniform":  # recorded only when not the paper's, so the uniform results keep their hashes
        d["spos_sampling"] = sampling
    return common.stable_hash(d)


def split(ds: Any, budget: Budget) -> tuple[Any, Any]:
    """(train, held-out) split of a source, the same for both proxies."""
    from dfnas.repro import make_generator

    return ds.split(budget.held_out, make_generator(budget.seed, NAME, "split"))


def held_out_scored(held: Any) -> Any:
    """The held-out split with the source's own labels as hard targets (what ``evaluate`` scores)."""
    return common.with_hard_targets(held, common.source_labels(held))


def space_for(budget: Budget, ds: Any) -> Any:
    from dfnas.train import resolve_space

    return resolve_space({"name": "nb201", **budget.space}, ds)


# ----------------------------------------------------------------------------------------------------------
# cost model
# ----------------------------------------------------------------------------------------------------------

def estimate(budget: Budget, cal: costs.Calibration, n_test: int) -> tuple[float, float]:
    """(seconds per stand-alone cell, seconds per source's SPOS supernet + its evaluations)."""
    n = budget.data.n_images
    n_held = int(round(n * budget.held_out))
    n_train = n - n_held
    bs = min(int(budget.train["batch_size"]), n_train)
    steps = int(budget.train["epochs"]) * max(1, n_train // bs)
    if budget.train.get("max_steps"):
        steps = min(steps, int(budget.train["max_steps"]))
    # a plain network costs about one path of the supernet
    cell = steps * bs * cal.path_step + (n_test + n_held) * cal.path_eval
    sbs = min(int(budget.spos_loop["batch_size"]), n_train)
    ssteps = int(budget.spos_loop["epochs"]) * max(1, n_train // sbs)
    if budget.spos_loop.get("max_steps"):
        ssteps = min(ssteps, int(budget.spos_loop["max_steps"]))
    spos = ssteps * sbs * cal.path_step + budget.n_cells * (budget.bn_batches * sbs + n_test + n_held) * cal.path_eval
    return cell, spos


# ----------------------------------------------------------------------------------------------------------
# the two proxies
# ----------------------------------------------------------------------------------------------------------

def train_cell(arch: Any, idx: int, source: str, train: Any, held: Any, real_test: Any, budget: Budget,
               runs: Path, progress: bool) -> dict[str, Any]:
    """Train one cell's plain network from scratch; score it on the real test set and the held-out split."""
    from dfnas.train import evaluate, train_network

    out = runs / source / "trained" / common.run_name(f"cell{idx:02d}", trained_hash(budget))
    # the static dataset as it is (online synthesis, on by default for synthetic training sets, is
    # measured by datafree_wallclock.py); outside the cell hash: the cells' meaning is unchanged
    cfg = {**budget.train, "seed": budget.seed, "held_out": 0.0, "device": "cpu",
           "online": {"enabled": False}}
    t0 = time.perf_counter()
    res = train_network(cfg, arch, {"name": "nb201", **budget.space}, train, out, device="cpu",
                        test_data=real_test, progress=progress)
    net = space_for(budget, train).build_network(arch)
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    return {"real_test": res["test_top1"], "held_out": evaluate(net, held_out_scored(held)),
            "train_time_s": res.get("train_time_s"), "wall_s": round(time.perf_counter() - t0, 2)}


def spos_scores(archs: list[Any], source: str, train: Any, held: Any, real_test: Any, budget: Budget, runs: Path,
                progress: bool, sampling: str = "uniform") -> dict[str, Any]:
    """Train (or resume) one SPOS supernet on ``train``; score every cell with inherited, BN-recalibrated weights.

    ``sampling``: the supernet's weight steps (``spos.sampling``: uniform single paths, or strict fairness)."""
    from dfnas.data.imageset import iterate_batches
    from dfnas.repro import make_generator
    from dfnas.search.base import build_method
    from dfnas.search.bn import recalibrate_bn
    from dfnas.search.loop import LoopConfig, run_loop
    from dfnas.search.losses import Criterion
    from dfnas.search.spos import SposConfig
    from dfnas.train import evaluate

    space = space_for(budget, train)
    # the SPOS method as dfnas.search runs it (uniform single-path weight steps); its evolution is cut to
    # one generation of two candidates because here every sampled cell is scored instead
    opts = SposConfig(population=2, top_k=1, generations=1, bn_batches=1, eval_batches=1, sampling=sampling)
    dev = torch.device("cpu")
    method = build_method("spos", space, opts, make_generator(budget.seed, "method", "spos"), dev)
    loop = LoopConfig(**budget.spos_loop)
    name = "spos_supernet" if sampling == "uniform" else f"spos_{sampling}_supernet"
    out = runs / source / common.run_name(name, spos_hash(budget, sampling))
    out.mkdir(parents=True, exist_ok=True)
    from dfnas.search.rundir import dataset_info

    ident = {"kind": f"{NAME}/spos", "space": space.config(), "loop": common.stable_hash(budget.spos_loop),
             "seed": budget.seed, "train": dataset_info(train), "label_mode": train.label_mode}
    if sampling != "uniform":
        ident["sampling"] = sampling
    t0 = time.perf_counter()
    outcome = run_loop(method, train, held, loop, Criterion(train.label_mode, 4.0), out, dev,
                       common.stable_hash(ident), budget.seed, progress=progress, desc=f"spos supernet [{source}]")
    train_s = time.perf_counter() - t0
    supernet = outcome.model
    bs = min(loop.batch_size, len(train))
    bn = [x for x, _ in itertools.islice(iterate_batches(train, bs, make_generator(budget.seed, NAME, "bn-batches"),
                                                        augment=False), budget.bn_batches)]
    held_s = held_out_scored(held)
    scores = []
    t1 = time.perf_counter()
    for arch in archs:
        supernet.set_path(arch)
        recalibrate_bn(supernet, bn)
        scores.append({"real_test": evaluate(supernet, real_test), "held_out": evaluate(supernet, held_s)})
    return {"scores": scores, "supernet_steps": outcome.steps, "supernet_time_s": round(outcome.elapsed_s, 2),
            "wall_s": round(train_s + time.perf_counter() - t1, 2), "eval_wall_s": round(time.perf_counter() - t1, 2)}


def adopt_published(store: common.CellStore, published: Path, budget: Budget, archs: list[Any],
                    sources_root: Path) -> int:
    """Seed ``store`` with the published summary's scores (``benchmarks/results/<stem>.json``) where the store has
    no file yet; returns how many cell files were adopted (``common.adopt_published`` for this benchmark).

    The summary keeps each source's scores per proxy, not per-cell settings hashes, so it is adopted only when
    it was made with exactly this budget's settings (then this budget's hashes are the ones its cells had).
    """
    if not published.is_file():
        return 0
    summary = json.loads(published.read_text())
    if summary.get("budget_settings") != budget.as_dict() or [c["arch"] for c in summary.get("cells", [])] != [
            str(a) for a in archs]:
        return 0
    th, sh, shf = trained_hash(budget), spos_hash(budget), spos_hash(budget, "fair")
    records: list[tuple[dict[str, Any], tuple[str, ...], str]] = []
    for s, entry in summary.get("scores", {}).items():
        for i, rec in enumerate(entry.get("trained", [])):
            records.append(({"source": s, "index": i, "arch": str(archs[i]), **rec}, (s, "trained", f"cell{i:02d}"),
                            th))
        for proxy, h in (("spos", sh), ("spos_fair", shf)):
            if proxy in entry:
                records.append(({"source": s, "scores": entry[proxy]}, (s, proxy, "scores"), h))
    return common.adopt_records(store, published, records, summary, sources_root)


# ----------------------------------------------------------------------------------------------------------
# statistics and outputs
# ----------------------------------------------------------------------------------------------------------

def correlations(gt: list[float], proxy: list[float]) -> dict[str, float]:
    """Kendall tau-b and Spearman rho (NaN when either side is constant or too short)."""
    from scipy.stats import kendalltau, spearmanr

    if len(gt) < 3 or len(set(proxy)) < 2 or len(set(gt)) < 2:
        return {"kendall_tau": float("nan"), "spearman_rho": float("nan"), "n": len(gt)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tau = kendalltau(gt, proxy)
        rho = spearmanr(gt, proxy)
    return {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue), "n": len(gt)}


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def top_half(gt: list[float]) -> tuple[float, list[int]]:
    """The sample's median ground truth and the indices of the cells at or above it (the 'top half' τ)."""
    median = sorted(gt)[len(gt) // 2]
    return median, [i for i, g in enumerate(gt) if g >= median]


def summarize(budget_name: str, budget: Budget, cells: list[dict[str, Any]], per_source: dict[str, dict[str, Any]],
              sources: list[str], data_info: dict[str, Any]) -> tuple[dict[str, Any], str]:
    gt = [c["nb201_cifar10"] for c in cells]
    median, top = top_half(gt)
    stats: dict[str, Any] = {}
    for s in sources:
        stats[s] = {}
        for proxy in PROXIES:
            vals = per_source.get(s, {}).get(proxy)
            if vals is None or any(v is None for v in vals):
                continue
            stats[s][proxy] = {}
            for score in SCORES:
                p = [v[score] for v in vals]
                stats[s][proxy][score] = {**correlations(gt, p), "top_half": correlations([gt[i] for i in top],
                                                                                         [p[i] for i in top]),
                                          "mean_acc": sum(p) / len(p)}
            real = per_source.get("real", {}).get(proxy)
            if s != "real" and real is not None and all(v is not None for v in real):
                stats[s][proxy]["vs_real_source"] = correlations([v["real_test"] for v in real],
                                                                 [v["real_test"] for v in vals])
    summary = {"benchmark": NAME, "budget": budget_name, "budget_settings": budget.as_dict(),
               "cells": cells, "scores": per_source, "stats": stats,
               "sources": {s: {"label": SOURCES[s].label, **data_info.get(s, {})} for s in sources},
               "environment": reporting.environment()}
    lines = [f"# Ranking consistency by data source ({budget_name} budget)\n",
             f"{budget.note}. {len(cells)} NAS-Bench-201 cells drawn across the accuracy range "
             f"(stratified, seed {budget.cell_seed}; ground truth {min(gt):.2f}–{max(gt):.2f} %). Each proxy score "
             "is correlated with the NAS-Bench-201 CIFAR-10 test accuracy (200 epochs, C=16, N=5). "
             f"τ = Kendall tau-b, ρ = Spearman rho over all {len(cells)} cells; 'top half' = τ over the "
             f"{len(top)} cells at or above the sample's median ground truth ({median:.2f} %), where search "
             "decisions are made.\n",
             "Scores: **real test** = top-1 on the 1,017 bit-exact real CIFAR-10 test images with true labels "
             "(real data used for evaluation only); **held-out** = agreement with the source's own labels on "
             f"{budget.held_out:.0%} of the source held out from training (teacher argmax for synthetic data; "
             "the random labels for the random-label sources).\n"]
    for proxy in PROXIES:
        rows = []
        for s in sources:
            st = stats[s].get(proxy)
            if st is None:
                continue
            rt, ho = st["real_test"], st["held_out"]
            vr = st.get("vs_real_source")
            rows.append([SOURCES[s].label, fmt(rt["kendall_tau"]), fmt(rt["spearman_rho"]),
                         fmt(rt["top_half"]["kendall_tau"]), fmt(rt["mean_acc"], 1),
                         fmt(ho["kendall_tau"]), fmt(ho["spearman_rho"]), fmt(ho["mean_acc"], 1),
                         "–" if vr is None else fmt(vr["kendall_tau"])])
        if rows:
            lines.append(f"## {PROXY_LABELS[proxy]}\n")
            lines.append(reporting.md_table(["source", "τ real test", "ρ real test", "τ real test (top half)",
                                          "mean real-test acc (%)", "τ held-out", "ρ held-out",
                                          "mean held-out acc (%)", "τ vs real-data scores"], rows))
            lines.append("")
    lines.append("'τ vs real-data scores' = Kendall tau between this source's real-test scores and those of "
                 "the same proxy trained on real (JPEG) images: how closely the source reproduces real-data "
                 "rankings at the same budget.\n")
    return summary, "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Scatter per source (columns) and proxy (rows): x = NB201 ground truth, y = real-test top-1."""
    plt = reporting.pyplot()
    sources = list(summary["sources"])
    proxies = [p for p in PROXIES if any(p in summary["stats"][s] for s in sources)]
    gt = [c["nb201_cifar10"] for c in summary["cells"]]
    fig, axes = plt.subplots(len(proxies), len(sources), figsize=(2.4 * len(sources) + 0.6, 2.5 * len(proxies) + 0.5),
                             squeeze=False, sharex=True)
    for r, proxy in enumerate(proxies):
        for c, s in enumerate(sources):
            ax = axes[r][c]
            vals = summary["scores"].get(s, {}).get(proxy)
            st = summary["stats"][s].get(proxy)
            if vals is None or st is None:
                ax.set_axis_off()
                continue
            ax.scatter(gt, [v["real_test"] for v in vals], s=10, label="real test")
            ax.scatter(gt, [v["held_out"] for v in vals], s=10, marker="x", alpha=0.6, label="held-out")
            ax.set_title(f"{summary['sources'][s]['label']}\nτ={fmt(st['real_test']['kendall_tau'])} / "
                         f"{fmt(st['held_out']['kendall_tau'])}", fontsize=7)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel(f"{PROXY_LABELS[proxy]}\ntop-1 (%)", fontsize=7)
            if r == len(proxies) - 1:
                ax.set_xlabel("NB201 CIFAR-10 acc. (%)", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Ranking consistency ({summary['budget']} budget); τ = Kendall tau real test / held-out",
                 fontsize=9)
    return reporting.save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(BUDGETS))
    common.add_sources_arg(p)
    p.add_argument("--no-spos", action="store_true", help="skip the SPOS inherited-weight proxy")
    p.add_argument("--spos-fair", action="store_true",
                   help="also score the cells with a strict-fairness SPOS supernet (5 paths per step: 5x the cost)")
    p.add_argument("--zerocost", action="store_true",
                   help="run only the training-free rankers (zero-cost proxies, zerocost_ranking.py)")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = BUDGETS[args.budget]
    sources = common.chosen_sources(args)
    store = common.CellStore(work / NAME / "cells")
    runs = work / NAME / "runs"
    progress = not args.quiet
    th, sh, shf = trained_hash(budget), spos_hash(budget), spos_hash(budget, "fair")

    from dfnas.spaces.nb201 import NB201Space
    from dfnas.spaces.nb201_table import NB201Table

    table = NB201Table.load()
    archs = table.sample_stratified(budget.n_cells, torch.Generator().manual_seed(budget.cell_seed),
                                    distinct=budget.distinct_cells)
    n_functions = len({NB201Space.function_key(a) for a in archs})
    if n_functions < len(archs):
        common.log(f"{NAME} [{args.budget}]: legacy cell sample: {len(archs)} cells compute {n_functions} distinct "
                   "functions (kept to reproduce the recorded results)")
    cells = []
    for i, a in enumerate(archs):
        gt = table.lookup(a)
        cells.append({"index": i, "arch": str(a), "nb201_index": gt["index"], "nb201_cifar10": gt["cifar10"],
                      "nb201_percentile": gt["percentile"]})
    if args.zerocost:  # the zero-cost proxies only: no training, their own outputs
        import zerocost_ranking

        return zerocost_ranking.run(args, budget, archs, cells, sources, work, out, table, split, correlations)
    # a fresh clone has the published summary but no cell store: adopt it, so that a rebuild or new cells add to it
    adopt_published(store, common.RESULTS_DIR / f"{NAME}_{args.budget}.json", budget, archs, work / NAME)
    real_test = common.real_test_set()

    def todo_trained(s: str) -> list[int]:
        return [i for i in range(len(archs)) if store.get(s, "trained", f"cell{i:02d}", cell_hash=th) is None]

    def todo_spos(s: str) -> bool:
        return not args.no_spos and store.get(s, "spos", "scores", cell_hash=sh) is None

    def todo_fair(s: str) -> bool:
        return args.spos_fair and store.get(s, "spos_fair", "scores", cell_hash=shf) is None

    n_tr = sum(len(todo_trained(s)) for s in sources)
    n_sp = sum(todo_spos(s) for s in sources) + 5 * sum(todo_fair(s) for s in sources)
    if not args.summary_only and (n_tr or n_sp or args.estimate_only):
        common.log(f"{NAME} [{args.budget}]: {len(archs)} cells x {len(sources)} sources; {n_tr} stand-alone "
                   f"trainings and {n_sp} SPOS supernets to run. Calibrating the cost model ...")
        need = [s for s in sources if todo_trained(s) or todo_spos(s) or todo_fair(s)]
        cals = costs.calibrate(budget.space, int(budget.train["batch_size"]),
                                need_teacher=any(SOURCES[s].kind == "synthesis" for s in need))

        def total_s(c: costs.Calibration) -> float:
            cell, spos = estimate(budget, c, len(real_test))
            return costs.synthesis_estimate(need, budget.data, work, c) + n_tr * cell + n_sp * spos

        for what, fn in (("datasets (shared with datafree_training)",
                          lambda c: costs.synthesis_estimate(need, budget.data, work, c)),
                         ("one stand-alone cell", lambda c: estimate(budget, c, len(real_test))[0]),
                         ("one SPOS supernet + evaluations", lambda c: estimate(budget, c, len(real_test))[1]),
                         ("total", total_s)):
            common.log(f"estimate, {what}: {costs.estimate_line(fn, cals)}")
        per_cell, per_spos = estimate(budget, cals[0], len(real_test))
        total = n_tr * per_cell + n_sp * per_spos
        if args.estimate_only:
            return 0
        eta = common.Eta(total)
        for s in need:
            ds, info = common.prepare_source(s, budget.data, work, progress)
            common.put_source_info(work / NAME, s, info)
            train, held = split(ds, budget)
            for i in todo_trained(s):
                t0 = time.perf_counter()
                rec = train_cell(archs[i], i, s, train, held, real_test, budget, runs, progress)
                store.put({"source": s, "index": i, "arch": str(archs[i]), **rec}, s, "trained", f"cell{i:02d}",
                          cell_hash=th)
                common.log(f"{s} cell {i:02d} (NB201 {cells[i]['nb201_cifar10']:.2f}%): real test "
                           f"{rec['real_test']:.1f}%, held-out {rec['held_out']:.1f}%; "
                           f"{eta.done(per_cell, time.perf_counter() - t0)}")
            if todo_spos(s):
                t0 = time.perf_counter()
                rec = spos_scores(archs, s, train, held, real_test, budget, runs, progress)
                store.put({"source": s, **rec}, s, "spos", "scores", cell_hash=sh)
                common.log(f"{s} SPOS supernet + {len(archs)} evaluations; "
                           f"{eta.done(per_spos, time.perf_counter() - t0)}")
            if todo_fair(s):
                t0 = time.perf_counter()
                rec = spos_scores(archs, s, train, held, real_test, budget, runs, progress, sampling="fair")
                store.put({"source": s, **rec}, s, "spos_fair", "scores", cell_hash=shf)
                common.log(f"{s} strict-fairness SPOS supernet + {len(archs)} evaluations; "
                           f"{eta.done(5 * per_spos, time.perf_counter() - t0)}")
    # the summary covers every source with finished results, whichever subset this invocation ran
    per_source: dict[str, dict[str, Any]] = {}
    for s in SOURCES:
        tr = [store.get(s, "trained", f"cell{i:02d}", cell_hash=th) for i in range(len(archs))]
        sp = store.get(s, "spos", "scores", cell_hash=sh)
        spf = store.get(s, "spos_fair", "scores", cell_hash=shf)
        entry: dict[str, Any] = {}
        if all(r is not None for r in tr):
            entry["trained"] = [{"real_test": r["real_test"], "held_out": r["held_out"]} for r in tr if r]
        if sp is not None:
            entry["spos"] = sp["scores"]
        if spf is not None:
            entry["spos_fair"] = spf["scores"]
        if entry:
            per_source[s] = entry
    shown = [s for s in SOURCES if s in per_source]
    info = {s: common.get_source_info(work / NAME, s) for s in shown}
    summary, md = summarize(args.budget, budget, cells, per_source, shown, info)
    reporting.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "ranking consistency",
                   f"{sum(s in shown for s in common.grid_sources())} of {len(common.grid_sources())} sources "
                   "complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
