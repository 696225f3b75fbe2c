"""``SynthesisConfig``: every knob of the synthesis stage, with the default CPU recipe and a ``tiny`` preset.

Every loss term is switched by its weight (0 = off), so each ablation is one ``--set key=value``:
``rounds=1`` (no recursive calibration), ``regional_update=false`` (canvas = input size),
``bn_weight=0`` (no feature-statistics matching), ``tv_l2_weight=0`` ...
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from dfnas.config import build_config
from dfnas.errors import ConfigError
from dfnas.synthesis.generator import GeneratorConfig
from dfnas.teachers.loader import TeacherConfig
from dfnas.teachers.teacher import Teacher


@dataclass
class SynthesisConfig:
    """How a synthetic (or baseline) dataset is produced. Sizes are pixels; fractions are of ``steps``."""

    method: str = "full"  # a name in SYNTHESIS_METHODS: full | generator | plain | noise | real_random | real_teacher
    num_images: int = 500  # total over all rounds; earlier rounds get the remainder when it does not divide
    rounds: int = 2  # recursive label calibration rounds; 1 = no recursion
    batch_size: int = 250  # images optimized together (one shard per batch)
    steps: int = 200  # optimizer steps per batch
    lr: float = 0.1
    adam_betas: tuple[float, float] = (0.5, 0.9)
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to 0
    canvas_size: int | None = None  # None -> input size * 1.25 (40 for 32 px); == input size turns regions off
    # False: the canvas is the input (every step updates the whole image), whatever the teacher's input size.
    # Soft-target rounds need it to carry the teacher's class similarities: a random region per step moves the
    # order of the small classes from step to step (measured: benchmarks/calibration.py)
    regional_update: bool = True
    per_image_regions: bool = False  # one random region per image instead of one offset for the whole batch
    lowres_fraction: float = 0.3  # first fraction of steps optimizes a half-resolution canvas (0 = off)
    jitter: int = 2  # random roll of the forwarded region by up to this many pixels
    flip: bool = True  # random horizontal flip (p = 0.5) of the forwarded region
    init_std: float = 0.2  # fresh noise: N(0.5, init_std^2), clamped to [0, 1]
    # loss weights; None = the method's own default (SynthesisMethod.loss_defaults: `full` 1 / 0.05 / 10 / 1,
    # `generator` 1 / 10 / 1 / 0), filled in before the config is recorded
    ce_weight: float | None = None
    bn_weight: float | None = None  # BatchNorm feature-statistics matching
    first_bn_multiplier: float | None = None  # the first BN layer sees pixel statistics; weight it up
    tv_l1_weight: float = 0.0
    tv_l2_weight: float | None = None
    l2_weight: float = 0.0
    # an image's cross-entropy term switches off while the teacher gives its top target class at least this
    # probability (1 = never). Pushing a pixel image to certainty lowers the runner-up logits the most (the
    # gradient on logit j is p_j), which flattens the teacher's class similarities that calibration passes on
    ce_confidence_cap: float = 1.0
    # temperature of the teacher's softmax in round 0's loss (one-hot targets). At T = 1 the push away from
    # the runner-up classes is proportional to their probability, so the most similar classes are pushed down
    # the most; a large T pushes every other class down nearly equally and leaves their order to the teacher
    onehot_loss_temperature: float = 1.0
    calibration_temperature: float = 2.0  # softmax temperature of the soft targets of rounds >= 1
    # temperature of the teacher's softmax in the loss of rounds >= 1; None: calibration_temperature (the same
    # on both sides, so images become as confident as their parents). 1 with calibration_temperature T > 1
    # asks each round for the parents' predictions softened by T: rounds grow less confident and keep more
    # of the teacher's second choices
    calibration_loss_temperature: float | None = None
    # weight of the cross-entropy term in rounds >= 1; None: ce_weight. Weighting it up against the image priors
    # makes soft-target images reproduce their targets more closely without changing round 0 (`full` only)
    calibration_ce_weight: float | None = None
    label_mode: str = "auto"  # auto -> the method's default ("distill" for synthesis, "hard" for baselines)
    noise_std: float = 0.25  # `noise` baseline: N(0.5, noise_std^2) pixels
    real_path: str | None = None  # `real_random` / `real_teacher` controls: a dataset read_real accepts
    seed: int = 0
    log_every: int = 10  # steps between JSON-lines log records
    grid_per_class: int = 8  # columns of the per-class sample grid PNG
    plots: bool = True  # write samples.png and loss_curves.png when the dataset completes
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # method "generator" only

    def __post_init__(self) -> None:
        checks = [
            (self.num_images >= 1, "num_images must be >= 1"),
            (self.rounds >= 1, "rounds must be >= 1"),
            (self.num_images >= self.rounds, f"num_images ({self.num_images}) must be >= rounds ({self.rounds})"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
             "adam_betas must be two numbers in [0, 1)"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must lie in [0, 1)"),
            (0 <= self.lowres_fraction < 1, "lowres_fraction must lie in [0, 1)"),
            (self.jitter >= 0, "jitter must be >= 0"),
            (self.init_std >= 0 and self.noise_std >= 0, "init_std and noise_std must be >= 0"),
            (self.calibration_temperature > 0, "calibration_temperature must be > 0"),
            (self.calibration_loss_temperature is None or 0 < self.calibration_loss_temperature < math.inf,
             "calibration_loss_temperature must be a finite number > 0 or null"),
            (0 < self.ce_confidence_cap <= 1, f"ce_confidence_cap must lie in (0, 1], got {self.ce_confidence_cap}"),
            (self.calibration_ce_weight is None or 0 <= self.calibration_ce_weight < math.inf,
             f"calibration_ce_weight must be a finite number >= 0 or null, got {self.calibration_ce_weight}"),
            (0 < self.onehot_loss_temperature < math.inf,
             f"onehot_loss_temperature must be a finite number > 0, got {self.onehot_loss_temperature}"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.grid_per_class >= 1, "grid_per_class must be >= 1"),
            (self.label_mode in ("auto", "distill", "hard", "soft"),
             f"label_mode must be auto, distill, hard or soft, got {self.label_mode!r}"),
        ]
        for w in ("ce_weight", "bn_weight", "first_bn_multiplier", "tv_l1_weight", "tv_l2_weight", "l2_weight"):
            v = getattr(self, w)
            checks.append((v is None or (math.isfinite(v) and v >= 0), f"{w} must be a finite number >= 0, got {v}"))
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"synthesis config: {msg}")
        if not (math.isfinite(self.lr) and math.isfinite(self.calibration_temperature)):
            raise ConfigError(f"synthesis config: lr and calibration_temperature must be finite, got {self.lr} and "
                              f"{self.calibration_temperature}")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))

    def loss_temperature(self) -> float:
        """Temperature of the teacher's softmax in the loss of rounds >= 1."""
        t = self.calibration_loss_temperature
        return self.calibration_temperature if t is None else t

    def images_per_round(self) -> list[int]:
        """Images of each round; never increasing, so image i of round k+1 always has a parent in round k."""
        base, extra = divmod(self.num_images, self.rounds)
        return [base + (1 if r < extra else 0) for r in range(self.rounds)]

    def shards_per_round(self) -> list[int]:
        """Shards (batches) of each round."""
        return [math.ceil(n / self.batch_size) for n in self.images_per_round()]

    def resolved_canvas(self, input_size: int) -> int:
        """The canvas side for a teacher taking ``input_size`` px inputs (auto = 1.25 x input)."""
        if not self.regional_update:
            if self.canvas_size is not None and self.canvas_size != input_size:
                raise ConfigError(f"synthesis config: regional_update=false makes the canvas the teacher's input "
                                  f"({input_size} px), but canvas_size is {self.canvas_size}; drop one of the two")
            c = input_size
        else:
            c = self.canvas_size if self.canvas_size is not None else int(round(input_size * 1.25))
        if self.canvas_size is None and self.regional_update and self.lowres_fraction > 0:
            c += c % 2  # the half-resolution phase needs an even canvas
        if c < input_size:
            raise ConfigError(f"synthesis config: canvas_size ({c}) must be >= the teacher's input size "
                              f"({input_size})")
        if self.lowres_fraction > 0 and (c % 2 or input_size % 2):
            raise ConfigError(f"synthesis config: lowres_fraction > 0 needs an even canvas_size and input size, "
                              f"got {c} and {input_size}; set lowres_fraction=0 or an even canvas_size")
        if self.jitter >= input_size:
            raise ConfigError(f"synthesis config: jitter ({self.jitter}) must be smaller than the input size "
                              f"({input_size})")
        return c


