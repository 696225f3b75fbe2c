"""Where data-free training loses to real data, step for step: one network, one recipe, one step count.

``datafree_wallclock`` shows that after the same steps the data-free network reaches about 0.8 of the same
network trained on real images. This benchmark looks for where that gap lies. Every setting trains the default
run's cell (C=8 N=1) from scratch with the default run's distillation recipe (Nesterov SGD, cosine, T=16 on
mixup batches that the online teacher labels) for the same steps of the same batch size, on 10,000 images:

- ``generator``        the few-step generator's static 10,000 images (data-free);
- ``generator_online`` the same images as a replay bank the generator keeps refreshing (1,000 new images an
                       epoch; the default run's data-free training): do fresh images help at this length?
- ``real``             10,000 real JPEG training images, labelled the same way by the teacher (not data-free);
- ``generator_lr01``   the static images with a larger step and less weight decay (lr 0.1, 5e-5): is the
                       recipe, tuned on nothing in particular, what holds the data-free student back?
- ``real_lr01``        the real images with that optimizer (does it help real data as much?).

After training, three diagnostics on every cell (the trained weights are left as they are):

- ``bn_real``: the student's BatchNorm running statistics re-estimated on the 10,000 real training images
  (uses real data: a diagnostic only). If the synthetic images' feature statistics were what the student lacked,
  this would recover much of the gap;
- ``bn_own``: the same re-estimation on the cell's own training images, the control (the running averages
  of training replaced by exact statistics of the same images);
- ``agree_own`` / ``agree_real``: how often the student's top class is the teacher's, on the centre crops of
  its own training images (with online synthesis, the set the bank started from) and on the real test images.
  A student that follows the teacher on the images it trained on but not on real ones learned the teacher only
  where those images lie.

    python benchmarks/datafree_gap.py --budget smoke
    python benchmarks/datafree_gap.py --budget cpu [--variants generator,real] [--seeds 0,1,2]

Resumable per (setting, seed) cell under benchmarks/_work/<budget>/datafree_gap/cells/; a killed cell is
trained again from the start. Writes datafree_gap_<budget>.{json,md,png}.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import reporting  # noqa: E402
from common import DataBudget  # noqa: E402

NAME = "datafree_gap"


@dataclass(frozen=True)
class Setting:
    label: str
    source: str  # a common.SOURCES name
    data_free: bool
    online: bool = False  # online synthesis: the generator refreshes a replay bank of the images
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the budget's


SETTINGS: dict[str, Setting] = {
    "generator": Setting("few-step generator, static", "generator", True),
    "generator_online": Setting("few-step generator, online synthesis + replay bank", "generator", True, True),
    "real": Setting("real (JPEG), same teacher labels", "real", False),
    "generator_lr01": Setting("few-step generator, lr 0.1, weight decay 5e-5", "generator", True,
                              train={"lr": 0.1, "weight_decay": 5e-5}),
    "real_lr01": Setting("real (JPEG), same teacher labels, lr 0.1, weight decay 5e-5", "real", False,
                         train={"lr": 0.1, "weight_decay": 5e-5}),
}


@dataclass(frozen=True)
class Budget:
    data: DataBudget
    space: dict[str, Any]
    train: dict[str, Any]  # TrainConfig fields shared by every setting; epochs follow from max_steps
    seeds: tuple[int, ...]
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"data": self.data.as_dict(), "space": self.space, "train": self.train}


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(DataBudget(40, "tiny", {"batch_size": 20, "steps": 4, "generator": {"warmup_batches": 1}}),
                    {"C": 4, "N": 1}, {"batch_size": 10, "max_steps": 6, "temperature": 16.0, "mix": "mixup",
                                      "online": {"batch_size": 10}},
                    (0,), "smoke: sizes cut down to check the script runs; the numbers mean nothing"),
    # the default run's training recipe (dfnas/presets/default.yaml), 1,000 steps instead of its 2,340; the
    # 10,000 images are the ones datafree_wallclock's cpu budget trains on (the same cached datasets)
    "cpu": Budget(DataBudget(10000, "default", home="cpu"), {"C": 8, "N": 1},
                  {"batch_size": 128, "lr": 0.05, "lr_min": 0.0, "nesterov": True, "weight_decay": 5e-4,
                   "temperature": 16.0, "mix": "mixup", "max_steps": 1000}, (0, 1, 2),
                  "cpu: 1,000 steps of batch 128 on a C=8 N=1 network, 10,000 images, distillation from the online "
                  "teacher at T=16 on mixup batches (the default run's recipe)"),
}


def cell_hash(budget: Budget, arch: str, setting: str, seed: int) -> str:
    return common.stable_hash({"budget": budget.as_dict(), "arch": arch,
                               "setting": dataclasses.asdict(SETTINGS[setting]), "seed": seed})


def bn_reestimated_top1(model: Any, images: Any, real_test: Any) -> float:
    """Top-1 on ``real_test`` of a copy of ``model`` whose BatchNorm statistics are re-estimated on the centre
    crops of ``images`` (an ImageSet); the weights are unchanged."""
    import torch

    from dfnas.data import iterate_batches
    from dfnas.search.bn import recalibrate_bn
    from dfnas.train import evaluate

    m = copy.deepcopy(model)
    recalibrate_bn(m, (x for x, _ in iterate_batches(images, 250, None, augment=False, device=torch.device("cpu"))))
    return evaluate(m, real_test, "cpu")


def teacher_agreement(model: Any, images: Any) -> float:
    """Percent of the centre crops of ``images`` (an ImageSet) on which ``model`` and the teacher pick the same
    class (both in eval mode): the student's top-1 against the teacher's top classes."""
    from dfnas.synthesis.methods import teacher_logits
    from dfnas.train import evaluate

    labels = teacher_logits(common.teacher(), images.images, images.input_size).argmax(1)
    return evaluate(model, common.with_hard_targets(images, labels), "cpu")


def run_cell(budget: Budget, arch_str: str, name: str, seed: int, ds: Any, real_train: Any, run_dir: Path,
             progress: bool) -> dict[str, Any]:
    """Train one setting from scratch, then measure the BatchNorm and agreement diagnostics."""
    from dfnas.spaces.nb201 import NB201Space
    from dfnas.train import evaluate, train_network

    s = SETTINGS[name]
    real_test = common.real_test_set()
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed cell starts over (the trained model is needed below)
    cfg = {**budget.train, **s.train, "epochs": common.epochs_for_steps(budget.train, len(ds)), "seed": seed,
           "held_out": 0.0, "device": "cpu",
           "online": {**budget.train.get("online", {}), "enabled": s.online}}
    trained: dict[str, Any] = {}
    t0 = time.perf_counter()
    res = train_network(cfg, NB201Space.parse(arch_str), {"name": "nb201", **budget.space}, ds, run_dir,
                        device="cpu", test_data=real_test, progress=progress, teacher=common.teacher(),
                        on_step=lambda ctx: trained.__setitem__("model", ctx.model))
    train_s = time.perf_counter() - t0
    model = trained["model"]  # the loop's network, updated in place: its final weights
    top1 = evaluate(model, real_test, "cpu")
    if abs(top1 - res["test_top1"]) > 1e-9:
        raise RuntimeError(f"the captured network scores {top1}, the run reported {res['test_top1']}")
    return {"setting": name, "seed": seed, "arch": arch_str, "source": s.source, "n_images": len(ds),
            "train_seconds": round(train_s, 2), "weight_steps": res["weight_steps"], "test_top1": top1,
            "bn_real": bn_reestimated_top1(model, real_train, real_test),
            "bn_own": bn_reestimated_top1(model, ds, real_test), "agree_own": teacher_agreement(model, ds),
            "agree_real": teacher_agreement(model, real_test), "load_average_1min": common.load_average()}


def summarize(budget_name: str, budget: Budget, arch: str, cells: list[dict[str, Any]]) -> tuple[dict, str]:
    shown = [k for k in SETTINGS if any(c["setting"] == k for c in cells)]
    groups: dict[str, Any] = {}
    for k in shown:
        cs = [c for c in cells if c["setting"] == k]
        groups[k] = {"label": SETTINGS[k].label, "data_free": SETTINGS[k].data_free,
                     "seeds": [c["seed"] for c in cs],
                     **{m: [c[m] for c in cs] for m in ("test_top1", "bn_real", "bn_own", "agree_own", "agree_real",
                                                   "train_seconds")}}
    by_seed = {k: {m: {c["seed"]: c[m] for c in cells if c["setting"] == k} for m in ("test_top1", "bn_real")}
               for k in shown}
    comparisons: dict[str, Any] = {}
    if "generator" in by_seed and "real" in by_seed:
        comparisons["real - generator"] = reporting.paired_difference(by_seed["real"]["test_top1"],
                                                                      by_seed["generator"]["test_top1"])
        comparisons["generator: bn_real - trained"] = reporting.paired_difference(
            by_seed["generator"]["bn_real"], by_seed["generator"]["test_top1"])
        comparisons["real: bn_real - trained"] = reporting.paired_difference(
            by_seed["real"]["bn_real"], by_seed["real"]["test_top1"])
        real_m = reporting.mean_std(groups["real"]["test_top1"])[0]
        for k in shown:
            if SETTINGS[k].data_free:
                groups[k]["ratio_to_real"] = reporting.mean_std(groups[k]["test_top1"])[0] / real_m
    for a, b in (("generator_online", "generator"), ("generator_lr01", "generator"), ("real_lr01", "real")):
        if a in by_seed and b in by_seed:
            comparisons[f"{a} - {b}"] = reporting.paired_difference(by_seed[a]["test_top1"], by_seed[b]["test_top1"])
    summary = {"benchmark": NAME, "budget": budget_name, "budget_settings": budget.as_dict(), "arch": arch,
               "groups": groups, "comparisons": comparisons, "cells": cells, "environment": reporting.environment()}
    lines = [f"# Where data-free training loses to real data, step for step ({budget_name} budget)\n",
             f"{budget.note}. Network: NAS-Bench-201 cell `{arch}`, trained from scratch. Top-1 (%) on the 1,017 "
             "bit-exact real CIFAR-10 test images, mean ± sample std over seeds.\n"]
    rows = [[f"`{k}`: {g['label']}", "yes" if g["data_free"] else "no", reporting.fmt_pm(g["test_top1"]),
             f"{g['ratio_to_real']:.2f}" if "ratio_to_real" in g else "–", reporting.fmt_pm(g["bn_real"]),
             reporting.fmt_pm(g["bn_own"]), reporting.fmt_pm(g["agree_own"]), reporting.fmt_pm(g["agree_real"]),
             len(g["seeds"])] for k, g in groups.items()]
    lines.append(reporting.md_table(["images and recipe", "data-free", "top-1 after training", "ratio to real",
                                     "BN statistics re-estimated on real images", "… on its own images",
                                     "agrees with the teacher on its own images", "… on real test images", "seeds"],
                                    rows))
    lines.append("The two BatchNorm columns keep the trained weights and only re-estimate the running statistics "
                 "(on as many real training images, a diagnostic that uses real data; or on the network's own "
                 "training images, the control). The agreement columns: how often the student's top class is the "
                 "teacher's, on the centre crops of its own training images and on the real test images.\n")
    crow = [[name, ", ".join(f"{d:+.2f}" for d in c["diffs"]), f"{c['mean_diff']:+.2f}",
             f"{c['ci'][0]:+.2f} to {c['ci'][1]:+.2f}", f"{c['p_t']:.3f}", c["verdict"]]
            for name, c in comparisons.items() if c is not None]
    if crow:
        lines.append("Paired over seeds (a − b; 95 % t interval):\n")
        lines.append(reporting.md_table(["a − b", "per seed", "mean", "95 % CI", "t-test p", "verdict"], crow))
    return summary, "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Left: top-1 on the real test images after training and after each BatchNorm re-estimation; right: the
    student's agreement with the teacher on its own images and on the real test images. Dots are seeds."""
    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    groups = summary["groups"]
    panels = [(axes[0], [("test_top1", "after training", "tab:blue"), ("bn_real", "BN stats on real images",
                                                                       "tab:orange"),
                         ("bn_own", "BN stats on own images", "tab:gray")], "top-1 on real test images (%)"),
              (axes[1], [("agree_own", "on its own images", "tab:green"), ("agree_real", "on real test images",
                                                                          "tab:purple")],
               "agrees with the teacher (%)")]
    for ax, metrics, ylabel in panels:
        width = 0.8 / len(metrics)
        for j, (m, label, colour) in enumerate(metrics):
            for i, g in enumerate(groups.values()):
                x = i + (j - (len(metrics) - 1) / 2) * width
                ax.bar(x, reporting.mean_std(g[m])[0], width, color=colour, alpha=0.7, label=label if i == 0 else None)
                ax.scatter([x] * len(g[m]), g[m], color="black", s=8, zorder=3)
        ax.set_xticks(range(len(groups)), list(groups), fontsize=7, rotation=20)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Same network, recipe and steps ({summary['budget']} budget); dots = seeds", fontsize=9)
    return reporting.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(BUDGETS))
    common.add_training_args(p, list(SETTINGS), common.DEFAULT_RUN_CELL, "the default run's")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = BUDGETS[args.budget]
    settings, seeds = common.chosen_variants_and_seeds(args, list(SETTINGS), budget.seeds)
    store = common.CellStore(work / NAME / "cells")
    key = "arch-" + common.stable_hash(args.arch)[:8]
    common.adopt_published(store, common.RESULTS_DIR / f"{NAME}_{args.budget}.json",
                           lambda c: ("arch-" + common.stable_hash(c["arch"])[:8], c["setting"], f"seed{c['seed']}"))
    todo = [] if args.summary_only or args.estimate_only else [
        (k, s) for k in settings for s in seeds
        if store.get(key, k, f"seed{s}", cell_hash=cell_hash(budget, args.arch, k, s)) is None]
    common.log(f"{NAME} [{args.budget}]: {len(todo)} trainings to run")
    if args.estimate_only:
        common.log(f"about {len(todo) or len(settings) * len(seeds)} trainings of {budget.train['max_steps']} steps "
                   "(datafree_wallclock --estimate-only times one such training)")
        return 0
    if todo:
        from dfnas.data import read_real

        real_train = read_real(common.real_subset(budget.data.n_images, budget.data.root(work)))
    for k, s in todo:
        ds, _ = common.prepare_source(SETTINGS[k].source, budget.data, work, not args.quiet)
        common.log(f"training {k} seed {s} ({len(ds)} images)")
        h = cell_hash(budget, args.arch, k, s)
        run_dir = work / NAME / "runs" / key / k / common.run_name(f"seed{s}", h)
        rec = run_cell(budget, args.arch, k, s, ds, real_train, run_dir, not args.quiet)
        store.put(rec, key, k, f"seed{s}", cell_hash=h)
        common.log(f"  {k} seed {s}: top-1 {rec['test_top1']:.2f}% (BN on real {rec['bn_real']:.2f}, on own "
                   f"{rec['bn_own']:.2f}) after {rec['train_seconds']:.0f} s")
    cells = [c for k in SETTINGS for s in sorted(set(seeds) | set(budget.seeds) | store.seeds())
             if (c := store.get(key, k, f"seed{s}", cell_hash=cell_hash(budget, args.arch, k, s))) is not None]
    if not cells:
        common.log("no finished cells to summarize")
        return 0
    summary, md = summarize(args.budget, budget, args.arch, cells)
    reporting.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "data-free vs real, same steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
