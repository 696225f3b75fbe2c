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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import costs  # noqa: E402
from common import SOURCES, DataBudget  # noqa: E402

NAME = "search_quality"


@dataclass(frozen=True)
class Method:
    label: str
    config: dict[str, Any]  # SearchConfig fields over the budget's common ones
    # the method whose cell (same budget, source and seed) trains the supernet this one reuses (`spos.supernet_from`,
    # `proxyless.supernet_from`): the cell runs only its own last stage (evolution; derivation) on that supernet
    supernet_of: str | None = None


_ZC = {"proxy": "naswot+synflow", "candidates": 100, "keep": 2}
METHODS: dict[str, Method] = {
    "darts_beta": Method("DARTS + β-decay", {"method": "darts", "darts": {"remedy": "beta"}}),
    # 10x the architecture learning rate: at a few hundred steps (beta-DARTS's own NB201 search takes ~19,500)
    # softmax(alpha) ends within ~0.002 of uniform, so the derived cell rests on a hair's-breadth lead
    "darts_beta_lr10": Method("DARTS + β-decay, 10x arch lr",
                              {"method": "darts", "darts": {"remedy": "beta", "arch_lr": 3e-3}}),
    # P-DARTS's cap on skip connections at derivation (at most 1 of the cell's 6 edges; P-DARTS keeps 2 of the
    # DARTS normal cell's 8): the depth-5 searches find the residual skip but let skips win other edges too
    "darts_beta_skip1": Method("DARTS + β-decay, at most 1 skip",
                               {"method": "darts", "darts": {"remedy": "beta", "max_skip": 1}}),
    "darts": Method("DARTS", {"method": "darts", "darts": {"remedy": "none"}}),
    # the identity start of the candidate convolutions (see proxyless_identity) for DARTS's weighted supernet
    "darts_beta_identity": Method("DARTS + β-decay, identity-started candidates",
                                  {"method": "darts", "darts": {"remedy": "beta"}, "candidate_init": "identity"}),
    # DrNAS's Dirichlet mixing weights (sampled each step, KL to the uniform Dirichlet): its own NB201 search
    # lands on the optimum (94.36); the noise of the draws keeps a lead from resting on one op's early edge
    "drnas": Method("DrNAS (Dirichlet)", {"method": "darts", "darts": {"remedy": "drnas"}}),
    "proxyless": Method("ProxylessNAS", {"method": "proxyless"}),
    # ablation: architecture updates from the first step (the library default before the paper's warm-up)
    "proxyless_nowarm": Method("ProxylessNAS w/o warm-up", {"method": "proxyless", "proxyless": {"warmup_epochs": 0}}),
    # the paper's warm-up (weight steps only, paths drawn uniformly) stretched over 280 of 300 epochs: a
    # single-path supernet ranks cells only after ~20,000 steps (spos_ranking.py), and the architecture then
    # settles in ~1,500 steps (20 epochs at 5,000 images); for the cpu_5k_xlong budget. The per-epoch held-out
    # evaluation (a log of the derived path, which no decision uses) on one batch instead of 8: 300 of them on
    # 2,048 images would cost a third of the search
    "proxyless_longwarm": Method("ProxylessNAS, warm-up 280 of 300 epochs",
                                 {"method": "proxyless", "proxyless": {"warmup_epochs": 280},
                                  "eval_max_batches": 1}),
    # candidates' convolutions started as the identity plus their random draw (`candidate_init: identity`): an
    # untrained convolution then passes its input like a skip instead of noise, so at 210 weight steps the
    # search no longer finds the parameter-free ops better merely because the convolutions have not trained yet
    "proxyless_identity": Method("ProxylessNAS, identity-started candidates",
                                 {"method": "proxyless", "candidate_init": "identity"}),
    # and every option trained at every weight step (FairNAS's strict fairness; DARTS's compute per step): each
    # convolution gets all 210 updates instead of ~42; with the bias towards untrained ops gone, a 10x arch lr
    # (1e-2) lets alpha leave uniform (at 1e-3 it ends within ~0.01 of it and the cell is the estimator's noise)
    "proxyless_identity_fair": Method("ProxylessNAS, identity-started candidates, fair weight paths, 10x arch lr",
                                      {"method": "proxyless", "candidate_init": "identity",
                                       "proxyless": {"sampling": "fair", "arch_lr": 1e-2}}),
    # the same supernet training, the cell read off the trained supernet instead of argmax alpha
    # (`proxyless.derive=measured`, 10 draws of the other edges, uniform as the fair weight paths train them,
    # `none` excluded as DARTS's derivation does), after proxyless_diagnosis_cpu.md found that the supernet ranks
    # where the estimator does not; the rule was chosen on seeds 0-4, seeds 5-9 are its test
    "proxyless_identity_fair_measured": Method(
        "ProxylessNAS, identity-started candidates, fair weight paths, measured derivation",
        {"method": "proxyless", "candidate_init": "identity",
         "proxyless": {"sampling": "fair", "arch_lr": 1e-2, "derive": "measured"}}),
    # the same search and derivation, measured on the supernet's weights averaged over the last half of the weight
    # steps (`proxyless.derive_weights=averaged`, stochastic weight averaging) instead of the last step's; chosen
    # on seeds 0-4 of a scratch pilot that read three rules off the same supernets (the last weights, these, and
    # each edge's lowest mean training loss), so seeds 5-29 are its test
    "proxyless_identity_fair_measured_avg": Method(
        "ProxylessNAS, identity-started candidates, fair weight paths, measured derivation on averaged weights",
        {"method": "proxyless", "candidate_init": "identity",
         "proxyless": {"sampling": "fair", "arch_lr": 1e-2, "derive": "measured", "derive_weights": "averaged"}}),
    # the same search, derived on the last and on the averaged weights; where the two cells differ, the one of
    # lower held-out loss as a whole path on the averaged weights (`proxyless.derive_weights=both`): made after
    # seed 22 of the averaged derivation assembled an all-skip-and-pooling cell (54.55) from per-edge marginals
    "proxyless_identity_fair_measured_both": Method(
        "ProxylessNAS, identity-started candidates, fair weight paths, measured derivation on the last and averaged"
        " weights, the better whole cell",
        {"method": "proxyless", "candidate_init": "identity",
         "proxyless": {"sampling": "fair", "arch_lr": 1e-2, "derive": "measured", "derive_weights": "both"}}),
    # the same search and derivation with at most 2 parameter-free options (skip, pooling) in each weight set's cell
    # (`proxyless.max_param_free=2`, P-DARTS's M = 2 widened from skips to pooling), read off the `both` cell's
    # finished supernet (the same weights: only the derivation differs). Made after seeds 0-24 showed the cells of
    # 3+ parameter-free options to be both sources' worst (real data's 77.04 among them); seeds 25-34 are its test
    "proxyless_identity_fair_measured_both_cap2": Method(
        "ProxylessNAS, identity-started candidates, fair weight paths, measured derivation on both weight sets, at"
        " most 2 parameter-free options",
        {"method": "proxyless", "candidate_init": "identity",
         "proxyless": {"sampling": "fair", "arch_lr": 1e-2, "derive": "measured", "derive_weights": "both",
                       "max_param_free": 2}},
        supernet_of="proxyless_identity_fair_measured_both"),
    "spos": Method("SPOS", {"method": "spos"}),
    # the same identity start for SPOS's single-path supernet (uniform paths, evolution unchanged)
    "spos_identity": Method("SPOS, identity-started candidates", {"method": "spos", "candidate_init": "identity"}),
    # FairNAS's strict fairness: every weight step trains each op of every edge once (5 paths on the batch), so
    # each op gets all 210 updates instead of ~42; the compute per step is then that of the DARTS supernet
    "spos_fair": Method("SPOS, strict fairness", {"method": "spos", "spos": {"sampling": "fair"}}),
    # candidates ranked by the held-out search loss instead of top-1 (finer than top-1 on a few hundred images)
    "spos_loss": Method("SPOS, loss score", {"method": "spos", "spos": {"score": "loss"}}),
    # zero-cost pre-filter: NASWOT + synflow (rank sum) score 100 random cells on the training split, and each
    # edge keeps the 2 ops whose cells ranked best on average; the search runs on that 64-cell space. The
    # pre-filter alone (its best-scored cell) is recorded beside each search, to judge what the search adds
    "proxyless_zc": Method("ProxylessNAS, zero-cost pre-filter", {"method": "proxyless", "prefilter": _ZC}),
    # both: the pre-filter's space (2 options per edge, mostly the two convolutions) searched from identity-started
    # candidates, so that within it the convolutions are not judged before they have trained
    "proxyless_identity_zc": Method("ProxylessNAS, identity-started candidates, zero-cost pre-filter",
                                    {"method": "proxyless", "candidate_init": "identity", "prefilter": _ZC}),
    # an evolution on the `spos` cell's trained supernet (no retraining; for the cpu_5k_xlong budget, whose
    # supernet ranks the cells but whose evolution picks among near-ties): BatchNorm recalibrated on 4x the
    # batches and every held-out image (2,500 at that budget, not 1,024) scoring each candidate
    "spos_big_eval": Method("SPOS, 16 BN batches, all held-out images (same supernet)",
                            {"method": "spos", "spos": {"bn_batches": 16, "eval_batches": None}},
                            supernet_of="spos"),
    # an evolution on the `spos` cell's trained supernet, then its 8 best candidates each fine-tuned alone from
    # their inherited weights (300 steps, lr 0.005 -> 0) and re-ranked by the held-out distillation loss on all
    # held-out images (where top-1 saturates at ~99 % on full synthesis and the leaders tie); for cpu_5k_xlong
    "spos_rerank": Method("SPOS, 8 best fine-tuned and re-ranked (same supernet)",
                          {"method": "spos", "spos": {"rerank_top": 8}}, supernet_of="spos"),
    "spos_zc": Method("SPOS, zero-cost pre-filter", {"method": "spos", "prefilter": _ZC}),
    "darts_beta_zc": Method("DARTS + β-decay, zero-cost pre-filter",
                            {"method": "darts", "darts": {"remedy": "beta"}, "prefilter": _ZC}),
}


