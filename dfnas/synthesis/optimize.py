"""Optimize one batch of images by inversion: regional updates on a canvas, low-res phase, Adam, schedule.

Each step takes ONE input-sized region of the canvas (one offset for the batch, or one per image), applies
a random jitter (roll) and horizontal flip, forwards it through the frozen teacher and updates only that
region with a "regional" Adam: first/second moments and the bias-correction step count are kept per pixel
and touched only where the region lies, so pixels outside it do not move (plain Adam would keep moving them
on stale momentum). When the region is the whole canvas this is exactly ``torch.optim.Adam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfnas.errors import DfnasError
from dfnas.synthesis.losses import BNStatsLoss, LossWeights, inversion_loss
from dfnas.teachers.teacher import Teacher


class NonFiniteLossError(DfnasError):
    """A loss term became NaN/inf during synthesis."""


def lr_at(step: int, total: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of steps, then cosine decay from ``base_lr`` to 0."""
    warm = int(round(total * warmup_fraction))
    if step < warm:
        return base_lr * (step + 1) / warm
    span = max(1, total - warm)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))


def region_index(tops: torch.Tensor, lefts: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
    """Advanced-indexing tensors selecting a (size x size) region per image.

    tops, lefts: (B,) int64 -> (batch (B,1,1), rows (B,size,1), cols (B,1,size)) for a (B, H, W, ...) tensor.
    """
    ar = torch.arange(size, device=tops.device)
    b = torch.arange(len(tops), device=tops.device)[:, None, None]
    return b, (tops[:, None] + ar)[:, :, None], (lefts[:, None] + ar)[:, None, :]


def crop_region(canvas: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """canvas (B, C, H, W) -> a copy of its per-image regions (B, C, size, size) at (tops[i], lefts[i])."""
    if bool((tops == tops[0]).all() and (lefts == lefts[0]).all()):  # one offset: a slice is cheaper
        t, l = int(tops[0]), int(lefts[0])
        return canvas[:, :, t:t + size, l:l + size].clone()
    b, rows, cols = region_index(tops, lefts, size)
    return canvas.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


class RegionalAdam:
    """Adam on a (B, C, H, W) tensor where each step's gradient covers only one region per image."""

    def __init__(self, param: torch.Tensor, betas: tuple[float, float], eps: float = 1e-8) -> None:
        self.param = param
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        # steps seen by each pixel, for per-pixel bias correction: (B, 1, H, W)
        self.count = torch.zeros(param.shape[0], 1, *param.shape[2:], dtype=param.dtype, device=param.device)

    def step(self, grad: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, lr: float) -> None:
        """Update the regions at (tops, lefts) with ``grad`` (B, C, S, S); pixels outside stay untouched."""
        size = grad.shape[-1]
        same = bool((tops == tops[0]).all() and (lefts == lefts[0]).all())
        if same:  # one offset for the batch: plain slicing works in place on views (fast path)
            t, l = int(tops[0]), int(lefts[0])
            sl = (slice(None), slice(None), slice(t, t + size), slice(l, l + size))
            self._update(self.param[sl], self.m[sl], self.v[sl], self.count[sl], grad, lr)
            return
        b, rows, cols = region_index(tops, lefts, size)
        views = [x.permute(0, 2, 3, 1) for x in (self.param, self.m, self.v, self.count)]
        p, m, v, c = (x[b, rows, cols] for x in views)  # gathered copies (B, S, S, C)
        self._update(p, m, v, c, grad.permute(0, 2, 3, 1), lr)
        for dst, src in zip(views, (p, m, v, c), strict=True):
            dst[b, rows, cols] = src

    def _update(self, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c: torch.Tensor, g: torch.Tensor,
                lr: float) -> None:
        c.add_(1.0)
        m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        bc1 = 1 - self.b1 ** c
        bc2 = 1 - self.b2 ** c
        # the arithmetic of torch.optim.Adam with a per-pixel step count: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
        denom = (v.sqrt() / bc2.sqrt()).add_(self.eps)
        p.addcdiv_(m * (lr / bc1), denom, value=-1.0)
        p.clamp_(0.0, 1.0)  # pixels stay valid images after every step


@dataclass
class StepRecord:
    """What ``on_log`` receives every ``log_every`` steps (unweighted loss terms)."""

    step: int
    lr: float
    total: float
    terms: dict[str, float]
    acc: float  # fraction of the batch whose teacher argmax equals the target argmax


def _draw_geometry(gen: torch.Generator, batch: int, span: int, per_image: bool, jitter: int, flip: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, int, int, bool]:
    """Region offsets (B,), (B,) in [0, span] and the jitter/flip of this step, from the CPU generator."""
    n = batch if per_image else 1
    tops = torch.randint(0, span + 1, (n,), generator=gen)
    lefts = torch.randint(0, span + 1, (n,), generator=gen)
    if not per_image:
        tops, lefts = tops.expand(batch), lefts.expand(batch)
    dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist() if jitter > 0 else (0, 0))
    do_flip = bool(torch.rand((), generator=gen) < 0.5) if flip else False
    return tops, lefts, dy, dx, do_flip


def optimize_batch(teacher: Teacher, targets: torch.Tensor, *, input_size: int, canvas_size: int, steps: int,
                   lr: float, betas: tuple[float, float], warmup_fraction: float, lowres_fraction: float,
                   jitter: int, flip: bool, per_image_regions: bool, init_std: float, temperature: float,
                   weights: LossWeights, first_bn_multiplier: float, init_gen: torch.Generator,
                   geom_gen: torch.Generator, log_every: int = 10,
                   on_log: Callable[[StepRecord], None] | None = None,
                   on_step: Callable[[], None] | None = None, where: str = "") -> torch.Tensor:
    """Invert ``targets`` (B, K) into a float canvas (B, C, canvas, canvas) in [0, 1].

    ``init_gen`` (on the teacher's device) draws the fresh noise; ``geom_gen`` (CPU) draws regions, jitter
    and flips. Raises NonFiniteLossError naming the step and term when a loss becomes NaN/inf.
    """
    device = targets.device
    b, c = targets.shape[0], teacher.spec.in_channels
    low_steps = int(steps * lowres_fraction)
    # the low-res phase optimizes a half-size canvas whose forwarded region is upsampled to the input size
    scale = 2 if low_steps > 0 else 1
    side = canvas_size // scale
    canvas = (torch.randn(b, c, side, side, generator=init_gen, device=device) * init_std + 0.5).clamp_(0, 1)
    opt = RegionalAdam(canvas, betas)
    use_bn = weights.bn > 0
    bn_loss = BNStatsLoss(teacher.batchnorms(), first_bn_multiplier) if use_bn else None
    try:
        if bn_loss is not None:
            bn_loss.__enter__()
        for step in range(steps):
            if step == low_steps and scale == 2:  # switch to full resolution; the moments restart
                canvas = F.interpolate(canvas, size=(canvas_size, canvas_size), mode="bilinear",
                                       align_corners=False).clamp_(0, 1)
                opt = RegionalAdam(canvas, betas)
                scale = 1
            size = input_size // scale
            tops, lefts, dy, dx, do_flip = _draw_geometry(geom_gen, b, canvas.shape[-1] - size,
                                                          per_image_regions, jitter, flip)
            tops, lefts = tops.to(device), lefts.to(device)
            region = crop_region(canvas, tops, lefts, size).requires_grad_(True)  # (B, C, size, size)
            x = region if scale == 1 else F.interpolate(region, size=(input_size, input_size),
                                                        mode="bilinear", align_corners=False)
            if dy or dx:
                x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if do_flip:
                x = x.flip(3)
            total, terms, logits = inversion_loss(teacher, x, targets, temperature, weights, bn_loss)
            if not bool(torch.isfinite(total)):
                bad = [k for k, v in terms.items() if not bool(torch.isfinite(v))] or ["total"]
                value = float(terms.get(bad[0], total).detach())
                raise NonFiniteLossError(f"synthesis {where}: loss term {bad[0]!r} became {value} at step {step} "
                                         f"of {steps}; lower lr or that term's weight (nothing was written for "
                                         "this shard)")
            (grad,) = torch.autograd.grad(total, region)
            step_lr = lr_at(step, steps, lr, warmup_fraction)
            opt.step(grad, tops, lefts, step_lr)
            if on_log is not None and (step % log_every == 0 or step == steps - 1):
                acc = float((logits.argmax(1) == targets.argmax(1)).float().mean())
                on_log(StepRecord(step, step_lr, float(total.detach()),
                                  {k: float(v.detach()) for k, v in terms.items()}, acc))
            if on_step is not None:
                on_step()
    finally:
        if bn_loss is not None:
            bn_loss.__exit__(None, None, None)
    if scale == 2:  # every step ran at low resolution
        canvas = F.interpolate(canvas, size=(canvas_size, canvas_size), mode="bilinear",
                               align_corners=False).clamp_(0, 1)
    return canvas


def to_uint8(canvas: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] (B, C, H, W) -> uint8, rounded to nearest."""
    return canvas.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size) centre crop (the evaluation view of a canvas)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]
