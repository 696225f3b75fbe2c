"""Data sources behind one interface: teacher inversion (``full``, ``plain``), unreal baselines
(``noise``, ``real_random``) and a not data-free control (``real_teacher``: real images, teacher labels).
Each produces the images and targets of one shard; the runner adds the teacher
logits, writes the shard and handles rounds, resume and ranks.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dfnas.data.imageset import ImageSet
from dfnas.errors import ConfigError, DataError
from dfnas.registry import Registry
from dfnas.repro import derive_seed
from dfnas.synthesis.config import SynthesisConfig
from dfnas.synthesis.generator import FewStepSynthesizer
from dfnas.synthesis.losses import LossWeights
from dfnas.synthesis.optimize import StepRecord, centre_crop, optimize_batch, to_uint8
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
    # inversion loss weights a config leaves at None (the recipe of `full`, measured on the ResNet-20 teacher)
    loss_defaults: dict[str, float] = {"ce_weight": 1.0, "bn_weight": 0.05, "first_bn_multiplier": 10.0,
                                       "tv_l2_weight": 1.0}

    def resolve(self, cfg: SynthesisConfig, input_size: int) -> SynthesisConfig:
        """``cfg`` with the settings this method implies forced (recorded in the manifest)."""
        return cfg

    def with_loss_defaults(self, cfg: SynthesisConfig) -> SynthesisConfig:
        """``cfg`` with every loss weight left at None set to this method's default."""
        return dataclasses.replace(cfg, **{k: v for k, v in self.loss_defaults.items() if getattr(cfg, k) is None})

    def prepare(self, cfg: SynthesisConfig, teacher: Teacher) -> None:
        """Load whatever the method needs once per run (e.g. the real dataset)."""

    def steps_per_shard(self, cfg: SynthesisConfig) -> int:
        """Progress-bar units one shard takes."""
        return 1

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images uint8 (N, C, canvas, canvas), targets float32 (N, K)) on ``ctx.device``."""
        raise NotImplementedError

    def logits_for(self, ctx: ShardContext, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (N, K) on the images ``make_shard`` just returned, as a shard stores them."""
        return teacher_logits(ctx.teacher, images, ctx.input_size)

    def shard_info(self) -> dict[str, int]:
        """Counts about the shard just made, for its log record (none by default)."""
        return {}

    # -- state carried from shard to shard (stateless methods keep these no-ops) -----------------------
    def restore(self, ctx: ShardContext, out: Path, rank: int, config_hash: str) -> int | None:
        """For a method whose shards depend on earlier ones: load (or create) its state and return how many of
        this rank's shards, in order, that state already reflects (later shards are made again, bit-identical).
        None: shards are independent, every complete shard file counts."""
        return None

    def after_shard(self, out: Path, rank: int, position: int) -> None:
        """Called once shard number ``position`` (1-based, in this rank's order) is on disk."""

    def rewind(self, ctx: ShardContext, out: Path, rank: int) -> int:
        """Return to the state before this rank's first shard and the position it stands for (0). The runner
        calls it when a shard that the saved state already reflects must be made again (it went missing or
        was damaged): only the state before that shard reproduces it, and only the start is kept."""
        return 0

    @staticmethod
    def targets_for(job: ShardJob, num_classes: int, device: torch.device, cfg: SynthesisConfig
                    ) -> tuple[torch.Tensor, float]:
        """(targets (N, K), loss temperature): balanced one-hot in round 0 (at ``cfg.onehot_loss_temperature``),
        the parents' soft targets later (at ``cfg.loss_temperature()``)."""
        if job.parent_targets is None:
            return round0_targets(job.start, job.count, num_classes, device), cfg.onehot_loss_temperature
        return job.parent_targets.to(device), cfg.loss_temperature()


SYNTHESIS_METHODS: Registry[SynthesisMethod] = Registry("synthesis method")


@torch.no_grad()
def teacher_logits(teacher: Teacher, images: torch.Tensor, input_size: int, batch: int = 500) -> torch.Tensor:
    """Logits (N, K) of the centre crops of uint8 canvases (N, C, H, W): what a reader of the shard sees."""
    x = centre_crop(images, input_size).float().div(255.0)
    return teacher.predict(x, batch)