@dataclass(frozen=True)
class Budget:
    data: DataBudget
    space: dict[str, Any]  # NB201 search-space options (the supernet searched on CPU)
    search: dict[str, Any]  # SearchConfig fields shared by every method and source
    seeds: tuple[int, ...]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"data": self.data.as_dict(), "space": self.space, "search": self.search, "seeds": list(self.seeds)}


# The 5,000-image variant: does more data change what search finds at (nearly) the same compute? 3 epochs of
# the 2,500-image training half are 234 weight steps (11 % more than `cpu`; the nearest whole number of epochs,
# so the cosine schedule runs to its end); every held-out evaluation sees more images.
CPU_5K = Budget(
    data=common.DATA_BUDGETS["cpu_5k"],
    space={"C": 8, "N": 1},
    search={"epochs": 3, "batch_size": 32, "held_out": 0.5, "eval_max_batches": 8},
    seeds=(0, 1, 2),
    note="cpu_5k: 5,000 images per source; NB201 supernet C=8 N=1; 3 epochs x batch 32 (234 weight steps)")

BUDGETS: dict[str, Budget] = {
    # A few steps of everything on 40 images: proves the pipeline end to end; the numbers mean nothing.
    "smoke": Budget(
        data=common.DATA_BUDGETS["smoke"],
        space={"C": 4, "N": 1},
        search={"epochs": 1, "batch_size": 10, "held_out": 0.5, "max_steps": 2, "eval_max_batches": 1,
                "spos": {"population": 2, "top_k": 1, "generations": 1, "bn_batches": 1, "eval_batches": 1}},
        seeds=(0,),
        note="smoke: sizes cut down to check the script runs; the numbers mean nothing"),
    # The real run for a 2-core CPU: 500 images per source (the library's default synthesis recipe), a C=8 N=1
    # supernet, 30 epochs of batch 32 on the 250-image training half (210 weight steps) for every method.
    "cpu": Budget(
        data=common.DATA_BUDGETS["cpu"],
        space={"C": 8, "N": 1},
        search={"epochs": 30, "batch_size": 32, "held_out": 0.5, "eval_max_batches": 8},
        seeds=(0, 1, 2),
        note="cpu: 500 images per source; NB201 supernet C=8 N=1; 30 epochs x batch 32 (210 weight steps)"),
    "cpu_5k": CPU_5K,
    # As cpu_5k with the benchmark's own depth (N=5: five cells per stage, 17 in all, as the ground truth was
    # trained): every top-0.27 % cell has a skip on the cell's input-to-output edge, a residual that pays off
    # only in a deep stack, which the N=1 supernet (three cells) has no reason to prefer. About 4x the compute.
    "cpu_5k_n5": replace(
        CPU_5K, space={"C": 8, "N": 5},
        note="cpu_5k_n5: 5,000 images per source; NB201 supernet C=8 N=5 (the benchmark's depth); 3 epochs x "
             "batch 32 (234 weight steps)"),
    # As cpu_5k_n5 with 10 epochs (780 weight steps, 3.3x): at N=1, 10x the steps made DARTS + beta-decay
    # consistent (93.38-93.47 over 3 seeds) but kept the N=1 preference (no residual skip). Measured at N=5: the
    # residual on 5 of 5 seeds (1 of 5 at 234 steps), but skip also takes the first edge on 3 (93.40 +- 0.68).
    "cpu_5k_n5_long": replace(
        CPU_5K, space={"C": 8, "N": 5}, search={**CPU_5K.search, "epochs": 10},
        note="cpu_5k_n5_long: 5,000 images per source; NB201 supernet C=8 N=5 (the benchmark's depth); 10 "
             "epochs x batch 32 (780 weight steps)"),
    # As cpu_5k with 10x the weight steps (30 epochs, 2,340 steps): is SPOS's supernet just undertrained?
    "cpu_5k_long": replace(
        CPU_5K, search={**CPU_5K.search, "epochs": 30},
        note="cpu_5k_long: 5,000 images per source; NB201 supernet C=8 N=1; 30 epochs x batch 32 (2,340 weight "
             "steps)"),
    # As cpu_5k with 100x the weight steps (300 epochs, 23,400 steps), for SPOS: at this order of steps its
    # supernet's inherited weights start to rank the ranking benchmark's cells (spos_ranking.py, data5k_long:
    # 24,000 steps on 4,000 images: tau 0.53 real, 0.37 / 0.40 generator); about 25 min per SPOS seed on one core
    "cpu_5k_xlong": replace(
        CPU_5K, search={**CPU_5K.search, "epochs": 300},
        note="cpu_5k_xlong: 5,000 images per source; NB201 supernet C=8 N=1; 300 epochs x batch 32 (23,400 "
             "weight steps)"),
    # Twice that (600 epochs, 46,800 steps), for SPOS: from 2,340 to 23,400 steps its found cell rose by 1.3-4.5
    # points per source and stopped 0.32 short of 93.0 on full synthesis; does the rise go on? About 50 min per
    # seed on one core (a killed search resumes at its last epoch)
    "cpu_5k_xxlong": replace(
        CPU_5K, search={**CPU_5K.search, "epochs": 600},
        note="cpu_5k_xxlong: 5,000 images per source; NB201 supernet C=8 N=1; 600 epochs x batch 32 (46,800 "
             "weight steps)"),
}


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
# summary
# ----------------------------------------------------------------------------------------------------------

