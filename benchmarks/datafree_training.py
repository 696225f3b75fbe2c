"""Data-free training: the found network trained from scratch on synthetic images only, tested on real images.

Takes an NAS-Bench-201 cell (``--arch``, or by default the best cell ``search_quality.py`` found on full
synthetic data), builds its network at the size given by the budget, and trains it from scratch with
``dfnas.train.train_network`` under the same settings and image count in four ways:

- ``synthetic_kd``        full synthetic data, distillation on the stored teacher logits (the pipeline default);
- ``synthetic_kd_online`` full synthetic data, distillation from the teacher on every augmented batch;
- ``calibrated_kd``       the synthesis preset ``calibrated`` (soft rounds that keep the class similarities, no
                          regional update), distillation on the stored teacher logits;
- ``calibrated_rce20_kd`` as ``calibrated_kd`` with round 0 at loss T=2 and round 1's cross-entropy weighted 20
                          (the setting that meets the calibration bar);
- ``real_hard``           real (JPEG) CIFAR-10 training images with their true labels (the usual baseline);
- ``real_kd_online``      the same real images, distillation from the teacher (not data-free: reference).

Each is scored by top-1 on the bit-exact real CIFAR-10 test subset (1,017 images, true labels), next to the
teacher's own top-1 on the same images.

    python benchmarks/datafree_training.py --budget smoke
    python benchmarks/datafree_training.py --budget cpu                # after search_quality.py --budget cpu
    python benchmarks/datafree_training.py --budget cpu --arch '|nor_conv_3x3~0|+|...~0|...~1|+|...|'

Resumable: one JSON per (arch, variant, seed) under benchmarks/_work/<budget>/datafree_training/cells/.
Writes datafree_training_<budget>.{json,md,png} into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import costs  # noqa: E402
import reporting  # noqa: E402
from common import SOURCES, DataBudget  # noqa: E402

NAME = "datafree_training"


@dataclass(frozen=True)
class Variant:
    label: str
    source: str  # a common.SOURCES name
    online_teacher: bool
    data_free: bool


VARIANTS: dict[str, Variant] = {
    "synthetic_kd": Variant("synthetic (full), distillation on stored teacher logits", "full", False, True),
    "synthetic_kd_online": Variant("synthetic (full), online teacher distillation", "full", True, True),
    "calibrated_kd": Variant("synthetic (`calibrated` preset), distillation on stored teacher logits", "calibrated",
                             False, True),
    "calibrated_rce20_kd": Variant("synthetic (round 0 at T=2, round-1 CE weight 20), distillation on stored "
                                   "teacher logits", "calibrated_rce20", False, True),
    "real_hard": Variant("real (JPEG), true hard labels", "real", False, False),
    "real_kd_online": Variant("real (JPEG), online teacher distillation", "real", True, False),
}


@dataclass(frozen=True)
class Budget:
    data: DataBudget
    space: dict[str, Any]  # NB201 options of the trained network
    train: dict[str, Any]  # dfnas.train.TrainConfig fields, the same for every variant
    seeds: tuple[int, ...]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"data": self.data.as_dict(), "space": self.space, "train": self.train, "seeds": list(self.seeds)}


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(data=common.DATA_BUDGETS["smoke"], space={"C": 4, "N": 1},
                    train={"epochs": 1, "batch_size": 10, "max_steps": 2}, seeds=(0,),
                    note="smoke: sizes cut down to check the script runs; the numbers mean nothing"),
    # The benchmark's own network size (C=16, N=5) on 1,000 images per variant (the datasets of
    # ranking_consistency), 40 epochs of batch 64 (600 SGD steps, TrainConfig's recipe: Nesterov SGD 0.05 with
    # cosine decay, weight decay 5e-4, distillation temperature 4).
    "cpu": Budget(data=common.DATA_BUDGETS["cpu_train"], space={"C": 16, "N": 5},
                  train={"epochs": 40, "batch_size": 64, "lr": 0.05, "lr_min": 0.0, "nesterov": True,
                         "weight_decay": 5e-4, "temperature": 4.0},
                  seeds=(0, 1),
                  note="cpu: 1,000 images per variant; network C=16 N=5 (NAS-Bench-201 size); 40 epochs x batch 64 "
                       "(600 steps)"),
}


def cell_hash(budget: Budget, arch: str, variant: str, seed: int) -> str:
    return common.stable_hash({"budget": {k: v for k, v in budget.as_dict().items() if k != "seeds"},
                               "arch": arch, "variant": dataclasses.asdict(VARIANTS[variant]), "seed": seed})


def pick_arch(args: argparse.Namespace, work: Path, table: Any) -> tuple[str, str]:
    """(architecture string, how it was chosen): --arch, else the published report's, else the best cell
    search_quality.py found on full synthetic data at this budget."""
    if args.arch:
        return table.lookup(args.arch)["arch"], "given with --arch"
    # the published report's architecture first: its cells are adopted, and new cells must add to them
    published = common.RESULTS_DIR / f"{NAME}_{args.budget}.json"
    if published.is_file() and (summary := json.loads(published.read_text())).get("arch"):
        return summary["arch"], summary.get("arch_choice") or "the published report's architecture"
    cells_dir = work / "search_quality" / "cells" / "full"
    found = []
    for p in sorted(cells_dir.glob("*/seed*.json")):
        try:
            found.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    if found:
        best = max(found, key=lambda c: (c["nb201_cifar10"], c["arch"]))
        return best["arch"], (f"best of the {len(found)} cells search_quality.py found on full synthetic data "
                              f"(by NB201 accuracy; found by {best['method']}, seed {best['seed']})")
    if args.budget == "smoke" or args.estimate_only:
        best = table.best("cifar10")
        return best["arch"], "NAS-Bench-201's best cell (fallback: no search_quality result for this budget yet)"
    raise SystemExit(f"no search result under {cells_dir}: run `python benchmarks/search_quality.py --budget "
                     f"{args.budget} --sources full` first, or pass --arch")


def estimate(budget: Budget, variants: list[str], n_runs_per_variant: int, cal: costs.Calibration,
             cal_big: costs.Calibration) -> float:
    """Seconds for the training runs (``cal_big`` timed at the trained network's size)."""
    n = budget.data.n_images
    bs = min(int(budget.train["batch_size"]), n)
    steps = int(budget.train["epochs"]) * max(1, n // bs)
    if budget.train.get("max_steps"):
        steps = min(steps, int(budget.train["max_steps"]))
    total = 0.0
    for v in variants:
        per = steps * bs * (cal_big.path_step + (cal.teacher_eval if VARIANTS[v].online_teacher else 0.0))
        total += n_runs_per_variant * (per + 1017 * cal_big.path_eval)
    return total


def summarize(budget_name: str, budget: Budget, arch: str, how: str, gt: dict[str, Any], cells: list[dict[str, Any]],
              variants: list[str], teacher_top1: float, data_info: dict[str, Any]) -> tuple[dict[str, Any], str]:
    groups = {}
    for v in variants:
        cs = sorted((c for c in cells if c["variant"] == v), key=lambda c: c["seed"])
        if cs:
            m, s = reporting.mean_std([c["test_top1"] for c in cs])
            groups[v] = {"label": VARIANTS[v].label, "data_free": VARIANTS[v].data_free,
                         "seeds": [c["seed"] for c in cs], "test_top1": [c["test_top1"] for c in cs],
                         "mean": m, "std": s,
                         "train_time_mean_s": reporting.mean_std([c["train_time_s"] for c in cs])[0]}
    summary = {"benchmark": NAME, "budget": budget_name, "budget_settings": budget.as_dict(), "arch": arch,
               "arch_choice": how, "nb201": gt, "teacher": {"name": common.TEACHER_NAME, "test_top1": teacher_top1},
               "groups": groups, "cells": cells, "data": data_info, "environment": reporting.environment()}
    lines = [f"# Data-free training of the found network ({budget_name} budget)\n",
             f"{budget.note}. Architecture `{arch}` ({how}); NAS-Bench-201 ground truth with full CIFAR-10 "
             f"training for 200 epochs: {gt['cifar10']:.2f} %.\n",
             "Top-1 (%) on the 1,017 bit-exact real CIFAR-10 test images (true labels), mean ± sample std over "
             "training seeds. Every row trains the same network from scratch with the same settings on the same "
             "number of images.\n"]
    rows = [[g["label"], "yes" if g["data_free"] else "no", reporting.fmt_pm(g["test_top1"]),
             ", ".join(f"{a:.2f}" for a in g["test_top1"]), common.fmt_duration(g["train_time_mean_s"])]
            for g in groups.values()]
    rows.append([f"teacher ({common.TEACHER_NAME}, trained on all 50,000 real images)", "–", f"{teacher_top1:.2f}",
                 "–", "–"])
    lines.append(reporting.md_table(["training data and supervision", "data-free", "top-1 real test",
                                  "per seed", "train time"], rows))
    lines.append("\n'online teacher distillation' = KL to the teacher's logits on the very augmented batch the "
                 "student sees (T=4); 'stored teacher logits' = KL to the logits saved with each synthetic image "
                 "(centre crop). The real images are the lossy JPEG copy of CIFAR-10 training images.\n")
    return summary, "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    plt = reporting.pyplot()
    groups = summary["groups"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = list(groups)
    ax.barh(range(len(names)), [groups[v]["mean"] for v in names], xerr=[groups[v]["std"] for v in names],
            color=["tab:blue" if groups[v]["data_free"] else "tab:gray" for v in names], alpha=0.85, capsize=3)
    for i, v in enumerate(names):
        ax.scatter(groups[v]["test_top1"], [i] * len(groups[v]["test_top1"]), color="k", s=10, zorder=3)
    ax.axvline(summary["teacher"]["test_top1"], ls="--", color="green", lw=1, label="teacher")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([groups[v]["label"] for v in names], fontsize=7)
    ax.set_xlabel("top-1 on real exact CIFAR-10 test images (%)")
    ax.set_xlim(0, 100)
    ax.set_title(f"Found network trained from scratch ({summary['budget']} budget; blue = data-free)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return reporting.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(BUDGETS))
    common.add_training_args(p, list(VARIANTS), None, "best found by search_quality")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = BUDGETS[args.budget]
    variants, seeds = common.chosen_variants_and_seeds(args, list(VARIANTS), budget.seeds)
    progress = not args.quiet

    from dfnas.spaces.nb201 import NB201Space
    from dfnas.spaces.nb201_table import NB201Table
    from dfnas.train import evaluate, train_network

    table = NB201Table.load()
    arch_str, how = pick_arch(args, work, table)
    gt = table.lookup(arch_str)
    arch = NB201Space.parse(arch_str)
    key = f"nb201-{gt['index']}"
    store = common.CellStore(work / NAME / "cells")
    common.adopt_published(store, common.RESULTS_DIR / f"{NAME}_{args.budget}.json",
                           lambda c: (f"nb201-{table.lookup(c['arch'])['index']}", c["variant"],
                                      f"seed{c['seed']}"))
    runs = work / NAME / "runs"
    real_test = common.real_test_set()
    todo = [] if args.summary_only else [
        (v, k) for v in variants for k in seeds
        if store.get(key, v, f"seed{k}", cell_hash=cell_hash(budget, arch_str, v, k)) is None]
    common.log(f"{NAME} [{args.budget}]: arch {arch_str} ({how}); {len(todo)} trainings to run")
    if todo or args.estimate_only:
        # the teacher and a small supernet for the synthesis / online-teacher costs; the trained network itself
        cals = costs.calibrate({"C": 8, "N": 1}, int(budget.train["batch_size"]), need_teacher=True)
        big = costs.calibrate(budget.space, int(budget.train["batch_size"]), need_teacher=False,
                               need_supernet=False)
        srcs = {VARIANTS[v].source for v, _ in todo}
        for what, i in (("at the current load", 0), ("with the cores to itself", 1)):
            runs_s = sum(estimate(budget, [v], 1, cals[i], big[i]) for v, _ in todo)
            data_s = costs.synthesis_estimate(srcs, budget.data, work, cals[i])
            common.log(f"estimate {what}: datasets {common.fmt_duration(data_s)}, "
                       f"trainings {common.fmt_duration(runs_s)}")
        if args.estimate_only:
            return 0
        eta = common.Eta(sum(estimate(budget, [v], 1, cals[0], big[0]) for v, _ in todo))
    data: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for v, k in todo:
        src = VARIANTS[v].source
        if src not in data:
            data[src], info[src] = common.prepare_source(src, budget.data, work, progress)
            common.put_source_info(work / NAME, src, info[src])
        # the static dataset as it is (online synthesis, on by default for synthetic training sets, is
        # measured by datafree_wallclock.py); outside the cell hash: the cells' meaning is unchanged
        cfg = {**budget.train, "seed": k, "held_out": 0.0, "device": "cpu",
               "online": {"enabled": False}}
        common.log(f"training {v} seed {k}")
        t0 = time.perf_counter()
        run_dir = runs / key / v / common.run_name(f"seed{k}", cell_hash(budget, arch_str, v, k))
        online = common.teacher() if VARIANTS[v].online_teacher else None
        res = train_network(cfg, arch, {"name": "nb201", **budget.space}, data[src], run_dir, device="cpu",
                            test_data=real_test, progress=progress, teacher=online)
        rec = {"variant": v, "seed": k, "arch": arch_str, "source": src, "test_top1": res["test_top1"],
               "test_n": res["test_n"], "train_time_s": res["train_time_s"], "weight_steps": res["weight_steps"],
               "label_mode": res["label_mode"], "online_teacher": res["online_teacher"], "macs": res.get("macs"),
               "params": res.get("params"), "load_average_1min": common.load_average()}
        store.put(rec, key, v, f"seed{k}", cell_hash=cell_hash(budget, arch_str, v, k))
        common.log(f"  {v} seed {k}: top-1 {rec['test_top1']:.2f}% on real test; "
                   f"{eta.done(estimate(budget, [v], 1, cals[0], big[0]), time.perf_counter() - t0)}")
    # every finished cell of the budget, not only this invocation's, so pieces run apart add up to one report
    all_seeds = sorted(set(seeds) | set(budget.seeds) | store.seeds())
    cells = [c for v in VARIANTS for k in all_seeds
             if (c := store.get(key, v, f"seed{k}", cell_hash=cell_hash(budget, arch_str, v, k))) is not None]
    shown = [v for v in VARIANTS if any(c["variant"] == v for c in cells)]
    teacher_top1 = evaluate(common.teacher(), real_test)
    data_info = {s: {"label": SOURCES[s].label, **common.get_source_info(work / NAME, s)}
                 for s in {VARIANTS[v].source for v in shown}}
    summary, md = summarize(args.budget, budget, arch_str, how, gt, cells, shown, teacher_top1, data_info)
    reporting.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "data-free training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
