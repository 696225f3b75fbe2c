"""Synthesis step throughput on the ResNet-20 teacher, next to this machine's float32 matmul peak.

Measures, in one process and with the same thread count:

1. the GFLOP/s of a large float32 matmul (``n x n @ n x n``, 2 n^3 FLOPs) - the practical peak;
2. image-iterations/s of the library's ``optimize_batch`` (regional update, jitter/flip, CE + BN + TV terms,
   regional Adam) at batch 256, 32 px inputs on a 40 px canvas;
3. the same step written as a loop with input gradients only (``torch.autograd.grad`` w.r.t. the region);
4. the naive reference: identical, but teacher weights keep ``requires_grad=True`` and ``loss.backward()``
   also computes every weight gradient.

FLOP count (stated, not measured): conv + linear multiply-accumulates (MACs) of one forward pass, counted
with hooks. Forward = 2 MACs FLOPs; the input-gradient backward pass costs the same again (each conv's
grad-input is a transposed conv of equal size), so a synthesis step is 4 x MACs FLOPs per image; the naive
step adds the weight-gradient convs, 6 x MACs executed (of which 4 x MACs are needed). BatchNorm, ReLU,
hooks, losses and the optimizer are not counted (they are memory-bound and small in FLOPs).

    python benchmarks/synthesis_speed.py [--batch 256] [--steps 6] [--threads N]

Writes ``benchmarks/results/synthesis_speed.{json,md}``. Other processes sharing the CPU lower every
number; the 1-minute load average before and after is recorded for that reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.io import atomic_write_json, atomic_write_text, environment_info
from dfnas.synthesis.losses import BNStatsLoss, LossWeights, inversion_loss
from dfnas.synthesis.optimize import RegionalAdam, crop_region, optimize_batch
from dfnas.teachers import TeacherConfig, load_teacher
from dfnas.teachers.teacher import Teacher


def forward_macs(teacher: Teacher, size: int) -> int:
    """Conv2d + Linear multiply-accumulates of one image's forward pass."""
    macs = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            macs += out[0].numel() * k  # out (1, C_out, H, W): one MAC per output per kernel tap
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in teacher.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        teacher(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return macs


def matmul_gflops(n: int, reps: int) -> float:
    """Best-of-``reps`` GFLOP/s of an (n x n) @ (n x n) float32 matmul."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


class StepLoop:
    """The synthesis step as a loop, input gradients only (``naive=False``) or with all weight gradients."""

    def __init__(self, teacher: Teacher, batch: int, naive: bool) -> None:
        g = torch.Generator().manual_seed(1)
        self.teacher, self.batch, self.naive = teacher, batch, naive
        self.canvas = torch.rand(batch, 3, 40, 40, generator=g)
        self.targets = F.one_hot(torch.arange(batch) % teacher.num_classes, teacher.num_classes).float()
        self.opt = RegionalAdam(self.canvas, (0.5, 0.9))
        self.weights = LossWeights(ce=1.0, bn=0.05, tv_l2=1.0)

    def run(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps."""
        for p in self.teacher.parameters():
            p.requires_grad_(self.naive)
        times = []
        try:
            with BNStatsLoss(self.teacher.batchnorms(), 10.0) as bn:
                for _ in range(steps):
                    t0 = time.perf_counter()
                    tops = lefts = torch.full((self.batch,), 4, dtype=torch.long)
                    region = crop_region(self.canvas, tops, lefts, 32).requires_grad_(True)
                    total, _, _ = inversion_loss(self.teacher, region.flip(3), self.targets, 1.0, self.weights, bn)
                    if self.naive:
                        self.teacher.zero_grad(set_to_none=True)
                        total.backward()  # the usual way: every parameter's .grad is filled as well
                        grad = region.grad
                    else:
                        (grad,) = torch.autograd.grad(total, region)
                    self.opt.step(grad, tops, lefts, 0.05)
                    times.append(time.perf_counter() - t0)
        finally:
            self.teacher.freeze()
        return times


class LibraryStep:
    """``optimize_batch`` itself, timed step by step through its ``on_step`` callback."""

    def __init__(self, teacher: Teacher, batch: int) -> None:
        self.teacher, self.batch = teacher, batch
        self.targets = F.one_hot(torch.arange(batch) % teacher.num_classes, teacher.num_classes).float()

    def run(self, steps: int) -> list[float]:
        """Seconds of each step after the first (which includes the canvas set-up)."""
        stamps: list[float] = []
        optimize_batch(self.teacher, self.targets, input_size=32, canvas_size=40, steps=steps + 1, lr=0.1,
                       betas=(0.5, 0.9), warmup_fraction=0.05, lowres_fraction=0.0, jitter=2, flip=True,
                       per_image_regions=False, init_std=0.2, temperature=1.0,
                       weights=LossWeights(ce=1.0, bn=0.05, tv_l2=1.0), first_bn_multiplier=10.0,
                       init_gen=torch.Generator().manual_seed(2), geom_gen=torch.Generator().manual_seed(3),
                       on_step=lambda: stamps.append(time.perf_counter()))
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, write the JSON and Markdown results, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--matmul", type=int, default=2048, help="matmul side n")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    teacher = load_teacher(TeacherConfig(name="cifar10_resnet20", download=False))
    macs = forward_macs(teacher, 32)
    variants = {"library": LibraryStep(teacher, args.batch), "input": StepLoop(teacher, args.batch, False),
                "naive": StepLoop(teacher, args.batch, True)}
    for v in variants.values():  # warm-up: allocator, oneDNN primitive caches
        v.run(args.warmup)
    # interleave the variants over several repeats and keep each one's best median, so that load from
    # other processes (a shared CPU) biases no variant more than another
    samples: dict[str, list[float]] = {k: [] for k in variants}
    peaks = []
    for _ in range(args.repeats):
        peaks.append(matmul_gflops(args.matmul, 3))
        for k, v in variants.items():
            t = sorted(v.run(args.steps))
            samples[k].append(t[len(t) // 2])
    peak = max(peaks)
    lib_s, input_s, naive_s = (min(samples[k]) for k in ("library", "input", "naive"))
    flops4, flops6 = 4 * macs, 6 * macs

    def entry(sec: float, flops_needed: int, flops_run: int) -> dict[str, float]:
        ips = args.batch / sec
        return {"seconds_per_step": sec, "image_iterations_per_s": ips,
                "gflops_useful": ips * flops_needed / 1e9, "gflops_executed": ips * flops_run / 1e9,
                "fraction_of_matmul_peak": ips * flops_run / 1e9 / peak}

    res = {
        "batch": args.batch, "input_size": 32, "canvas_size": 40, "threads": torch.get_num_threads(),
        "forward_macs_per_image": macs, "flops_per_image_iteration": flops4, "flops_per_image_iteration_naive": flops6,
        "matmul_n": args.matmul, "matmul_gflops": peak, "matmul_gflops_samples": peaks,
        "step_seconds_samples": samples,
        "library_optimize_batch": entry(lib_s, flops4, flops4),
        "input_grad_only_step": entry(input_s, flops4, flops4),
        "naive_weight_grads_step": entry(naive_s, flops4, flops6),
        "speedup_input_only_vs_naive": naive_s / input_s,
        "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
        "environment": environment_info(),
    }
    out = Path(args.out)
    atomic_write_json(out / "synthesis_speed.json", res)
    rows = [("optimize_batch (library)", res["library_optimize_batch"]),
            ("step loop, input grads only", res["input_grad_only_step"]),
            ("naive: weight grads on", res["naive_weight_grads_step"])]
    md = [
        "# Synthesis step speed (ResNet-20 teacher, CPU)", "",
        f"batch {args.batch}, 32 px inputs on a 40 px canvas, {res['threads']} torch threads; "
        f"1-min load average {load_before:.2f} before, {res['loadavg_1min_after']:.2f} after "
        "(the CPU is shared, so these are lower bounds).", "",
        f"Matmul peak ({args.matmul}^2 float32, best of {len(peaks)} interleaved samples): {peak:.1f} GFLOP/s. "
        f"Step times: best median over {args.repeats} interleaved repeats of {args.steps} steps.",
        f"FLOPs counted: forward {2 * macs / 1e6:.1f} MFLOP/image (conv+linear MACs x 2); synthesis step "
        f"= forward + input-grad backward = {flops4 / 1e6:.1f} MFLOP per image-iteration; naive step executes "
        f"{flops6 / 1e6:.1f} (adds weight gradients).", "",
        "| variant | s/step | image-it/s | GFLOP/s (useful) | GFLOP/s (executed) | fraction of matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in rows:
        md.append(f"| {name} | {e['seconds_per_step']:.3f} | {e['image_iterations_per_s']:.0f} | "
                  f"{e['gflops_useful']:.1f} | {e['gflops_executed']:.1f} | {e['fraction_of_matmul_peak']:.1%} |")
    md += ["", f"Leaving weight gradients off is {res['speedup_input_only_vs_naive']:.2f}x faster than the naive "
           "step."]
    atomic_write_text(out / "synthesis_speed.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
