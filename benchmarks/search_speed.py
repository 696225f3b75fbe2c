"""Search speed of each method on NAS-Bench-201, on the CPU.

Measures seconds per weight step (architecture step included) of darts (first and second order),
proxyless and spos through ``run_search`` itself, at the CPU default (C=8, N=1, 32 px, batch 64) and at
the benchmark size (C=16, N=5: only a few steps, extrapolated), plus the per-epoch held-out evaluation and
SPOS's per-candidate scoring. From these it estimates the duration of a default search on 5,000 images
(held_out 0.5: 39 steps per epoch) and whether it fits in 30 minutes. One run, on whatever the CPU is
doing at the time (the load average is recorded: shared machines make every number pessimistic).

    OMP_NUM_THREADS=1 python benchmarks/search_speed.py [--threads 1] [--steps 6] [--big-steps 2]

Writes benchmarks/results/search_speed.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dfnas.data import ImageSet
from dfnas.data.imageset import iterate_batches
from dfnas.repro import make_generator
from dfnas.search import DEFAULT_EPOCHS, SearchConfig, run_search
from dfnas.search.bn import recalibrate_bn
from dfnas.spaces import build_space

N_IMAGES = 5000
BUDGET_S = 30 * 60
METHODS = [("darts", {"order": "first"}), ("darts", {"order": "second"}), ("proxyless", {}), ("spos", {})]


def random_set(n: int, seed: int = 0, k: int = 10) -> ImageSet:
    """``n`` random 40 px canvases with random teacher logits (speed does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 40, 40), generator=g, dtype=torch.uint8)
    logits = torch.randn(n, k, generator=g) * 3
    return ImageSet(images, torch.softmax(logits, 1), 32, [str(i) for i in range(k)], logits, label_mode="distill",
                    info={"source": "random", "kind": "benchmark"})


def time_steps(ds: ImageSet, method: str, opts: dict[str, Any], space_opts: dict[str, Any], steps: int) -> dict:
    """Median seconds per weight step over ``steps`` steps after one warm-up step, via run_search."""
    stamps: list[float] = []
    cfg = {"method": method, "space": {"name": "nb201", "options": space_opts}, "epochs": 1, "max_steps": steps + 1,
           "eval_max_batches": 0, method: dict(opts)}
    if method == "spos":  # the evolution is timed separately (score_seconds)
        cfg["spos"] = {"population": 2, "top_k": 1, "generations": 1, "bn_batches": 1, "eval_batches": 1}
    with tempfile.TemporaryDirectory() as d:
        run_search(cfg, ds, d, device="cpu", progress=False, on_step=lambda ctx: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"steps_timed": len(gaps), "s_per_step": statistics.median(gaps), "s_per_step_all": gaps}


@torch.no_grad()
def time_forward(space_opts: dict[str, Any], ds: ImageSet, weighted: bool, batches: int, batch_size: int,
                 bn_batches: int = 0) -> float:
    """Seconds to (recalibrate BN on ``bn_batches`` x 64 images and) evaluate ``batches`` x ``batch_size``."""
    space = build_space("nb201", num_classes=ds.num_classes, input_size=ds.input_size, **space_opts)
    net = space.build_supernet().eval()
    if weighted:
        net.set_weights({k: torch.full((len(v),), 1.0 / len(v)) for k, v in space.decisions().items()})
    else:
        net.set_path(space.sample(make_generator(0, "bench")))
    bn = [x for x, _ in itertools.islice(iterate_batches(ds, 64, make_generator(1, "bn"), augment=False), bn_batches)]
    ev = [x for x, _ in itertools.islice(iterate_batches(ds, batch_size, None, augment=False), batches)]
    t = time.perf_counter()
    if bn:
        recalibrate_bn(net, bn)
    for x in ev:
        net(x)
    return time.perf_counter() - t


