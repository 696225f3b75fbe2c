"""Data-free training against wall-clock time: real-test top-1 of the same network over synthesis + training time.

One network (the cell the default `dfnas run` found, at the default run's size C=8 N=1 unless ``--arch``) is
trained from scratch with ``dfnas.train.train_network`` for the same number of steps in each variant:

- ``full_kd``        today's static inversion (``full``, 200 pixel steps per image) at its affordable size;
- ``generator_kd_small`` the few-step generator at the very same image count (is it "usable"?);
- ``generator_kd``   the few-step generator, static set of the budget's size, online teacher distillation;
- ``generator_online`` the same set as a replay bank the generator keeps refreshing (adversarial term on);
- ``real_hard``      real JPEG training images (same count), true labels (not data-free);
- ``real_kd``        the same real images, online teacher distillation (not data-free).

Every variant is evaluated on the 1,017 bit-exact real test images every ``eval_every`` steps; its wall time
is the seconds its dataset took to make plus the training seconds so far (evaluation excluded). The summary
compares the variants at equal wall time (the top-1 each had reached by the time the slowest finished
making its data and training) and at the end of training.

    python benchmarks/datafree_wallclock.py --budget smoke
    python benchmarks/datafree_wallclock.py --budget cpu [--variants generator_kd,real_hard] [--seeds 0]

Resumable per (variant, seed) cell under benchmarks/_work/<budget>/datafree_wallclock/cells/; a cell whose
training was killed is trained again from the start (its timing must be uninterrupted).
Writes datafree_wallclock_<budget>.{json,md,png}.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import costs  # noqa: E402
import reporting  # noqa: E402
from common import DataBudget  # noqa: E402

NAME = "datafree_wallclock"


@dataclass(frozen=True)
class Variant:
    label: str
    source: str  # a common.SOURCES name
    small: bool  # True: the budget's small image count (what `full` can afford), else its full count
    online_synthesis: bool
    online_teacher: bool
    data_free: bool


VARIANTS: dict[str, Variant] = {
    "full_kd": Variant("static inversion (full), small set, online teacher", "full", True, False, True, True),
    "generator_kd_small": Variant("few-step generator, small set, online teacher", "generator", True, False, True,
                                  True),
    "generator_kd": Variant("few-step generator, static set, online teacher", "generator", False, False, True, True),
    "generator_online": Variant("few-step generator, online synthesis + replay bank", "generator", False, True, True,
                                True),
    "real_hard": Variant("real (JPEG), true labels", "real", False, False, False, False),
    "real_kd": Variant("real (JPEG), online teacher distillation", "real", False, False, True, False),
}


@dataclass(frozen=True)
class Budget:
    n_small: int
    n_large: int
    space: dict[str, Any]
    train: dict[str, Any]  # TrainConfig fields shared by every variant; epochs follow from max_steps
    eval_every: int
    seeds: tuple[int, ...]
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"n_small": self.n_small, "n_large": self.n_large, "space": self.space, "train": self.train,
                "eval_every": self.eval_every}


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(40, 40, {"C": 4, "N": 1}, {"batch_size": 10, "max_steps": 6,
                                              "online": {"batch_size": 10}}, 3, (0,),
                    "smoke: sizes cut down to check the script runs; the numbers mean nothing"),
    # the default run's network and training recipe: batch 128, Nesterov SGD 0.05 cosine, KD at T=4
    "cpu": Budget(1000, 10000, {"C": 8, "N": 1},
                  {"batch_size": 128, "lr": 0.05, "lr_min": 0.0, "nesterov": True,
                   "weight_decay": 5e-4, "temperature": 4.0, "max_steps": 1000}, 250, (0, 1),
                  "cpu: 1,000 steps of batch 128 on a C=8 N=1 network; 10,000 images (1,000 for the small sets)"),
    # the default run's training recipe of sessions 14-22 (dfnas/presets/default.yaml trains 30 epochs since
    # session 23; its cells are kept as measured): 36 epochs of the 10,000-image set
    # (2,808 steps of 128), distillation at T=16 on mixup batches; real images with true labels train with the
    # same steps without mixing (mixup needs the teacher to label the mixed images)
    "cpu_default": Budget(1000, 10000, {"C": 8, "N": 1},
                          {"batch_size": 128, "lr": 0.05, "lr_min": 0.0, "nesterov": True, "weight_decay": 5e-4,
                           "temperature": 16.0, "mix": "mixup", "max_steps": 2808}, 234, (0, 1),
                          "cpu_default: the default run's training recipe, 2,808 steps of batch 128 (36 epochs of "
                          "10,000 images), T=16, mixup wherever the teacher labels the batches; C=8 N=1 network"),
    # the default run's training recipe since session 23: 30 epochs (2,340 steps of 128), channels-last training
    "cpu_default30": Budget(1000, 10000, {"C": 8, "N": 1},
                            {"batch_size": 128, "lr": 0.05, "lr_min": 0.0, "nesterov": True, "weight_decay": 5e-4,
                             "temperature": 16.0, "mix": "mixup", "max_steps": 2340}, 234, (0, 1),
                            "cpu_default30: the default run's training recipe since session 23, 2,340 steps of batch "
                            "128 (30 epochs of 10,000 images), T=16, mixup wherever the teacher labels the batches; "
                            "C=8 N=1 network"),
}


def data_budget(budget_name: str, budget: Budget, variant: Variant) -> DataBudget:
    n = budget.n_small if variant.small else budget.n_large
    if budget_name == "smoke":
        return DataBudget(n, "tiny", {"batch_size": 20, "steps": 4, "generator": {"warmup_batches": 1}})
    return DataBudget(n, "default", home="cpu")


def estimate(budget_name: str, budget: Budget, todo: list[tuple[str, int]], cal: costs.Calibration,
             cal_big: costs.Calibration) -> float:
    """Seconds for the trainings ``todo`` ((variant, seed) pairs; ``cal_big`` timed at the trained network's
    size): the weight steps, the online teacher's labels, the bank's refreshes and the real-test evaluations."""
    from dfnas.synthesis import make_config
    from dfnas.train.datafree import OnlineConfig

    bs, steps = int(budget.train["batch_size"]), int(budget.train["max_steps"])
    evals = steps // budget.eval_every + 1
    total = 0.0
    for v, _ in todo:
        var = VARIANTS[v]
        dbud = data_budget(budget_name, budget, var)
        n, b = dbud.n_images, min(bs, dbud.n_images)
        total += steps * b * (cal_big.path_step + (cal.teacher_eval if var.online_teacher else 0.0))
        total += evals * 1017 * cal_big.path_eval
        if var.online_synthesis:  # each epoch's new images: the generator's steps, each a teacher and student pass
            gen_steps = make_config(dbud.synth_preset, None, **dbud.synth_overrides).generator.steps
            new_images = steps / max(1, n // b) * OnlineConfig().refresh_fraction * n
            total += new_images * gen_steps * (cal.teacher_step + cal_big.path_step)
    return total


def cell_hash(budget: Budget, arch: str, variant: str, seed: int) -> str:
    return common.stable_hash({"budget": budget.as_dict(), "arch": arch, "variant": dataclasses.asdict(
        VARIANTS[variant]), "seed": seed})


def run_cell(budget: Budget, arch_str: str, v: str, seed: int, ds: Any, make_s: float, run_dir: Path,
             progress: bool) -> dict[str, Any]:
    """Train one variant from scratch, evaluating on the real test images along the way."""
    from dfnas.spaces.nb201 import NB201Space
    from dfnas.train import evaluate, train_network

    var = VARIANTS[v]
    real_test = common.real_test_set()
    curve: list[dict[str, float]] = []
    clock = {"start": 0.0, "eval": 0.0}

    def on_step(ctx: Any) -> None:
        if ctx.step % budget.eval_every == 0:
            t0 = time.perf_counter()
            top1 = evaluate(ctx.model, real_test, ctx.device)
            curve.append({"step": ctx.step, "train_s": round(t0 - clock["start"] - clock["eval"], 2),
                          "top1": top1})
            clock["eval"] += time.perf_counter() - t0

    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted cell starts over: its clock must be whole
    cfg = {**budget.train, "epochs": common.epochs_for_steps(budget.train, len(ds)), "seed": seed, "held_out": 0.0,
           "device": "cpu",
           "online": {**budget.train.get("online", {}), "enabled": var.online_synthesis}}
    if not var.online_teacher:
        cfg["mix"] = "none"  # mixed images need the teacher to label them
    teacher = common.teacher() if var.online_teacher else None
    clock["start"] = time.perf_counter()
    res = train_network(cfg, NB201Space.parse(arch_str), {"name": "nb201", **budget.space}, ds, run_dir,
                        device="cpu", test_data=real_test, progress=progress, teacher=teacher, on_step=on_step)
    total_train = time.perf_counter() - clock["start"] - clock["eval"]
    return {"variant": v, "seed": seed, "arch": arch_str, "source": var.source, "n_images": len(ds),
            "make_seconds": make_s, "train_seconds": round(total_train, 2), "test_top1": res["test_top1"],
            "weight_steps": res["weight_steps"], "images_made_online": res.get("images_made_online", 0),
            "curve": curve, "load_average_1min": common.load_average()}


def top1_at(cell: dict[str, Any], wall_s: float) -> float | None:
    """The top-1 a cell had reached by wall time ``wall_s`` (last evaluation at or before it)."""
    best = None
    for p in cell["curve"]:
        if cell["make_seconds"] + p["train_s"] <= wall_s:
            best = p["top1"]
    return best


def with_make_seconds(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells whose synthetic dataset came from a cache that had lost its make time (recorded 0) take the time
    another seed of the same variant recorded: every seed of a variant trains on the one dataset (made once, seed
    ``common.DATA_SEED``), so the time to make it is one number."""
    made: dict[str, float] = {}
    for c in cells:
        if c["make_seconds"]:
            made.setdefault(c["variant"], c["make_seconds"])
    return [{**c, "make_seconds": made[c["variant"]]} if not c["make_seconds"] and c["source"] != "real"
            and c["variant"] in made else c for c in cells]


