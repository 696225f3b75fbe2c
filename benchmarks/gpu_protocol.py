"""The prepared device run: the two protocols that need a GPU, as one script run once on a lent machine.

Part A, data-free distillation as the field measures it: the ResNet-56 teacher -> synthetic images from the
few-step generator (2 rounds of recursive label calibration) -> a ResNet-20 student (space ``cifar_resnet``)
trained without real data (the generator keeps refreshing a replay bank, adversarial term and mixup on,
distillation at T=16: the default run's training recipe) -> top-1 on the 1,017 real test images, with the
teacher's own top-1 on them beside it.
Part B, the paper's own space: the ``darts-cifar10-paper`` preset (DARTS space, second-order DARTS) cut to
the budget, on synthetic images from the ResNet-20 teacher, then a short retrain of the found genotype at
the preset's evaluation size; top-1 of the exported network on the same real test images.

Part A's training is fitted to a time box: a calibration run of one epoch measures the seconds per weight
step on the machine (the replay bank's per-epoch refresh included), and the epochs are chosen so the planned
steps fit (the cosine schedule then ends on time).
Part B's retraining epochs are fixed by the budget (a run directory's identity holds them from the start).
Finished parts are kept: a rerun with the same ``--out`` skips them (and resumes a part that was killed).

    python benchmarks/gpu_protocol.py --budget smoke --out /tmp/gp   # CPU, about a minute: checks the script
    python benchmarks/gpu_protocol.py --budget h200 --out /tmp/gp    # the device run (below: two calls)

Writes gpu_protocol_<budget>.{json,md,png} into --out. On the lent machine (the device tool), the assets beside
the checkout do not travel: copy the few it needs into an ignored folder of the repo and carry it, once here:

    echo /.devassets/ >> .git/info/exclude; mkdir -p .devassets/cifar10
    cp -r ../shared/assets/teachers ../shared/assets/nb201 .devassets/
    cp ../shared/assets/cifar10/exact_test_1017.npz .devassets/cifar10/

then two calls of the device tool (each carrying ``.devassets``; about 11 MB travel; the machine's python3
has torch), each part sized to about 5 minutes, inside one command's 10-minute limit with room to spare:

    PYTHONUNBUFFERED=1 PYTHONPATH=. DFNAS_ASSETS=.devassets python3 benchmarks/gpu_protocol.py --budget h200 \
        --out /tmp/gp --parts a && cp /tmp/gp/gpu_protocol_h200.* $OUT/

and the same with ``--parts b`` on the still-warm machine, whose /tmp/gp keeps part A for the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: `common` sits beside this file

import common  # noqa: E402
import reporting  # noqa: E402

NAME = "gpu_protocol"


@dataclass(frozen=True)
class Budget:
    device: str
    a_teacher: str  # part A: teacher -> ResNet-20 student
    a_images: int
    a_synthesis: list[str]  # synthesis overrides (the few-step generator)
    a_train: dict[str, Any]  # TrainConfig fields (epochs are fitted to a_train_s)
    a_train_s: float  # seconds of student training
    b_overrides: list[str]  # `dfnas run --preset darts-cifar10-paper` overrides (part B)
    b_epochs: int  # epochs of the found genotype's retraining (fixed: the run's identity needs them up front)
    note: str = ""
    min_epochs: int = 1
    max_epochs: int = 400


_TRAIN = {"batch_size": 256, "lr": 0.1, "mix": "mixup", "temperature": 16}
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        device="cpu", a_teacher="cifar10_resnet56", a_images=64,
        a_synthesis=["method=generator", "rounds=2", "batch_size=32", "generator.warmup_batches=1",
                     "generator.warmup_steps=2", "plots=false"],
        a_train={**_TRAIN, "batch_size": 32}, a_train_s=20.0,
        b_overrides=["synthesis.method=generator", "synthesis.num_images=64", "synthesis.batch_size=32",
                     "search.epochs=1", "search.batch_size=16", "search.max_steps=2",
                     "search.space.options={C: 4, layers: 3, affine: false}", "train.batch_size=16",
                     "export.space={C: 4, layers: 3, affine: true}"],
        b_epochs=1, max_epochs=3,
        note="smoke: CPU, sizes cut down to check the script runs; the numbers mean nothing"),
    "h200": Budget(
        device="cuda", a_teacher="cifar10_resnet56", a_images=20000,
        a_synthesis=["method=generator", "rounds=2", "batch_size=256"],
        a_train=dict(_TRAIN), a_train_s=240.0,
        b_overrides=["synthesis.method=generator", "synthesis.num_images=10000", "synthesis.batch_size=256",
                     "search.epochs=3", "search.batch_size=64", "export.space={C: 16, layers: 8, affine: true}"],
        b_epochs=10,
        note="h200: one H200; part A 20,000 generator images and 4 min of ResNet-20 training; part B 10,000 "
             "generator images, 3 DARTS-space search epochs (8 cells, C=16, second order), 10 epochs of retraining "
             "the found genotype (8 cells, C=16); sizes estimated, not timed on the machine"),
}


def fit_epochs(seconds: float, step_s: float, steps_per_epoch: int, budget: Budget) -> int:
    """Whole epochs whose steps fit ``seconds`` at ``step_s`` per step (clipped to the budget's range)."""
    epochs = int(seconds / max(step_s, 1e-6) / max(steps_per_epoch, 1))
    return max(budget.min_epochs, min(budget.max_epochs, epochs))


def step_seconds(train_fn: Any, work: Path, steps: int) -> float:
    """Seconds per weight step of ``train_fn(cfg_overrides, out)`` measured over ``steps`` steps."""
    res = train_fn({"max_steps": steps, "epochs": 1}, work)
    return float(res["train_time_s"]) / max(int(res["weight_steps"]), 1)


def part_a(budget: Budget, out: Path, progress: bool) -> dict[str, Any]:
    """ResNet-56 teacher -> generator images -> ResNet-20 trained data-free; top-1 on the real test images."""
    from dfnas.data import open_dataset
    from dfnas.spaces.archfile import parse_arch_string
    from dfnas.synthesis import make_config, synthesize
    from dfnas.teachers import TeacherConfig, load_teacher
    from dfnas.train import evaluate, train_network

    t0 = time.perf_counter()
    teacher = load_teacher(TeacherConfig(name=budget.a_teacher, download=False), device=budget.device)
    real_test = common.real_test_set()
    cfg = make_config("default", [*budget.a_synthesis, f"num_images={budget.a_images}"],
                      teacher_name=budget.a_teacher)
    data = synthesize(cfg, out / "data", teacher=teacher, device=budget.device, progress=progress)
    synth_s = time.perf_counter() - t0
    arch = parse_arch_string("resnet20")

    def train(over: dict[str, Any], run: Path) -> dict[str, Any]:
        return train_network({**budget.a_train, **over}, arch, {"name": "cifar_resnet"}, data, run,
                             device=budget.device, test_data=real_test, progress=progress, teacher=teacher)

    n = len(open_dataset(data))
    spe = max(1, n // min(int(budget.a_train["batch_size"]), n))
    # one whole epoch timed: the replay bank's refresh (once per epoch) is counted as often as in the run
    step_s = step_seconds(train, out / "calibration", spe)
    epochs = fit_epochs(budget.a_train_s, step_s, spe, budget)
    res = train({"epochs": epochs}, out / "train")
    return {"teacher": budget.a_teacher, "student": "resnet20", "images": n, "synthesis_s": round(synth_s, 1),
            "step_s": round(step_s, 4), "epochs": epochs, "weight_steps": res["weight_steps"],
            "train_time_s": res["train_time_s"], "student_top1": res["test_top1"],
            "teacher_top1": evaluate(teacher, real_test, budget.device), "test_n": res["test_n"]}


def part_b(budget: Budget, out: Path, progress: bool) -> dict[str, Any]:
    """DARTS-space search on synthetic data (the paper's preset, cut down), then a short retrain."""
    from dfnas.pipeline.config import load_run_config
    from dfnas.run import run_pipeline

    cfg = load_run_config("darts-cifar10-paper", [*budget.b_overrides, f"train.epochs={budget.b_epochs}"],
                          device=budget.device)
    result = run_pipeline(cfg, out / "run", progress=progress)
    assert result is not None  # one process: rank 0 finishes the run
    stages = {s: json.loads((out / "run" / "stages" / f"{s}.json").read_text())
              for s in ("synthesis", "search", "train") if (out / "run" / "stages" / f"{s}.json").is_file()}
    return {"genotype": result.arch, "train": stages.get("train"), "stage_seconds": {
        s: rec.get("seconds_total") for s, rec in stages.items()}}


def markdown(summary: dict[str, Any]) -> str:
    a, b = summary["parts"].get("a"), summary["parts"].get("b")
    lines = [f"# Prepared device run ({summary['budget']} budget)", "", summary["note"], ""]
    if a:
        lines += ["## A. Data-free distillation, ResNet-56 teacher -> ResNet-20 student", "",
                  reporting.md_table(["teacher top-1", "student top-1", "images", "synthesis", "training",
                                   "epochs (weight steps)"],
                                  [[f"{a['teacher_top1']:.2f}", f"{a['student_top1']:.2f}", a["images"],
                                    common.fmt_duration(a["synthesis_s"]), common.fmt_duration(a["train_time_s"]),
                                    f"{a['epochs']} ({a['weight_steps']})"]]), ""]
    if b:
        tr = b.get("train") or {}
        lines += ["## B. DARTS-space search on synthetic data and a short retrain", "",
                  f"Found genotype: `{b['genotype']}`", "",
                  reporting.md_table(["retrained top-1", "retraining epochs", "stage seconds"],
                                  [[f"{tr['test_top1']:.2f}" if tr.get("test_top1") is not None else "–",
                                    tr.get("epochs"), json.dumps(b["stage_seconds"])]]), ""]
    lines += ["Top-1 on the 1,017 bit-exact real CIFAR-10 test images (evaluation only)."]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Bars of real-test top-1: part A's teacher and data-free student, part B's retrained genotype."""
    plt = reporting.pyplot()
    a, b = summary["parts"].get("a"), summary["parts"].get("b")
    bars = ([("ResNet-56 teacher", a["teacher_top1"]), ("ResNet-20, data-free", a["student_top1"])] if a else [])
    if b and (b.get("train") or {}).get("test_top1") is not None:
        bars.append(("DARTS-space genotype,\nretrained data-free", b["train"]["test_top1"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([n for n, _ in bars], [v for _, v in bars], color=["0.6", "tab:blue", "tab:green"][:len(bars)])
    for i, (_, v) in enumerate(bars):
        ax.text(i, v + 1, f"{v:.1f}", ha="center")
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 on 1,017 real test images (%)")
    ax.set_title(f"prepared device run ({summary['budget']})")
    return reporting.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=list(BUDGETS), required=True)
    p.add_argument("--out", type=Path, required=True, help="work and output folder (on a device run: $OUT)")
    p.add_argument("--parts", default="a,b", help="which parts to run: a, b or a,b")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    budget = BUDGETS[args.budget]
    parts = common.parse_subset(args.parts, ["a", "b"], "parts")
    args.out.mkdir(parents=True, exist_ok=True)
    store = common.CellStore(args.out / "cells")
    h = common.stable_hash(asdict(budget))
    done: dict[str, Any] = {}
    for part, fn in (("a", part_a), ("b", part_b)):
        rec = store.get(part, cell_hash=h)
        if rec is None and part in parts:
            common.log(f"{NAME} [{args.budget}]: part {part} ...")
            work = args.out / common.run_name(f"part_{part}", h)  # changed settings never resume a stale part
            rec = store.put(fn(budget, work, not args.quiet), part, cell_hash=h)
        if rec is not None:
            done[part] = rec
    summary = {"benchmark": NAME, "budget": args.budget, "budget_settings": asdict(budget), "note": budget.note,
               "parts": done, "environment": reporting.environment()}
    reporting.publish(args.out, f"{NAME}_{args.budget}", summary, markdown(summary), plot, "prepared device run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
