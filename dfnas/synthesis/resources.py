"""What a synthesis request will cost (time, peak memory, disk), printed before any work and checked against
what the machine has, so an ImageNet-sized request that cannot fit is refused up front, not hours in.

The estimate comes from the teacher itself: one probing forward pass of one image counts its multiply-accumulates
and the activation elements every layer produces (what autograd keeps for the input-gradient backward), and a
timed forward pass of a few images gives this machine's speed on it. Memory does not grow with ``num_images``:
shards are written to disk as they are made, and the runner keeps only the current shard's images, its parent
shard's logits (its targets) and, when finishing, one label per image.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dfnas.errors import DfnasError
from dfnas.synthesis.config import SynthesisConfig
from dfnas.teachers.teacher import Teacher

# a synthesis step is one forward and one input-gradient backward pass through the teacher (the backward costs
# about twice the forward), plus the BN-statistics term over every BN input
_STEP_FORWARDS = 3.0
# every layer's output is kept for the backward, and gradients of about the same size exist while it runs
# (measured: ResNet-18 at 224 px + a width-16 generator on 280 px canvases, batch 16: 2.2 GB peak RSS against
# 2.6 GB estimated)
_ACTIVATION_COPIES = 2.0
# the generator method holds its meta weights, their Adam moments (2), the adapted copy, its Adam moments (2),
# both gradients and the CPU copy of the meta state being saved: 9 parameter-sized buffers
_GENERATOR_COPIES = 9


def _hooked_counts(model: nn.Module, run: Callable[[], object]) -> tuple[int, int]:
    """(Conv2d/Linear MACs, output elements of every leaf module) per image over ``run()``, a forward pass of
    ``model`` on a batch: counted by forward hooks on the batch's first image. Modules refusing Python hooks
    (TorchScript) are left out."""
    from dfnas.spaces.flops import _module_macs

    counts = {"macs": 0, "act": 0}

    def hook(mod: nn.Module, _inp: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            counts["act"] += out[0].numel()
            counts["macs"] += _module_macs(mod, out[:1])

    handles = []
    for m in model.modules():
        if not any(True for _ in m.children()):  # leaves: every layer output counted once
            try:
                handles.append(m.register_forward_hook(hook))
            except RuntimeError:  # TorchScript modules refuse Python hooks
                continue
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return counts["macs"], counts["act"]


def _probe_teacher(teacher: Teacher, probe_images: int) -> tuple[int, int, float]:
    """(MACs per image, activation elements per image, seconds per image forward) of ``teacher``: the counts
    from a hooked pass on one image, the speed from an un-hooked, no-grad forward of ``probe_images`` images
    (after the hooked pass, which warms up the kernels)."""
    c, s = teacher.spec.in_channels, teacher.spec.input_size
    device = teacher.mean.device
    macs, act = _hooked_counts(teacher.model, lambda: teacher(torch.zeros(1, c, s, s, device=device)))
    x = torch.zeros(probe_images, c, s, s, device=device)
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        teacher(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return macs, act, (time.perf_counter() - t0) / probe_images


def _probe_generator(cfg: SynthesisConfig, teacher: Teacher) -> tuple[int, int, int]:
    """(parameters, MACs per image, activation elements per image) of the generator method's conditional
    generator, built and run on the meta device (shapes only: nothing is allocated or computed)."""
    from dfnas.synthesis.generator import ConditionalGenerator

    g = cfg.generator
    with torch.device("meta"):
        gen = ConditionalGenerator(teacher.num_classes, int(cfg.canvas_size or teacher.spec.input_size),
                                   teacher.spec.in_channels, g.latent_dim, g.width, g.output)
        z, y = torch.zeros(2, g.latent_dim), torch.zeros(2, teacher.num_classes)
    macs, act = _hooked_counts(gen, lambda: gen(z, y))
    return sum(p.numel() for p in gen.parameters()), macs, act


def estimate_resources(cfg: SynthesisConfig, teacher: Teacher) -> dict[str, float]:
    """What synthesizing ``cfg`` (resolved) with ``teacher`` needs: ``disk_bytes``, ``peak_memory_bytes`` (one
    shard in flight; independent of ``num_images``), ``seconds`` on this machine,
    the teacher's ``teacher_macs`` per image, and the generator's ``generator_params`` and ``generator_macs``
    per image (0 for other methods)."""
    c, k = teacher.spec.in_channels, teacher.num_classes
    canvas = int(cfg.canvas_size or teacher.spec.input_size)
    b = cfg.batch_size
    macs, act, sec_per_forward = _probe_teacher(teacher, max(1, min(b, 4)))
    if act == 0:  # no hookable layers: roughly 8 feature maps of 16 channels at the input size per BN layer
        act = max(1, len(teacher.batchnorms())) * 8 * 16 * teacher.spec.input_size ** 2
    gen_params, gen_macs, gen_act = _probe_generator(cfg, teacher) if cfg.method == "generator" else (0, 0, 0)
    per_image_disk = c * canvas * canvas + 2 * 4 * k + 2  # uint8 canvas, float32 targets + logits, int16 round
    state_disk = 3 * 4 * gen_params  # the generator's saved state: meta weights and their Adam moments
    n_teacher = sum(p.numel() for p in teacher.parameters()) + sum(t.numel() for t in teacher.buffers())
    memory = (4 * n_teacher  # the frozen teacher
              + _ACTIVATION_COPIES * 4 * (act + gen_act) * b  # one step's activations and their gradients
              + 4 * 4 * b * c * canvas * canvas  # canvases: values, gradient, two Adam moments
              + 4 * _GENERATOR_COPIES * gen_params
              + 2 * 4 * b * k)  # the parent shard's logits and the soft targets made from them
    # teacher passes: every synthesis step of every image (and of the generator's warm-up batches), plus the
    # stored logits of every image
    steps = cfg.generator.steps if cfg.method == "generator" else cfg.steps
    image_steps = cfg.num_images * steps
    if cfg.method == "generator":
        image_steps += cfg.generator.warmup_batches * cfg.generator.warmup_steps * b
    elif cfg.method not in ("full", "plain"):
        image_steps = 0  # baselines only read or draw images
    # the generator's own passes, at the speed measured on the teacher (seconds per MAC)
    gen_forwards = gen_macs / macs if macs else 0.0
    seconds = sec_per_forward * (_STEP_FORWARDS * (1 + gen_forwards) * image_steps + cfg.num_images)
    return {"disk_bytes": float(cfg.num_images * per_image_disk + state_disk), "peak_memory_bytes": float(memory),
            "seconds": float(seconds), "teacher_macs": float(macs), "generator_params": float(gen_params),
            "generator_macs": float(gen_macs)}


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory free for a new allocation on ``device`` (None when it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass  # not Linux: fall back to the free physical pages
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_resources(cfg: SynthesisConfig, teacher: Teacher, out: Path, progress: bool) -> dict[str, float]:
    """Print the estimate before work starts (when ``progress``); refuse with a DfnasError when the disk under
    ``out`` or the memory of the teacher's device cannot hold it. Returns the estimate."""
    est = estimate_resources(cfg, teacher)
    mib = 2 ** 20
    free = shutil.disk_usage(out).free
    if est["disk_bytes"] > free:
        raise DfnasError(f"synthesis of {cfg.num_images:,} images needs about {est['disk_bytes'] / mib:,.0f} MiB "
                         f"in {str(out)!r}, which has {free / mib:,.0f} MiB free; lower num_images or choose another "
                         "--out (no shard was written)")
    device = teacher.mean.device
    avail = available_memory(device)
    if avail is not None and est["peak_memory_bytes"] > avail:
        gen = (f", generator {est['generator_params'] / 1e6:,.1f} M parameters (lower synthesis.generator.width)"
               if est["generator_params"] else "")
        raise DfnasError(f"synthesis with batch_size {cfg.batch_size} needs about "
                         f"{est['peak_memory_bytes'] / mib:,.0f} MiB of {device.type} memory (teacher "
                         f"{teacher.spec.input_size} px, {teacher.num_classes} classes{gen}), but only "
                         f"{avail / mib:,.0f} MiB is available; lower batch_size (no shard was written)")
    if progress:
        print(f"synthesis: {cfg.num_images:,} images ({cfg.method}, {cfg.rounds} round(s), batch {cfg.batch_size}, "
              f"{teacher.spec.input_size} px on a {int(cfg.canvas_size or teacher.spec.input_size)} px canvas, "
              f"teacher {est['teacher_macs'] / 1e6:,.0f} MMAC/image); about {_duration(est['seconds'])} here, "
              f"{est['disk_bytes'] / mib:,.0f} MiB on disk, peak memory about {est['peak_memory_bytes'] / mib:,.0f} "
              "MiB (shards are streamed to disk)", file=sys.stderr)
    return est