STATS_HEADERS = ["seeds", "mean difference", "95 % CI", "p (t)", "p (sign-flip)", "verdict"]


def _stats(c: dict[str, Any]) -> list[Any]:
    """The STATS_HEADERS columns of one paired comparison."""
    verdict = {"a better": "first better", "b better": "second better"}.get(c["verdict"], c["verdict"])
    return [c["n"], f"{c['mean_diff']:+.2f}", f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]", f"{c['p_t']:.3f}",
            f"{c['p_perm']:.3f}", verdict]


def summarize(cells: list[dict[str, Any]], budget_name: str, budget: Budget, table: Any, sources: list[str],
              methods: list[str], data_info: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Aggregate cells into the summary dict and its Markdown report."""
    import numpy as np

    acc = table.accuracies("cifar10")
    ref = {"random_cell_mean": float(acc.mean()), "random_cell_std": float(acc.std()),
           "median_cell": float(np.median(acc)), "best_cell": float(acc.max()),
           "all_skip_cell": table.lookup("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|"
                                         "skip_connect~1|skip_connect~2|")["cifar10"]}
    groups: dict[str, dict[str, Any]] = {}
    for s in sources:
        for m in methods:
            cs = sorted((c for c in cells if c["source"] == s and c["method"] == m), key=lambda c: c["seed"])
            if not cs:
                continue
            a = [c["nb201_cifar10"] for c in cs]
            mu, sd = common.mean_std(a)
            pmu, _ = common.mean_std([c["nb201_percentile"] for c in cs])
            tmu, _ = common.mean_std([c["search_time_s"] for c in cs])
            groups[f"{s}/{m}"] = {"source": s, "method": m, "seeds": [c["seed"] for c in cs], "acc": a,
                                  "acc_mean": mu, "acc_std": sd, "percentile_mean": pmu, "search_time_mean_s": tmu,
                                  "archs": [c["arch"] for c in cs]}
    comparisons = paired_comparisons(cells, sources, methods)
    same_supernet = same_supernet_comparisons(cells, sources, methods)
    summary = {"benchmark": NAME, "budget": budget_name, "budget_settings": budget.as_dict(), "reference": ref,
               "sources": {s: {"label": SOURCES[s].label, **data_info.get(s, {})} for s in sources},
               "methods": {m: {"label": METHODS[m].label, "config": METHODS[m].config} for m in methods},
               "groups": groups, "comparisons": comparisons,
               "same_supernet_comparisons": same_supernet, "cells": cells, "environment": common.environment()}

    lines = [f"# Search quality by data source ({budget_name} budget)\n",
             f"{budget.note}. Teacher: ResNet-20 (CIFAR-10). Space: NAS-Bench-201 (searched with "
             f"C={budget.space['C']}, N={budget.space['N']}). Score: NAS-Bench-201 CIFAR-10 test accuracy (%) "
             "of the found cell, mean ± sample std over seeds (ground truth: 200 epochs at C=16, N=5). "
             "Same images per source and the same search settings for every cell.\n",
             f"Reference: a uniformly random cell scores {ref['random_cell_mean']:.2f} ± {ref['random_cell_std']:.2f} "
             f"(median {ref['median_cell']:.2f}); the best cell {ref['best_cell']:.2f}; the all-skip cell (DARTS "
             f"collapse) {ref['all_skip_cell']:.2f}.\n",
             "## NAS-Bench-201 CIFAR-10 test accuracy of the found cell (%)\n"]
    headers = ["source"] + [METHODS[m].label for m in methods]
    rows = []
    for s in sources:
        row = [SOURCES[s].label]
        for m in methods:
            g = groups.get(f"{s}/{m}")
            row.append("–" if g is None else f"{common.fmt_pm(g['acc'])} (n={len(g['acc'])})")
        rows.append(row)
    lines.append(common.md_table(headers, rows))
    if comparisons:
        lines.append("\n## Paired comparisons (the same seeds on both sources)\n")
        lines.append("Difference = first source minus second, per seed; 95 % confidence interval of the mean "
                     "difference (Student t), paired t-test p, and the exact sign-flip permutation p (with n seeds "
                     "it cannot go below 2/2^n: 0.0625 at n = 5). *within noise* = the interval contains 0.\n")
        crow = [[METHODS[c["method"]].label, f"{SOURCES[c['a']].label} − {SOURCES[c['b']].label}", *_stats(c)]
                for c in comparisons]
        lines.append(common.md_table(["method", "comparison", *STATS_HEADERS], crow))
    if same_supernet:
        lines.append("\n## Paired comparisons on the same supernets\n")
        lines.append("A method that searches another cell's trained supernet (same source and seed) against that "
                     "cell: difference = first method minus second, per seed; statistics as above.\n")
        lines.append(common.md_table(
            ["source", "comparison", *STATS_HEADERS],
            [[SOURCES[c["source"]].label, f"{METHODS[c['method']].label} − {METHODS[c['donor']].label}", *_stats(c)]
             for c in same_supernet]))
    pre: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (source, method) -> its pre-filtered cells by seed
    for c in sorted(cells, key=lambda c: c["seed"]):
        if "prefilter" in c:
            pre.setdefault((c["source"], c["method"]), []).append(c)
    if pre:
        lines.append("\n## What the zero-cost pre-filter adds\n")
        lines.append("Per search with the pre-filter: the found cell, the pre-filter's own best-scored cell (what the "
                     "training-free search returns with the same proxies, candidates and seed), and a uniformly "
                     "random cell of the restricted space (mean over its cells; its best in brackets).\n")
        prow = []
        for g in groups.values():
            cs = pre.get((g["source"], g["method"]))
            if cs is None:
                continue
            prow.append([SOURCES[g["source"]].label, METHODS[g["method"]].label, len(cs), common.fmt_pm(g["acc"]),
                         common.fmt_pm([c["prefilter"]["best_candidate_nb201"] for c in cs]),
                         common.fmt_pm([c["prefilter"]["space_mean_nb201"] for c in cs]) + " (" + ", ".join(
                             f"{c['prefilter']['space_best_nb201']:.2f}" for c in cs) + ")"])
        lines.append(common.md_table(["source", "method", "seeds", "search", "pre-filter alone",
                                      "random cell of the restricted space"], prow))
    capped = [c for c in sorted(cells, key=lambda c: (c["source"], c["method"], c["seed"])) if "uncapped" in c]
    if capped:
        lines.append("\n## What the cap on skip connections changes\n")
        lines.append("Per search with `darts.max_skip`: the cell it returns, and the cell the same search (same "
                     "weights and architecture parameters: the cap acts at derivation only) gives without the cap. "
                     "Judge the cap by this pair, not against another column: a long search can follow another "
                     "trajectory on another machine (another CPU, another float order), and other columns' cells may "
                     "have run elsewhere.\n")
        lines.append(common.md_table(
            ["source", "method", "seed", "capped", "uncapped", "difference"],
            [[SOURCES[c["source"]].label, METHODS[c["method"]].label, c["seed"], f"{c['nb201_cifar10']:.2f}",
              f"{c['uncapped']['nb201_cifar10']:.2f}", f"{c['nb201_cifar10'] - c['uncapped']['nb201_cifar10']:+.2f}"]
             for c in capped]))
    lines.append("\n## Details (percentile = % of the 15,625 cells scoring at most as well; time = search only)\n")
    drows = []
    for g in groups.values():
        drows.append([SOURCES[g["source"]].label, METHODS[g["method"]].label, ", ".join(map(str, g["seeds"])),
                      ", ".join(f"{a:.2f}" for a in g["acc"]), f"{g['percentile_mean']:.1f}",
                      common.fmt_duration(g["search_time_mean_s"])])
    lines.append(common.md_table(["source", "method", "seeds", "accuracy per seed", "mean percentile",
                                  "mean search time"], drows))
    lines.append("\n## Data sources\n")
    lines.append(common.md_table(["source", "images", "supervision", "made in"],
                                 [[SOURCES[s].label, d.get("n", "–"), d.get("label_mode", "–"),
                                   common.fmt_duration(d["make_seconds"]) if d.get("make_seconds") else "cache"]
                                  for s, d in ((s, data_info.get(s, {})) for s in sources)]))
    lines.append("\nSupervision: `distill` = KL to the stored teacher logits (T=4); `hard` = cross-entropy on the "
                 "labels (true labels for real (JPEG), uniformly random for the random-label sources). The real "
                 "images are the lossy JPEG copy of CIFAR-10 training images.\n")
    return summary, "\n".join(lines)


# the comparisons the README draws: the method's full synthesis against real data, the unreal baseline and
# each ablation (first minus second)
COMPARISONS = (("full", "real"), ("full", "noise"), ("full", "real_random"), ("full", "no_recursion"),
               ("full", "no_regional"), ("full", "plain"), ("generator", "full"), ("calibrated", "full"),
               ("generator_stream", "full"), ("generator_stream_agreed", "full"),
               ("generator_stream_agreed", "generator_stream"), ("generator_redraw", "full"),
               ("generator_redraw", "generator"), ("generator_redraw_stream", "full"),
               ("generator_redraw_stream", "generator_stream"), ("generator_redraw_stream_balanced", "full"),
               ("generator_redraw_stream_balanced", "generator_redraw_stream"))


def seed_accuracies(cells: list[dict[str, Any]], source: str, method: str) -> dict[int, float]:
    """Seed -> NB201 accuracy of the found cell, for one source and method."""
    return {c["seed"]: c["nb201_cifar10"] for c in cells if c["source"] == source and c["method"] == method}


def paired_comparisons(cells: list[dict[str, Any]], sources: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """``common.paired_difference`` for every (method, COMPARISONS pair) with at least 2 shared seeds."""
    out = []
    for m in methods:
        for a, b in COMPARISONS:
            if a not in sources or b not in sources:
                continue
            res = common.paired_difference(seed_accuracies(cells, a, m), seed_accuracies(cells, b, m))
            if res is not None:
                out.append({"method": m, "a": a, "b": b, **res})
    return out


def same_supernet_comparisons(cells: list[dict[str, Any]], sources: list[str], methods: list[str]
                              ) -> list[dict[str, Any]]:
    """``common.paired_difference`` of each method that reuses another cell's supernet against that cell, per
    source (at least 2 shared seeds): the two searches differ only after the supernet's training."""
    out = []
    for m in methods:
        donor = METHODS[m].supernet_of
        if donor is None or donor not in methods:
            continue
        for s in sources:
            res = common.paired_difference(seed_accuracies(cells, s, m), seed_accuracies(cells, s, donor))
            if res is not None:
                out.append({"method": m, "donor": donor, "source": s, **res})
    return out


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Strip chart: x = source, one colour per method; dots = seeds, diamond + bar = mean ± std.

    Points rather than bars because the y axis does not start at 0 (bars would exaggerate differences).
    """
    plt = common.pyplot()
    groups = summary["groups"]
    sources = list(summary["sources"])
    methods = list(summary["methods"])
    ref = summary["reference"]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.4 * len(sources) + 4), 4.8))
    width = 0.8 / max(1, len(methods))
    colors = plt.get_cmap("tab10").colors
    for j, m in enumerate(methods):
        first = True
        for i, s in enumerate(sources):
            g = groups.get(f"{s}/{m}")
            if g is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            ax.scatter([x] * len(g["acc"]), g["acc"], s=14, color=colors[j % 10], alpha=0.6, zorder=3)
            ax.errorbar([x], [g["acc_mean"]], yerr=[g["acc_std"]], fmt="D", ms=6, color=colors[j % 10], capsize=3,
                        mec="k", zorder=4, label=summary["methods"][m]["label"] if first else None)
            first = False
    ax.axhline(ref["random_cell_mean"], ls="--", color="gray", lw=1, label="random cell (mean)")
    ax.axhline(ref["best_cell"], ls=":", color="green", lw=1, label="best cell")
    for i in range(1, len(sources)):
        ax.axvline(i - 0.5, color="0.9", lw=0.8, zorder=0)
    ax.set_xlim(-0.5, len(sources) - 0.5)
    ax.set_xticks(range(len(sources)))
    ax.set_xticklabels([summary["sources"][s]["label"] for s in sources], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc. of found cell (%)")
    ax.set_title(f"Search quality by data source ({summary['budget']} budget; dots = seeds, ◆ = mean ± std)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return common.save_figure(fig, path)


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
    # the summary covers every finished cell of this budget, not only this invocation's subset, so the grid
    # can be run in pieces (or in parallel processes) and the last piece writes the complete report
    all_seeds = sorted(set(seeds) | set(budget.seeds))
    cells = [c for s in SOURCES for m in METHODS for k in all_seeds
             if (c := store.get(s, m, f"seed{k}", cell_hash=cell_hash(budget, m, k))) is not None]
    shown_s = [s for s in SOURCES if any(c["source"] == s for c in cells)]
    shown_m = [m for m in METHODS if any(c["method"] == m for c in cells)]
    info = {s: common.get_source_info(work / NAME, s) for s in shown_s}
    summary, md = summarize(cells, args.budget, budget, table, shown_s, shown_m, info)
    n_grid = len(common.grid_sources()) * len(METHODS) * len(budget.seeds)
    common.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "search quality",
                   f"{sum(c['source'] in common.grid_sources() for c in cells)} of the grid's {n_grid} cells, "
                   f"{sum(c['source'] not in common.grid_sources() for c in cells)} control cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
