"""Recursive label calibration: does each round carry more of the teacher's relative semantics?

For each setting, a dataset is synthesized with several rounds of recursive calibration (round 0: one-hot
targets; round k+1: the teacher's soft predictions on round k's images, from fresh inputs), then inspected
with ``dfnas.synthesis.inspect`` against the real test subset: per round, the teacher's mean entropy, the
mass of its second class, and the Spearman correlation between the class-similarity matrix of the round
(S[i, j] = mean teacher probability of class j on images of target class i, T = 1, centre crops) and the
same matrix on the real images grouped by their true label (90 off-diagonal entries).

The noise floor of that measure is printed too: the Spearman correlation between the matrices of two
random halves of the real test images themselves.

    python benchmarks/calibration.py --budget smoke
    python benchmarks/calibration.py --budget cpu [--settings generator_T2,generator_T4]

Resumable per setting (cells under benchmarks/_work/<budget>/calibration/cells/).
Writes calibration_<budget>.{json,md,png}.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402

NAME = "calibration"


@dataclass(frozen=True)
class Setting:
    label: str
    overrides: dict[str, Any]  # SynthesisConfig fields


SETTINGS: dict[str, Setting] = {
    "generator_sameT": Setting("generator, T=2 on targets and loss (before)", {
        "method": "generator", "calibration_temperature": 2.0, "calibration_loss_temperature": 2.0}),
    "generator_T2": Setting("generator, targets T=2, loss T=1", {
        "method": "generator", "calibration_temperature": 2.0, "calibration_loss_temperature": 1.0}),
    "generator_T4": Setting("generator, targets T=4, loss T=1", {
        "method": "generator", "calibration_temperature": 4.0, "calibration_loss_temperature": 1.0}),
}


@dataclass(frozen=True)
class Budget:
    n_images: int
    rounds: int
    preset: str
    extra: dict[str, Any]
    note: str


BUDGETS = {
    "smoke": Budget(60, 3, "tiny", {"batch_size": 20, "generator": {"warmup_batches": 1, "warmup_steps": 2}},
                    "smoke: sizes cut down; the numbers mean nothing"),
    "cpu": Budget(6000, 3, "default", {"batch_size": 128}, "cpu: 6,000 images in 3 rounds of 2,000"),
}


def run_setting(name: str, budget: Budget, work: Path, progress: bool) -> dict[str, Any]:
    import time

    from dfnas.synthesis import inspect_dataset, make_config, synthesize

    fields = {**budget.extra, **SETTINGS[name].overrides, "num_images": budget.n_images, "rounds": budget.rounds,
              "seed": common.DATA_SEED, "teacher_name": common.TEACHER_NAME}
    cfg = make_config(budget.preset, None, **fields)
    cfg.teacher.download = False
    out = work / NAME / "data" / name
    t0 = time.perf_counter()
    synthesize(cfg, out, teacher=common.teacher(), device="cpu", progress=progress)
    seconds = time.perf_counter() - t0
    rep = inspect_dataset(out, common.teacher(), real=common.asset("cifar10", "exact_test_1017.npz"))
    m = rep["metrics"]
    return {"setting": name, "seconds": round(seconds, 1), "spearman_all": m["similarity_spearman"],
            "per_round": m["per_round"], "agreement": m["agreement"]}


def noise_floor() -> float:
    """Spearman between the similarity matrices of the two halves (even/odd index) of the real test images."""
    import torch

    from dfnas.synthesis.inspect import class_similarity, similarity_spearman

    real = common.real_test_set()
    t = common.teacher()
    with torch.no_grad():
        p = torch.softmax(t.predict(real.images.float() / 255.0), 1)
    half = torch.arange(len(real)) % 2 == 0
    k = real.num_classes
    return similarity_spearman(class_similarity(p[half], real.hard_labels[half], k),
                               class_similarity(p[~half], real.hard_labels[~half], k))


def summarize(budget_name: str, budget: Budget, cells: list[dict[str, Any]], floor: float) -> tuple[dict, str]:
    summary = {"benchmark": NAME, "budget": budget_name, "note": budget.note, "cells": cells,
               "real_halves_spearman": floor, "environment": common.environment()}
    lines = [f"# Recursive label calibration ({budget_name} budget)\n",
             f"{budget.note}; ResNet-20 teacher. Spearman = rank correlation of the 90 off-diagonal entries of the "
             "class-similarity matrix (teacher probabilities at T=1, centre crops) with the one of the 1,017 real "
             f"test images. Noise floor: two random halves of the real images agree at {floor:.3f}.\n"]
    rows = []
    for c in cells:
        for r, rec in c["per_round"].items():
            rows.append([SETTINGS[c["setting"]].label, r, f"{rec['agreement']:.1%}", f"{rec['mean_entropy']:.3f}",
                         f"{rec['second_class_mass']:.3f}", f"{rec['similarity_spearman']:.3f}"])
        rows.append([SETTINGS[c["setting"]].label, "all", f"{c['agreement']:.1%}", "", "",
                     f"**{c['spearman_all']:.3f}**"])
    lines.append(common.md_table(["setting", "round", "teacher agreement", "entropy (nats)", "2nd-class mass",
                                  "Spearman vs real"], rows))
    return summary, "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for c in summary["cells"]:
        rounds = sorted(c["per_round"], key=int)
        axes[0].plot([int(r) for r in rounds], [c["per_round"][r]["similarity_spearman"] for r in rounds],
                     marker="o", label=SETTINGS[c["setting"]].label)
        axes[1].plot([int(r) for r in rounds], [c["per_round"][r]["mean_entropy"] for r in rounds], marker="o")
    axes[0].axhline(summary["real_halves_spearman"], ls="--", color="gray", lw=1, label="real half vs real half")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("class-similarity Spearman vs real")
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("teacher entropy (nats)")
    axes[0].legend(fontsize=6)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(BUDGETS))
    p.add_argument("--settings", default="all", help=f"comma-separated subset of {list(SETTINGS)}")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = BUDGETS[args.budget]
    names = common.parse_subset(args.settings, list(SETTINGS), "settings")
    store = common.CellStore(work / NAME / "cells")
    h = {n: common.stable_hash({"budget": budget.n_images, "rounds": budget.rounds, "preset": budget.preset,
                                "extra": budget.extra, "setting": SETTINGS[n].overrides}) for n in SETTINGS}
    for n in names:
        if not args.summary_only and store.get(n, cell_hash=h[n]) is None:
            common.log(f"calibration: {n}")
            store.put(run_setting(n, budget, work, not args.quiet), n, cell_hash=h[n])
    cells = [c for n in SETTINGS if (c := store.get(n, cell_hash=h[n])) is not None]
    summary, md = summarize(args.budget, budget, cells, noise_floor())
    common.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "calibration per round")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
