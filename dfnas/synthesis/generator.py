"""Few-step synthesis with a conditional generator whose weights carry over from batch to batch.

A small convolutional generator maps (noise z, target distribution y) to a canvas (B, C, S, S) in [0, 1].
Each new batch starts from a copy of the *meta* generator and fresh latents, takes ``steps`` Adam steps on
the inversion loss (target cross-entropy, BatchNorm statistics, image priors; optionally the adversarial
student-teacher disagreement) over random input-sized regions of the canvas, and keeps the result. The
meta generator then moves towards the adapted copy (a Reptile step, as in Fast-DFKD, Fang et al. 2022), so
what every batch has to learn (natural image statistics, class features) accumulates in the meta weights
and each new batch needs only a few teacher passes. The BatchNorm statistics term may average the batch
statistics with those of earlier batches (``bn_momentum``), so no single small batch has to match the
teacher's dataset statistics on its own.

Everything the synthesizer carries between batches is in ``state_dict()``, so a killed run resumes exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.config import ADDED_LATER
from dfnas.errors import ConfigError
from dfnas.synthesis.losses import BNStatsLoss, LossWeights, inversion_loss
from dfnas.synthesis.optimize import NonFiniteLossError, StepRecord, _draw_geometry, crop_region
from dfnas.teachers.teacher import Teacher

GENERATOR_OUTPUTS = ("sigmoid", "normalized")
# above this many weights, the class embedding is factorized through a latent_dim-wide code (ImageNet-sized)
MAX_CLASS_MAP_PARAMS = 2 ** 24


@dataclass
class GeneratorConfig:
    """Settings of the few-step generator (``synthesis.generator.*``)."""

    steps: int = 2  # Adam steps per batch on the copied generator and the batch's latents
    warmup_batches: int = 20  # batches used only to train the meta generator before any image is kept
    warmup_steps: int = 10  # steps per warm-up batch
    latent_dim: int = 64
    width: int = 16  # channels of the last hidden layer (2x that before); cost ~ width^2
    lr: float = 0.01  # Adam on the copied generator's weights
    latent_lr: float = 0.05  # Adam on the latents
    meta_lr: float = 0.01  # Adam on the meta generator with the Reptile direction as gradient
    bn_momentum: float = 0.9  # 0: each batch matches the BN statistics alone
    reset_latent_layer: bool = False  # fresh N(0, 0.02) latent projection per batch (Fast-DFKD's reset_l0)
    adv_weight: float = 0.0  # online training only: reward images the student gets wrong
    # last layer: "sigmoid" squashes to [0, 1]; "normalized" ends in an affine-free BatchNorm and maps each
    # channel to the teacher's input mean/std, so every batch has the teacher's first-layer input statistics by
    # construction and no region saturates (stored images are clipped to [0, 1])
    output: str = field(default="sigmoid", metadata=ADDED_LATER)
    # stored datasets only (the synthesis stage; online synthesis while training keeps every image): an image
    # the teacher does not assign to its target class (centre crop, as stored) is drawn again, up to this many
    # times, from the generator copy adapted to its batch with a fresh latent (``FewStepSynthesizer.sample``);
    # 0 keeps every image as made. Redraws do not train the meta generator, so the images recognized at the
    # first draw are those of a run without redraws
    redraws: int = field(default=0, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if self.redraws < 0:
            raise ConfigError(f"synthesis.generator.redraws must be >= 0, got {self.redraws}")
        for name in ("steps", "warmup_steps", "latent_dim", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"synthesis.generator.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_batches < 0:
            raise ConfigError(f"synthesis.generator.warmup_batches must be >= 0, got {self.warmup_batches}")
        for name in ("lr", "latent_lr", "meta_lr"):
            v = getattr(self, name)
            if not (v > 0 and v < float("inf")):
                raise ConfigError(f"synthesis.generator.{name} must be a finite number > 0, got {v}")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"synthesis.generator.bn_momentum must lie in [0, 1), got {self.bn_momentum}")
        if self.output not in GENERATOR_OUTPUTS:
            raise ConfigError(f"synthesis.generator.output must be one of {list(GENERATOR_OUTPUTS)}, got "
                              f"{self.output!r}")
        if not (0 <= self.adv_weight < float("inf")):
            raise ConfigError(f"synthesis.generator.adv_weight must be a finite number >= 0, got {self.adv_weight}")


class ConditionalGenerator(nn.Module):
    """(z (B, latent), y (B, K) class distribution) -> canvas (B, C, S, S) in [0, 1]; S divisible by 4."""

    def __init__(self, num_classes: int, canvas_size: int, channels: int = 3, latent_dim: int = 64,
                 width: int = 32, output: str = "sigmoid", mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        if canvas_size % 4:
            raise ConfigError(f"the generator needs a canvas side divisible by 4, got {canvas_size}")
        self.init = canvas_size // 4
        w2 = 2 * width
        # the latent and the class condition each map to the first feature map (B, 2w, S/4, S/4); the class
        # maps survive a reset of ``fc`` (``reset_latent_layer``), so the meta generator keeps what each class
        # looks like while every batch gets a fresh random projection of its latents
        self.fc = nn.Linear(latent_dim, w2 * self.init * self.init)
        first_map = w2 * self.init * self.init
        self.factorized = num_classes * first_map > MAX_CLASS_MAP_PARAMS
        # a full class -> map matrix has K x 2w x (S/4)^2 weights: 157 M (0.6 GB, x9 with its copies and Adam
        # moments) for 1,000 classes on a 280 px canvas; there the class goes through a latent_dim-wide code
        # first. CIFAR-sized generators stay full, so their weights, states and images are unchanged
        self.embed: nn.Module = (nn.Sequential(nn.Linear(num_classes, latent_dim, bias=False),
                                               nn.Linear(latent_dim, first_map, bias=False))
                                 if self.factorized else nn.Linear(num_classes, first_map, bias=False))
        self.w2 = w2
        self.norm0 = nn.BatchNorm2d(w2)  # normalizes the latent part alone: its scale never vanishes
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
        )
        self.output = output
        if output == "normalized":
            self.out_norm = nn.BatchNorm2d(channels, affine=False)
            c = (1, channels, 1, 1)
            self.register_buffer("mean", torch.tensor(mean or (0.5,) * channels, dtype=torch.float32).view(c))
            self.register_buffer("std", torch.tensor(std or (0.25,) * channels, dtype=torch.float32).view(c))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = (len(z), self.w2, self.init, self.init)
        h = self.norm0(self.fc(z).view(shape)) + self.embed(y).view(shape)  # (B, 2w, S/4, S/4)
        # channels-last activations: the CPU convolutions of few channels run ~2x faster in that layout (measured
        # at batch 250 on 2 cores: make_batch 140 -> 190 images/s with the teacher's input in it too)
        h = h.contiguous(memory_format=torch.channels_last)
        if self.output == "normalized":  # per-channel standardized, then in pixel units (not clipped here)
            return self.out_norm(self.body(h)) * self.std + self.mean
        return torch.sigmoid(self.body(h))


def adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Negative Jensen-Shannon divergence between student and teacher predictions, counted only where they
    still agree on the class (CMI / Fast-DFKD): minimizing it pushes images towards the student's mistakes."""
    p_s, p_t = F.softmax(student_logits, 1), F.softmax(teacher_logits, 1)
    m = 0.5 * (p_s + p_t)
    js = 0.5 * ((p_s * (p_s.clamp_min(1e-8) / m.clamp_min(1e-8)).log()).sum(1)
                + (p_t * (p_t.clamp_min(1e-8) / m.clamp_min(1e-8)).log()).sum(1))  # (B,)
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return -(js * agree).sum() / agree.sum().clamp_min(1.0)