def estimate(method: str, opts: dict[str, Any], s_step: float, eval_s: float, score_s: float) -> dict[str, Any]:
    """Duration of a default search on N_IMAGES images (every default taken from SearchConfig)."""
    cfg = SearchConfig(method=method)
    n_train = N_IMAGES - round(N_IMAGES * cfg.held_out)
    spe = n_train // cfg.batch_size
    epochs = DEFAULT_EPOCHS[method]
    train_s = epochs * spe * s_step
    evals_s = 0.0 if method == "spos" else epochs * eval_s  # SPOS skips per-epoch evaluation
    evo_s = 0.0
    if method == "spos":
        evo_s = cfg.spos.population * cfg.spos.generations * score_s  # upper bound: no repeated candidate cached
    total = train_s + evals_s + evo_s
    return {"epochs": epochs, "steps_per_epoch": spe, "train_s": train_s, "eval_s": evals_s, "evolution_s": evo_s,
            "total_s": total, "total_min": total / 60, "within_30_min": total <= BUDGET_S}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps at the CPU default size")
    ap.add_argument("--big-steps", type=int, default=2, help="timed steps at the benchmark size (C=16, N=5)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = random_set(N_IMAGES)
    load0 = os.getloadavg()
    sizes = {"cpu_default": ({"C": 8, "N": 1}, args.steps), "benchmark": ({"C": 16, "N": 5}, args.big_steps)}
    rows: list[dict[str, Any]] = []
    for size, (space_opts, steps) in sizes.items():
        eval_s = {w: time_forward(space_opts, ds, w, 8, 256) for w in (True, False)}  # 8 x 256 held-out images
        score_s = time_forward(space_opts, ds, False, 4, 256, bn_batches=4)  # SPOS default candidate scoring
        for method, opts in METHODS:
            t = time_steps(ds, method, opts, space_opts, steps)
            row = {"size": size, "space": space_opts, "method": method, "options": opts, **t,
                   "train_images_per_s": 64 / t["s_per_step"],
                   "eval_s_per_epoch": eval_s[method == "darts"], "spos_score_s_per_candidate": score_s}
            row["s_per_epoch_5k"] = (N_IMAGES // 2 // 64) * t["s_per_step"] + (0 if method == "spos" else
                                                                             row["eval_s_per_epoch"])
            if size == "cpu_default":
                row["default_search_5k"] = estimate(method, opts, t["s_per_step"], row["eval_s_per_epoch"], score_s)
            rows.append(row)
            print(f"{size:11s} {method:9s} {json.dumps(opts):20s} {t['s_per_step']:.3f} s/step "
                  f"{64 / t['s_per_step']:.0f} img/s", flush=True)
    info = {"torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "images": N_IMAGES, "held_out": 0.5, "batch_size": 64, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_speed.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    (out / "search_speed.md").write_text(markdown(info, rows))
    print(f"wrote {out / 'search_speed.json'} and {out / 'search_speed.md'}")


def markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Search speed on CPU (NAS-Bench-201 space)", "",
        f"One run, torch {info['torch']}, {info['threads']} thread(s) on a {info['cpu_count']}-core machine "
        f"shared with other jobs (load average {info['loadavg_start'][0]:.1f} at start, "
        f"{info['loadavg_end'][0]:.1f} at end): numbers are pessimistic. Batch {info['batch_size']}, 32 px "
        f"crops of 40 px canvases, distillation loss. A step is one weight step plus, for darts and proxyless, "
        f"one architecture step on a held-out batch. Per-epoch figures assume {info['images']} images with "
        f"held_out {info['held_out']} (39 weight steps per epoch) plus the epoch-end held-out evaluation "
        "(8 x 256 images; none for SPOS). Benchmark-size rows time only a few steps and are extrapolated.", "",
        "| size | method | s/step | train img/s | s/epoch (5k imgs) | steps timed |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["method"] + (f" ({r['options']['order']} order)" if r["method"] == "darts" else "")
        lines.append(f"| {r['size']} {r['space']} | {name} | {r['s_per_step']:.3f} | {r['train_images_per_s']:.0f} | "
                     f"{r['s_per_epoch_5k']:.0f} | {r['steps_timed']} |")
    lines += ["", "## Default search on 5,000 images (CPU default size)", "",
              "| method | epochs | train (min) | eval (min) | evolution (min, upper bound) | total (min) | < 30 min |",
              "|---|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        e = r.get("default_search_5k")
        if e is None:
            continue
        name = r["method"] + (f" ({r['options']['order']} order)" if r["method"] == "darts" else "")
        lines.append(f"| {name} | {e['epochs']} | {e['train_s'] / 60:.1f} | {e['eval_s'] / 60:.1f} | "
                     f"{e['evolution_s'] / 60:.1f} | {e['total_min']:.1f} | {'yes' if e['within_30_min'] else 'NO'} |")
    score = next(r["spos_score_s_per_candidate"] for r in rows if r["size"] == "cpu_default")
    lines += ["", f"SPOS scores a candidate (BN recalibration on 4 x 64 images + 4 x 256 held-out images) in "
              f"{score:.2f} s at the CPU default size.",
              "", "Notes: a DARTS step is two passes through the full supernet (weights, then alpha; second order: "
              "five); a ProxylessNAS weight step runs one path, but its architecture step runs every option "
              "(a one-hot gate that requires grad makes ``Choice`` evaluate all options to get dL/dg), so it "
              "costs about as much as a DARTS pass. SPOS trains one path per step.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
