"""Recursive label calibration: does each round carry more of the teacher's relative semantics?

For each setting, a dataset is synthesized with several rounds of recursive calibration (round 0: one-hot
targets; round k+1: the teacher's soft predictions on round k's images, from fresh inputs), then inspected
with ``dfnas.synthesis.inspect`` against the real test subset: per round, the teacher's mean entropy, the
mass of its second class, and the Spearman correlation between the class-similarity matrix of the round
(S[i, j] = mean teacher probability of class j on images of target class i, T = 1, centre crops) and the
same matrix on the real images grouped by their true label (90 off-diagonal entries).

What real images reach on the same measure is printed too (the ceiling): two halves of the real test images
against each other, and other real image sets against the test images.

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
    "generator4_T2": Setting("generator, 4 steps per batch, targets T=2, loss T=1", {
        "method": "generator", "generator": {"steps": 4}, "calibration_temperature": 2.0,
        "calibration_loss_temperature": 1.0}),
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


def references() -> dict[str, float]:
    """What real images score on the same measure: the two halves (even/odd index) of the real test images
    against each other, and other real sets (the 5,085 bit-exact training images the teacher was trained on,
    3,000 JPEG test images) against the 1,017 test images: the ceiling a synthetic set can hope for."""
    import torch

    from dfnas.data import open_dataset
    from dfnas.synthesis.inspect import class_similarity, similarity_spearman

    t = common.teacher()

    def probs(ds: Any) -> Any:
        with torch.no_grad():
            return torch.softmax(t.predict(ds.images.float() / 255.0), 1)

    real = common.real_test_set()
    k = real.num_classes
    p = probs(real)
    ref = class_similarity(p, real.hard_labels, k)
    half = torch.arange(len(real)) % 2 == 0
    out = {"real_test_halves": similarity_spearman(class_similarity(p[half], real.hard_labels[half], k),
                                                   class_similarity(p[~half], real.hard_labels[~half], k))}
    for name, ds in (("real_train_exact_5085", open_dataset(common.asset("cifar10", "exact_train_5085.npz"))),
                     ("real_test_jpeg_3000", open_dataset(common.asset("cifar10", "jpeg", "test"), 300))):
        out[name] = similarity_spearman(class_similarity(probs(ds), ds.hard_labels, k), ref)
    return out


def summarize(budget_name: str, budget: Budget, cells: list[dict[str, Any]], refs: dict[str, float]
              ) -> tuple[dict, str]:
    summary = {"benchmark": NAME, "budget": budget_name, "note": budget.note, "cells": cells,
               "real_references": refs, "real_halves_spearman": refs["real_test_halves"],
               "environment": common.environment()}
    lines = [f"# Recursive label calibration ({budget_name} budget)\n",
             f"{budget.note}; ResNet-20 teacher. Spearman = rank correlation of the 90 off-diagonal entries of the "
             "class-similarity matrix (teacher probabilities at T=1, centre crops) with the one of the 1,017 real "
             "test images. What real images reach on this measure: two halves of the test images against each other "
             f"{refs['real_test_halves']:.3f}; the 5,085 exact training images {refs['real_train_exact_5085']:.3f}; "
             f"3,000 JPEG test images {refs['real_test_jpeg_3000']:.3f}.\n"]
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
    refs = summary["real_references"]
    axes[0].axhline(refs["real_test_halves"], ls="--", color="gray", lw=1, label="real test half vs half")
    axes[0].axhline(refs["real_train_exact_5085"], ls=":", color="black", lw=1, label="5,085 real training images")
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
    summary, md = summarize(args.budget, budget, cells, references())
    common.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "calibration per round")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