def summarize(budget_name: str, budget: Budget, arch: str, cells: list[dict[str, Any]]) -> tuple[dict, str]:
    cells = with_make_seconds(cells)
    shown = [v for v in VARIANTS if any(c["variant"] == v for c in cells)]
    # equal wall time: the moment real images with true labels finished training (same seed)
    real_wall = {c["seed"]: c["make_seconds"] + c["train_seconds"] for c in cells if c["variant"] == "real_hard"}
    groups: dict[str, Any] = {}
    for v in shown:
        cs = [c for c in cells if c["variant"] == v]
        m, s = reporting.mean_std([c["test_top1"] for c in cs])
        groups[v] = {"label": VARIANTS[v].label, "data_free": VARIANTS[v].data_free, "seeds": [c["seed"] for c in cs],
                     "test_top1": [c["test_top1"] for c in cs], "mean": m, "std": s,
                     "n_images": cs[0]["n_images"],
                     "make_seconds": reporting.mean_std([c["make_seconds"] for c in cs])[0],
                     "train_seconds": reporting.mean_std([c["train_seconds"] for c in cs])[0]}
        at = [top1_at(c, real_wall[c["seed"]]) for c in cs if c["seed"] in real_wall]
        if at:  # None = still making its data at that moment: counted as chance (10 %)
            groups[v]["top1_at_real_wall"] = [10.0 if a is None else a for a in at]
    summary = {"benchmark": NAME, "budget": budget_name, "budget_settings": budget.as_dict(), "arch": arch,
               "groups": groups, "cells": cells, "environment": reporting.environment()}
    lines = [f"# Data-free training against wall-clock time ({budget_name} budget)\n",
             f"{budget.note}. Network: NAS-Bench-201 cell `{arch}`, trained from scratch. Top-1 (%) on the 1,017 "
             "bit-exact real CIFAR-10 test images, mean ± sample std over seeds. Wall time = seconds to make the "
             "data (0 for real images) + training seconds (evaluations excluded), on this 2-core CPU.\n"]
    real = groups.get("real_hard")
    rows = []
    for g in groups.values():
        at = g.get("top1_at_real_wall")
        ratio = "–"
        if g["data_free"] and real is not None and at:
            g["ratio_at_equal_wall"] = reporting.mean_std(at)[0] / real["mean"]
            ratio = f"{g['ratio_at_equal_wall']:.2f}"
        rows.append([g["label"], "yes" if g["data_free"] else "no", f"{g['n_images']:,}",
                     common.fmt_duration(g["make_seconds"]), common.fmt_duration(g["train_seconds"]),
                     reporting.fmt_pm(g["test_top1"]), reporting.fmt_pm(at) if at else "–", ratio])
    lines.append(reporting.md_table(["data and supervision", "data-free", "images", "making the data", "training",
                                  "top-1 after training", "top-1 at real's wall time", "ratio to real"], rows))
    lines.append("'top-1 at real's wall time': what each variant had reached when real JPEG with true labels finished "
                 "its training (same seed), counting the time to make its data; 'ratio to real' divides that by "
                 "real's final top-1 (the issue's bar: >= 0.9).\n")
    return summary, "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    plt = reporting.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colours = dict(zip(VARIANTS, ["tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:gray", "black"],
                       strict=True))
    for c in summary["cells"]:
        xs = [c["make_seconds"] + p["train_s"] for p in c["curve"]]
        ys = [p["top1"] for p in c["curve"]]
        label = VARIANTS[c["variant"]].label if c["seed"] == min(g for g in summary["groups"][c["variant"]]["seeds"])\
            else None
        ax.plot([c["make_seconds"], *xs], [10.0, *ys], marker=".", color=colours[c["variant"]], lw=1, label=label,
                ls="-" if VARIANTS[c["variant"]].data_free else "--")
    ax.set_xlabel("wall time: making the data + training (s, 2-core CPU)")
    ax.set_ylabel("top-1 on real test images (%)")
    ax.set_title(f"Same network, same steps ({summary['budget']} budget); dashed = uses real images", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return reporting.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = common.make_parser(__doc__, list(BUDGETS))
    common.add_training_args(p, list(VARIANTS), common.DEFAULT_RUN_CELL, "the default run's")
    args = p.parse_args(argv)
    work, out = common.setup(args)
    budget = BUDGETS[args.budget]
    variants, seeds = common.chosen_variants_and_seeds(args, list(VARIANTS), budget.seeds)
    store = common.CellStore(work / NAME / "cells")
    key = "arch-" + common.stable_hash(args.arch)[:8]
    common.adopt_published(store, common.RESULTS_DIR / f"{NAME}_{args.budget}.json",
                           lambda c: ("arch-" + common.stable_hash(c["arch"])[:8], c["variant"],
                                      f"seed{c['seed']}"))
    todo = [] if args.summary_only else [
        (v, k) for v in variants for k in seeds
        if store.get(key, v, f"seed{k}", cell_hash=cell_hash(budget, args.arch, v, k)) is None]
    common.log(f"{NAME} [{args.budget}]: {len(todo)} trainings to run")
    if todo or args.estimate_only:
        # the teacher and a small supernet for the teacher and synthesis costs; the trained network itself
        cals = costs.calibrate({"C": 8, "N": 1}, int(budget.train["batch_size"]), need_teacher=True)
        big = costs.calibrate(budget.space, int(budget.train["batch_size"]), need_teacher=False,
                              need_supernet=False)
        data = {(VARIANTS[v].source, VARIANTS[v].small): data_budget(args.budget, budget, VARIANTS[v])
                for v, _ in todo}
        for what, i in (("at the current load", 0), ("with the cores to itself", 1)):
            data_s = sum(costs.synthesis_estimate([src], dbud, work, cals[i]) for (src, _), dbud in data.items())
            common.log(f"estimate {what}: datasets {common.fmt_duration(data_s)}, "
                       f"trainings {common.fmt_duration(estimate(args.budget, budget, todo, cals[i], big[i]))}")
        if args.estimate_only:
            return 0
    for v, k in todo:
        var = VARIANTS[v]
        dbud = data_budget(args.budget, budget, var)
        ds, info = common.prepare_source(var.source, dbud, work, not args.quiet)
        # the time to make a dataset is recorded where it was made: under the budget that holds the data
        info_root = dbud.home_dir(work) / NAME / f"n{dbud.n_images}"
        src_info = common.get_source_info(info_root, var.source)
        common.put_source_info(info_root, var.source, info)
        make_s = float(info["make_seconds"] or src_info.get("make_seconds") or 0.0)
        if var.source != "real" and make_s == 0.0:
            common.log(f"warning: no recorded time for making {var.source!r} (cached before this benchmark)")
        common.log(f"training {v} seed {k} ({len(ds)} images, made in {make_s:.0f} s)")
        run_dir = work / NAME / "runs" / key / v / common.run_name(f"seed{k}", cell_hash(budget, args.arch, v, k))
        rec = run_cell(budget, args.arch, v, k, ds, make_s, run_dir, not args.quiet)
        store.put(rec, key, v, f"seed{k}", cell_hash=cell_hash(budget, args.arch, v, k))
        common.log(f"  {v} seed {k}: top-1 {rec['test_top1']:.2f}% after {rec['train_seconds']:.0f} s of training")
    # every finished cell of the budget, not only this invocation's, so pieces run apart add up to one report
    cells = [c for v in VARIANTS for k in sorted(set(seeds) | set(budget.seeds) | store.seeds())
             if (c := store.get(key, v, f"seed{k}", cell_hash=cell_hash(budget, args.arch, v, k))) is not None]
    summary, md = summarize(args.budget, budget, args.arch, cells)
    reporting.publish(out, f"{NAME}_{args.budget}", summary, md, plot, "data-free training vs wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