class FewStepSynthesizer:
    """The meta generator, its optimizer and the BN-statistics average: one batch of images per call."""

    def __init__(self, teacher: Teacher, cfg: GeneratorConfig, weights: LossWeights, first_bn_multiplier: float,
                 canvas_size: int, input_size: int, init_gen: torch.Generator, jitter: int = 2,
                 flip: bool = True, per_image_regions: bool = False) -> None:
        self.teacher, self.cfg, self.weights = teacher, cfg, weights
        self.first_bn_multiplier = first_bn_multiplier
        self.canvas_size, self.input_size = canvas_size, input_size
        self.jitter, self.flip, self.per_image_regions = jitter, flip, per_image_regions
        device = teacher.mean.device
        self.meta = ConditionalGenerator(teacher.num_classes, canvas_size, teacher.spec.in_channels,
                                         cfg.latent_dim, cfg.width, cfg.output, tuple(teacher.spec.mean),
                                         tuple(teacher.spec.std))
        # initial weights from the run's generator (constructors draw from the global RNG)
        with torch.no_grad():
            for p in self.meta.parameters():
                if p.dim() > 1:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=init_gen) * (2.0 / fan_in) ** 0.5)
                elif p.dim() == 1:
                    p.zero_()
            for m in self.meta.modules():
                if isinstance(m, nn.BatchNorm2d) and m.affine:
                    m.weight.fill_(1.0)
        self.meta.to(device).train()
        self.meta_opt = torch.optim.Adam(self.meta.parameters(), lr=cfg.meta_lr, betas=(0.5, 0.999))
        self.bn_ema: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.batches = 0  # batches made so far (warm-up included)
        self.adapted: nn.Module | None = None  # the meta generator's copy adapted to the last batch

    # -- one batch -------------------------------------------------------------------------------------
    def make_batch(self, targets: torch.Tensor, temperature: float, steps: int, z_gen: torch.Generator,
                   geom_gen: torch.Generator, student: nn.Module | None = None,
                   on_log: Callable[[StepRecord], None] | None = None, log_every: int = 1,
                   where: str = "") -> torch.Tensor:
        """Adapt a copy of the meta generator to ``targets`` (B, K) for ``steps`` steps; update the meta
        generator; return the batch's canvases (B, C, S, S) float in [0, 1], detached. The adapted copy is
        kept until the next batch (``sample``)."""
        device = targets.device
        b = len(targets)
        fast = copy.deepcopy(self.meta)
        z = torch.randn(b, self.cfg.latent_dim, generator=z_gen, device=device).requires_grad_(True)
        if self.cfg.reset_latent_layer:
            with torch.no_grad():
                w = fast.fc.weight
                w.copy_(torch.randn(w.shape, generator=z_gen, device=device) * 0.02)
                fast.fc.bias.zero_()
        opt = torch.optim.Adam([{"params": list(fast.parameters()), "lr": self.cfg.lr},
                                {"params": [z], "lr": self.cfg.latent_lr}], betas=(0.5, 0.999))
        use_bn = self.weights.bn > 0
        bn_loss = BNStatsLoss(self.teacher.batchnorms(), self.first_bn_multiplier, momentum=self.cfg.bn_momentum,
                              ema=self.bn_ema) if use_bn else None
        use_adv = student is not None and self.cfg.adv_weight > 0
        size = self.input_size
        try:
            if bn_loss is not None:
                bn_loss.__enter__()
            for step in range(steps):
                canvas = fast(z, targets)  # (B, C, S, S)
                tops, lefts, dy, dx, do_flip = _draw_geometry(geom_gen, b, self.canvas_size - size,
                                                              self.per_image_regions, self.jitter, self.flip)
                x = crop_region(canvas, tops.to(device), lefts.to(device), size)  # (B, C, size, size)
                if dy or dx:
                    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                if do_flip:
                    x = x.flip(3)
                x = x.contiguous(memory_format=torch.channels_last)  # the teacher's convolutions: see forward
                total, terms, logits = inversion_loss(self.teacher, x, targets, temperature, self.weights, bn_loss)
                if use_adv:
                    assert student is not None
                    terms["adv"] = adversarial_loss(student(x), logits)
                    total = total + self.cfg.adv_weight * terms["adv"]
                if not bool(torch.isfinite(total)):
                    bad = [k for k, v in terms.items() if not bool(torch.isfinite(v))] or ["total"]
                    raise NonFiniteLossError(f"synthesis {where}: generator loss term {bad[0]!r} became non-finite "
                                             f"at step {step}; lower synthesis.generator.lr or that term's weight")
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if bn_loss is not None and step == steps - 1:
                    self.bn_ema = bn_loss.mixed_stats()
                if on_log is not None and (step % log_every == 0 or step == steps - 1):
                    acc = float((logits.argmax(1) == targets.argmax(1)).float().mean())
                    on_log(StepRecord(step, self.cfg.lr, float(total.detach()),
                                      {k: float(v.detach()) for k, v in terms.items()}, acc))
        finally:
            if bn_loss is not None:
                bn_loss.__exit__(None, None, None)
        self._reptile(fast)
        self.batches += 1
        self.adapted = fast
        with torch.no_grad():
            return fast(z.detach(), targets).clamp_(0, 1)

    @torch.no_grad()
    def sample(self, targets: torch.Tensor, z_gen: torch.Generator) -> torch.Tensor:
        """More canvases (M, C, S, S) in [0, 1] for ``targets`` (M, K) from the copy adapted to the last batch:
        fresh latents, no steps, BatchNorm on its running statistics (so an image does not depend on the
        others drawn with it). With the teacher's check, about a sixth of a batch's cost per image (measured:
        0.8-1.0 against 5.5 ms on 2 cores); the synthesizer's state is unchanged."""
        if self.adapted is None:
            raise RuntimeError("FewStepSynthesizer.sample() needs a batch made first (make_batch)")
        z = torch.randn(len(targets), self.cfg.latent_dim, generator=z_gen, device=targets.device)
        self.adapted.eval()
        try:
            return self.adapted(z, targets).clamp_(0, 1)
        finally:
            self.adapted.train()

    def warm_up(self, batches: int, steps: int, targets_of: Callable[[int], torch.Tensor], z_gen: torch.Generator,
                geom_gen: torch.Generator, desc: str = "generator warm-up") -> None:
        """Train the meta generator on ``batches`` batches (targets ``targets_of(i)``) whose images are not kept."""
        from tqdm import tqdm

        # progress on a terminal only (disable=None)
        for i in tqdm(range(batches), desc=desc, unit="batch", disable=None, leave=False):
            self.make_batch(targets_of(i), 1.0, steps, z_gen, geom_gen, where=f"{desc} batch {i}")

    def _reptile(self, fast: nn.Module) -> None:
        """Move the meta weights towards the adapted copy: Adam with gradient (meta - fast)."""
        self.meta_opt.zero_grad(set_to_none=True)
        for p_meta, p_fast in zip(self.meta.parameters(), fast.parameters(), strict=True):
            p_meta.grad = (p_meta.detach() - p_fast.detach()).clone()
        self.meta_opt.step()
        with torch.no_grad():  # the BN running buffers are unused (always train mode) but keep them in step
            for b_meta, b_fast in zip(self.meta.buffers(), fast.buffers(), strict=True):
                b_meta.copy_(b_fast)

    # -- persistence -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything carried from batch to batch (CPU tensors)."""
        return {
            "meta": {k: v.detach().cpu().clone() for k, v in self.meta.state_dict().items()},
            "meta_opt": self.meta_opt.state_dict(),
            "bn_ema": None if self.bn_ema is None else [(m.cpu(), v.cpu()) for m, v in self.bn_ema],
            "batches": self.batches,
            "arch": self._arch(),
        }

    def _arch(self) -> dict[str, Any]:
        """The shape-defining settings a saved state must match ("output" only when not the original)."""
        arch: dict[str, Any] = {"latent_dim": self.cfg.latent_dim, "width": self.cfg.width,
                                "canvas_size": self.canvas_size}
        if self.cfg.output != "sigmoid":
            arch["output"] = self.cfg.output
        if self.meta.factorized:  # only ImageNet-sized generators: the states of CIFAR-sized ones are unchanged
            arch["class_embedding"] = "factorized"
        return arch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; ConfigError when it was made by a differently shaped generator."""
        arch = self._arch()
        if state.get("arch") != arch:
            raise ConfigError(f"generator state was saved for {state.get('arch')}, this run needs {arch}")
        device = self.teacher.mean.device
        self.meta.load_state_dict(state["meta"])
        self.meta_opt.load_state_dict(state["meta_opt"])
        ema = state.get("bn_ema")
        self.bn_ema = None if ema is None else [(m.to(device), v.to(device)) for m, v in ema]
        self.batches = int(state["batches"])
