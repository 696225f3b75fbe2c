"""Data sources behind one interface: teacher inversion (``full``, ``plain``), unreal baselines
(``noise``, ``real_random``) and a not data-free control (``real_teacher``: real images, teacher labels).
Each produces the images and targets of one shard; the runner adds the teacher
logits, writes the shard and handles rounds, resume and ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfnas.data.imageset import ImageSet
from dfnas.errors import ConfigError, DataError
from dfnas.registry import Registry
from dfnas.repro import derive_seed
from dfnas.synthesis.config import SynthesisConfig
from dfnas.synthesis.losses import LossWeights
from dfnas.synthesis.optimize import StepRecord, optimize_batch, to_uint8
from dfnas.teachers.teacher import Teacher


@dataclass
class ShardJob:
    """One shard to produce: images ``start .. start+count-1`` of round ``round_idx``."""

    round_idx: int
    shard_idx: int
    start: int
    count: int
    parent_targets: torch.Tensor | None  # (count, K) soft targets from the previous round; None in round 0


@dataclass
class ShardContext:
    """What a method needs besides the job: the run's config, teacher, device, generators and callbacks."""

    cfg: SynthesisConfig
    teacher: Teacher
    device: torch.device
    input_size: int
    canvas_size: int
    init_gen: torch.Generator  # on ``device``: noise images, random labels
    geom_gen: torch.Generator  # on the CPU: regions, jitter, flips, sample indices
    on_log: Callable[[StepRecord], None] | None = None
    on_step: Callable[[], None] | None = None


class SynthesisMethod:
    """Base class: ``resolve`` forces the settings the method implies; ``make_shard`` makes one shard."""

    name = ""
    label_mode = "distill"  # supervision the search uses on this data unless the config says otherwise

    def resolve(self, cfg: SynthesisConfig, input_size: int) -> SynthesisConfig:
        """``cfg`` with the settings this method implies forced (recorded in the manifest)."""
        return cfg

    def prepare(self, cfg: SynthesisConfig, teacher: Teacher) -> None:
        """Load whatever the method needs once per run (e.g. the real dataset)."""

    def steps_per_shard(self, cfg: SynthesisConfig) -> int:
        """Progress-bar units one shard takes."""
        return 1

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images uint8 (N, C, canvas, canvas), targets float32 (N, K)) on ``ctx.device``."""
        raise NotImplementedError


SYNTHESIS_METHODS: Registry[SynthesisMethod] = Registry("synthesis method")


def round0_targets(start: int, count: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Balanced one-hot targets: image i of a round gets class i % K. -> (count, K) float32."""
    labels = torch.arange(start, start + count, device=device) % num_classes
    return F.one_hot(labels, num_classes).float()


@SYNTHESIS_METHODS.register("full")
class InversionMethod(SynthesisMethod):
    """Model inversion with recursive label calibration, regional updates and image priors."""

    name = "full"

    def steps_per_shard(self, cfg: SynthesisConfig) -> int:
        return cfg.steps

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = ctx.cfg
        k = ctx.teacher.num_classes
        if job.parent_targets is None:
            targets, temperature = round0_targets(job.start, job.count, k, ctx.device), 1.0
        else:
            targets, temperature = job.parent_targets.to(ctx.device), cfg.calibration_temperature
        weights = LossWeights(ce=cfg.ce_weight, bn=cfg.bn_weight, tv_l1=cfg.tv_l1_weight, tv_l2=cfg.tv_l2_weight,
                              l2=cfg.l2_weight)
        canvas = optimize_batch(
            ctx.teacher, targets, input_size=ctx.input_size, canvas_size=ctx.canvas_size, steps=cfg.steps,
            lr=cfg.lr, betas=cfg.adam_betas, warmup_fraction=cfg.warmup_fraction,
            lowres_fraction=cfg.lowres_fraction, jitter=cfg.jitter, flip=cfg.flip,
            per_image_regions=cfg.per_image_regions, init_std=cfg.init_std, temperature=temperature,
            weights=weights, first_bn_multiplier=cfg.first_bn_multiplier, init_gen=ctx.init_gen,
            geom_gen=ctx.geom_gen, log_every=cfg.log_every, on_log=ctx.on_log, on_step=ctx.on_step,
            where=f"round {job.round_idx} shard {job.shard_idx}")
        return to_uint8(canvas), targets