def without_unusable_bn_term(cfg: SynthesisConfig, teacher: Teacher, stacklevel: int = 2) -> SynthesisConfig:
    """``cfg``, or a copy with ``bn_weight=0`` and a warning when ``teacher`` cannot give the BatchNorm term.

    The documented fallback for a teacher without BatchNorm layers and for a TorchScript teacher (its
    BatchNorm layers are found, but forward hooks cannot read their inputs).
    """
    why = teacher.bn_term_unavailable()
    if not cfg.bn_weight or why is None:
        return cfg
    warnings.warn(f"teacher {teacher.spec.name!r} {why}: the feature-statistics term is off (bn_weight=0)",
                  stacklevel=stacklevel + 1)
    return dataclasses.replace(cfg, bn_weight=0.0)


# Presets are plain override dicts on top of the dataclass defaults, so `--set` composes with them.
PRESETS: dict[str, dict[str, Any]] = {
    # The default CPU recipe: 500 images (2 rounds x 250) from ResNet-20 in under 10 minutes on 2 cores.
    "default": {},
    # A few seconds on one core: for tests and smoke runs.
    "tiny": {"num_images": 16, "rounds": 2, "batch_size": 4, "steps": 6, "log_every": 2, "grid_per_class": 2},
    # The default recipe with calibration rounds that carry the teacher's class similarities (Spearman against
    # real data 0.627 +- 0.012 over 3 seeds, against 0.381 for the defaults; round 1 rises above round 0 on one
    # seed of three; benchmarks/results/calibration_cpu_full.md): round 0's loss at T=4 keeps the runner-up
    # classes' order, later rounds ask for the parents' predictions softened at T=16, and every step sees the
    # whole image (no random region, jitter or flip), so that order is reproduced. Its near-uniform round-1
    # labels teach a student little (data-free training 15 % against 31 %), so it is not the default.
    "calibrated": {"onehot_loss_temperature": 4.0, "calibration_temperature": 16.0,
                   "calibration_loss_temperature": 1.0, "regional_update": False, "jitter": 0, "flip": False},
}


def make_config(preset: str = "default", overrides: list[str] | None = None, **fields: Any) -> SynthesisConfig:
    """Build a SynthesisConfig: preset < ``key=value`` overrides < keyword fields (explicit flags; see
    ``dfnas.config.merge_layers``).

    Keyword fields that are None are ignored, so CLI flags left unset keep the preset's value; ``teacher_name``,
    ``weights`` and ``allow_no_batchnorm`` set the ``teacher`` section's ``name``, ``weights`` and
    ``allow_no_batchnorm``.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthesis preset {preset!r}; expected one of: {', '.join(sorted(PRESETS))}")
    teacher_keys = {"teacher_name": "teacher.name", "weights": "teacher.weights",
                    "allow_no_batchnorm": "teacher.allow_no_batchnorm"}
    flags = {teacher_keys.get(k, k): v for k, v in fields.items()}
    return build_config(SynthesisConfig, PRESETS[preset], overrides, flags, where="synthesis config")
