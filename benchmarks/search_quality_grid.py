"""The search-quality grid: its methods (SearchConfig fields over a budget's common ones) and budgets.

Kept apart from ``search_quality.py`` (which runs the cells) and ``search_quality_report.py`` (which summarizes
them), so both read the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import common
from common import DataBudget

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


def _cpu_5k_longer(name: str, epochs: int) -> Budget:
    """``cpu_5k`` with ``epochs`` epochs (78 weight steps each: 2,500 training images in batches of 32)."""
    return replace(CPU_5K, search={**CPU_5K.search, "epochs": epochs},
                   note=f"{name}: 5,000 images per source; NB201 supernet C=8 N=1; {epochs} epochs x batch 32 "
                        f"({epochs * 78:,} weight steps)")


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
    "cpu_5k_long": _cpu_5k_longer("cpu_5k_long", 30),
    # As cpu_5k with 100x the weight steps (300 epochs, 23,400 steps), for SPOS: at this order of steps its
    # supernet's inherited weights start to rank the ranking benchmark's cells (spos_ranking.py, data5k_long:
    # 24,000 steps on 4,000 images: tau 0.53 real, 0.37 / 0.40 generator); about 25 min per SPOS seed on one core
    "cpu_5k_xlong": _cpu_5k_longer("cpu_5k_xlong", 300),
    # Twice that (600 epochs, 46,800 steps), for SPOS: from 2,340 to 23,400 steps its found cell rose by 1.3-4.5
    # points per source and stopped 0.32 short of 93.0 on full synthesis; does the rise go on? About 50 min per
    # seed on one core (a killed search resumes at its last epoch)
    "cpu_5k_xxlong": _cpu_5k_longer("cpu_5k_xxlong", 600),
}