@SYNTHESIS_METHODS.register("plain")
class PlainInversionMethod(InversionMethod):
    """DeepInversion-style inversion: one round of hard targets, no canvas (regions off)."""

    name = "plain"

    def resolve(self, cfg: SynthesisConfig, input_size: int) -> SynthesisConfig:
        return dataclasses.replace(cfg, rounds=1, canvas_size=input_size)


class _BaselineMethod(SynthesisMethod):
    """Baselines take no optimization: one round, canvas = input, uniformly random hard labels."""

    label_mode = "hard"

    def resolve(self, cfg: SynthesisConfig, input_size: int) -> SynthesisConfig:
        return dataclasses.replace(cfg, rounds=1, canvas_size=input_size, lowres_fraction=0.0)

    @staticmethod
    def random_targets(ctx: ShardContext, count: int) -> torch.Tensor:
        """Uniformly random one-hot targets (count, K) from the shard's CPU generator."""
        k = ctx.teacher.num_classes
        labels = torch.randint(0, k, (count,), generator=ctx.geom_gen).to(ctx.device)
        return F.one_hot(labels, k).float()


@SYNTHESIS_METHODS.register("noise")
class NoiseMethod(_BaselineMethod):
    """Gaussian-noise images N(0.5, noise_std^2) with uniformly random hard labels."""

    name = "noise"

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        c, s = ctx.teacher.spec.in_channels, ctx.input_size
        x = torch.randn(job.count, c, s, s, generator=ctx.init_gen, device=ctx.device) * ctx.cfg.noise_std + 0.5
        return to_uint8(x.clamp_(0, 1)), self.random_targets(ctx, job.count)


class _RealImagesMethod(_BaselineMethod):
    """Real images (a random sample without repeats of ``cfg.real_path``) instead of optimized ones."""

    def __init__(self) -> None:
        self.real: ImageSet | None = None
        self.order: torch.Tensor | None = None

    def prepare(self, cfg: SynthesisConfig, teacher: Teacher) -> None:
        from dfnas.data.readers import read_real

        if not cfg.real_path:
            raise ConfigError(f"method {self.name!r} needs a real dataset: pass --real PATH (an .npz file, CIFAR "
                              "batch files or an ImageFolder tree)")
        real = read_real(cfg.real_path)
        spec = teacher.spec
        shape = tuple(real.images.shape[1:])
        if shape != (spec.in_channels, spec.input_size, spec.input_size):
            raise DataError(f"real dataset {cfg.real_path!r} holds images of shape {shape} (C, H, W) but teacher "
                            f"{spec.name!r} takes ({spec.in_channels}, {spec.input_size}, {spec.input_size})")
        if real.num_classes != teacher.num_classes:
            raise DataError(f"real dataset {cfg.real_path!r} has {real.num_classes} classes but teacher "
                            f"{spec.name!r} has {teacher.num_classes}")
        if len(real) < cfg.num_images:
            raise DataError(f"real dataset {cfg.real_path!r} has {len(real)} images, fewer than num_images="
                            f"{cfg.num_images}")
        # one permutation for the whole run (not per shard), so shards never repeat an image and a resumed
        # run picks the same images; seeded by "real_random" for every real-image method, so that with the same
        # seed they all draw the very same images and differ only in their labels
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "real_random", "order"))
        self.real, self.order = real, torch.randperm(len(real), generator=gen)

    def real_images(self, ctx: ShardContext, job: ShardJob) -> torch.Tensor:
        """The shard's real images, uint8 (count, C, H, W) on ``ctx.device``."""
        if self.real is None or self.order is None:
            raise RuntimeError(f"{type(self).__name__}.prepare() was not called")
        idx = self.order[job.start:job.start + job.count]
        return self.real.images[idx].to(ctx.device)


@SYNTHESIS_METHODS.register("real_random")
class RealRandomMethod(_RealImagesMethod):
    """Real images paired with uniformly random hard labels (an unreal baseline)."""

    name = "real_random"

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        return self.real_images(ctx, job), self.random_targets(ctx, job.count)


@SYNTHESIS_METHODS.register("real_teacher")
class RealTeacherMethod(_RealImagesMethod):
    """Real images labelled by the teacher: its softmax as targets, its logits stored for distillation.

    Not data-free: a control that separates "synthetic images" from "soft teacher labels" (plain knowledge
    distillation on real images), so a search result on ``full`` can be compared with real images under the
    very same supervision.
    """

    name = "real_teacher"
    label_mode = "distill"

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.real_images(ctx, job)
        with torch.no_grad():
            probs = torch.softmax(ctx.teacher(images.float() / 255.0), dim=1)  # (count, K)
        return images, probs