def round0_targets(start: int, count: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Balanced one-hot targets: image i of a round gets class i % K. -> (count, K) float32."""
    labels = torch.arange(start, start + count, device=device) % num_classes
    return F.one_hot(labels, num_classes).float()


def loss_weights(cfg: SynthesisConfig, soft_round: bool = False) -> LossWeights:
    """The inversion loss weights of a resolved synthesis config (no weight left at None); ``soft_round``: a
    round >= 1, whose cross-entropy weight is ``calibration_ce_weight`` when that is set."""
    if cfg.ce_weight is None or cfg.bn_weight is None or cfg.tv_l2_weight is None:
        raise ValueError("loss weights are unresolved (None); resolve the config with the method's defaults first")
    ce = cfg.calibration_ce_weight if soft_round and cfg.calibration_ce_weight is not None else cfg.ce_weight
    return LossWeights(ce=ce, bn=cfg.bn_weight, tv_l1=cfg.tv_l1_weight, tv_l2=cfg.tv_l2_weight,
                       l2=cfg.l2_weight, ce_cap=cfg.ce_confidence_cap)


@SYNTHESIS_METHODS.register("full")
class InversionMethod(SynthesisMethod):
    """Model inversion with recursive label calibration, regional updates and image priors."""

    name = "full"

    def steps_per_shard(self, cfg: SynthesisConfig) -> int:
        return cfg.steps

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = ctx.cfg
        targets, temperature = self.targets_for(job, ctx.teacher.num_classes, ctx.device, cfg)
        weights = loss_weights(cfg, soft_round=job.parent_targets is not None)
        canvas = optimize_batch(
            ctx.teacher, targets, input_size=ctx.input_size, canvas_size=ctx.canvas_size, steps=cfg.steps,
            lr=cfg.lr, betas=cfg.adam_betas, warmup_fraction=cfg.warmup_fraction,
            lowres_fraction=cfg.lowres_fraction, jitter=cfg.jitter, flip=cfg.flip,
            per_image_regions=cfg.per_image_regions, init_std=cfg.init_std, temperature=temperature,
            weights=weights, first_bn_multiplier=float(cfg.first_bn_multiplier or 0), init_gen=ctx.init_gen,
            geom_gen=ctx.geom_gen, log_every=cfg.log_every, on_log=ctx.on_log, on_step=ctx.on_step,
            where=f"round {job.round_idx} shard {job.shard_idx}")
        return to_uint8(canvas), targets


@SYNTHESIS_METHODS.register("plain")
class PlainInversionMethod(InversionMethod):
    """DeepInversion-style inversion: one round of hard targets, no canvas (regions off)."""

    name = "plain"

    def resolve(self, cfg: SynthesisConfig, input_size: int) -> SynthesisConfig:
        return dataclasses.replace(cfg, rounds=1, canvas_size=input_size)


@SYNTHESIS_METHODS.register("generator")
class GeneratorMethod(SynthesisMethod):
    """Few-step synthesis: a conditional generator carried from shard to shard (``dfnas.synthesis.generator``),
    a few teacher passes per shard; regional update on its canvases; recursive calibration by conditioning it
    on the previous round's soft predictions. Its state after every shard is saved (``state/``), so a killed
    run resumes to the same bytes."""

    name = "generator"
    # a generator shares its weights over the batch: the BN-statistics term dominates (as in Fast-DFKD, BN 10),
    # no total-variation prior (the convolutions already make smooth images). Measured on ResNet-20, 5,000
    # images, 1,000 distillation steps of a C=8 N=1 cell: cross-entropy 1.0 gave 40.7 % real top-1, 0.4
    # with a per-batch latent-layer reset 28.7 %, 2.0 with the reset 30.7 %
    loss_defaults = {"ce_weight": 1.0, "bn_weight": 10.0, "first_bn_multiplier": 1.0, "tv_l2_weight": 0.0}

    # a redraw draws each still unrecognized image of the shard at least once and at least this many images in
    # all (cycling them), so a shard's last few hard images get several candidates per redraw
    min_redraw_batch = 16

    def __init__(self) -> None:
        self.synth: FewStepSynthesizer | None = None
        self.chash = ""
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, logits) of the shard just made
        self._info: dict[str, int] = {}

    def resolve(self, cfg: SynthesisConfig, input_size: int) -> SynthesisConfig:
        if not cfg.regional_update:
            canvas = cfg.resolved_canvas(input_size)  # the input size (or a clear error on a conflicting canvas)
        else:
            canvas = cfg.canvas_size if cfg.canvas_size is not None else 4 * math.ceil(input_size * 1.25 / 4)
        if canvas % 4:
            raise ConfigError(f"synthesis config: method 'generator' needs a canvas_size divisible by 4, got {canvas}")
        if cfg.calibration_ce_weight is not None:  # one generator serves every round with one set of weights
            raise ConfigError("synthesis config: calibration_ce_weight applies to method 'full' only; the "
                              "generator's loss weights are the same in every round (set ce_weight instead)")
        # one random region per image: the generator is shared by the batch, so every canvas position gets a
        # gradient at every step (one offset per batch leaves the canvas borders unconstrained)
        return dataclasses.replace(cfg, canvas_size=canvas, lowres_fraction=0.0, per_image_regions=True)

    def steps_per_shard(self, cfg: SynthesisConfig) -> int:
        return cfg.generator.steps

    @staticmethod
    def state_path(out: Path, rank: int) -> Path:
        return out / "state" / f"generator_rank{rank}.pt"

    def _new_synthesizer(self, ctx: ShardContext, rank: int) -> FewStepSynthesizer:
        """The freshly initialized synthesizer of ``rank`` (seeded: the same weights every time)."""
        from dfnas.repro import make_generator

        cfg = ctx.cfg
        return FewStepSynthesizer(
            ctx.teacher, cfg.generator, loss_weights(cfg), float(cfg.first_bn_multiplier or 0), ctx.canvas_size,
            ctx.input_size, make_generator(cfg.seed, "generator", rank, "init"), jitter=cfg.jitter, flip=cfg.flip,
            per_image_regions=cfg.per_image_regions)

    def restore(self, ctx: ShardContext, out: Path, rank: int, config_hash: str) -> int | None:
        self.chash = config_hash
        self.synth = self._new_synthesizer(ctx, rank)
        path = self.state_path(out, rank)
        if path.is_file():
            try:
                st = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
                raise DataError(f"generator state {str(path)!r} is corrupt ({e}); delete it (the shards after the "
                                "warm-up are then made again from the start)") from None
            if not isinstance(st, dict) or st.get("config_hash") != config_hash:
                raise DataError(f"generator state {str(path)!r} belongs to another configuration (hash "
                                f"{st.get('config_hash') if isinstance(st, dict) else '?'} != {config_hash}); "
                                "delete it to start over")
            self.synth.load_state_dict(st["state"])
            return int(st["position"])
        return self.rewind(ctx, out, rank)

    def rewind(self, ctx: ShardContext, out: Path, rank: int) -> int:
        # the warm-up is seeded, so a fresh synthesizer warmed up again is the state before the first shard
        self.synth = self._new_synthesizer(ctx, rank)
        self._warm_up(ctx, rank)
        self.after_shard(out, rank, 0)
        return 0

    def _warm_up(self, ctx: ShardContext, rank: int) -> None:
        """Train the meta generator on ``warmup_batches`` one-hot batches whose images are not kept."""
        from dfnas.repro import make_generator

        assert self.synth is not None
        g, b, k = ctx.cfg.generator, ctx.cfg.batch_size, ctx.teacher.num_classes
        self.synth.warm_up(g.warmup_batches, g.warmup_steps, lambda i: round0_targets(i * b, b, k, ctx.device),
                           make_generator(ctx.cfg.seed, "generator", rank, "warmup", device=ctx.device),
                           make_generator(ctx.cfg.seed, "generator", rank, "warmup-geometry"))

    def after_shard(self, out: Path, rank: int, position: int) -> None:
        from dfnas.io import atomic_torch_save

        assert self.synth is not None
        atomic_torch_save(self.state_path(out, rank), {"position": position, "config_hash": self.chash,
                                                       "state": self.synth.state_dict()})

    def make_shard(self, ctx: ShardContext, job: ShardJob) -> tuple[torch.Tensor, torch.Tensor]:
        if self.synth is None:
            raise RuntimeError("GeneratorMethod.restore() was not called")
        cfg = ctx.cfg
        targets, temperature = self.targets_for(job, ctx.teacher.num_classes, ctx.device, cfg)
        canvas = self.synth.make_batch(targets, temperature, cfg.generator.steps, ctx.init_gen, ctx.geom_gen,
                                       on_log=ctx.on_log, log_every=cfg.log_every,
                                       where=f"round {job.round_idx} shard {job.shard_idx}")
        images = to_uint8(canvas)  # the runner advances the progress bar by steps_per_shard
        self._last, self._info = None, {}
        if cfg.generator.redraws:
            logits, redrawn, left = self._redraw(ctx, images, targets)
            self._last = (images, logits)
            self._info = {"redrawn_images": redrawn, "unrecognized": left}
        return images, targets

    def _redraw(self, ctx: ShardContext, images: torch.Tensor, targets: torch.Tensor
                ) -> tuple[torch.Tensor, int, int]:
        """Replace, in place, the images of ``images`` (N, C, S, S) uint8 the teacher does not assign to their
        target class by recognized ones drawn again (up to ``redraws`` times). -> (the teacher's logits on the
        final images (N, K), images drawn again, images still unrecognized)."""
        assert self.synth is not None
        want = targets.argmax(1)  # (N,)
        logits = teacher_logits(ctx.teacher, images, ctx.input_size)
        left = torch.nonzero(logits.argmax(1) != want).flatten()  # rows still to replace
        drawn = 0
        for _ in range(ctx.cfg.generator.redraws):
            if not len(left):
                break
            rows = left.repeat(-(-self.min_redraw_batch // len(left)))  # (M,) each row at least once
            new = to_uint8(self.synth.sample(targets[rows], ctx.init_gen))
            new_logits = teacher_logits(ctx.teacher, new, ctx.input_size)
            ok = new_logits.argmax(1) == want[rows]  # (M,)
            drawn += len(rows)
            for j in reversed(range(len(rows))):  # the first recognized copy of a row wins
                if ok[j]:
                    images[rows[j]] = new[j]
                    logits[rows[j]] = new_logits[j]
            left = torch.nonzero(logits.argmax(1) != want).flatten()
        return logits, drawn, len(left)

    def logits_for(self, ctx: ShardContext, images: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is images:  # computed while redrawing
            return self._last[1]
        return super().logits_for(ctx, images)

    def shard_info(self) -> dict[str, int]:
        return dict(self._info)


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
