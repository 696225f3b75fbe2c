"""Online data-free training: a replay bank of synthetic images that the few-step generator keeps refreshing.

The bank starts as the synthetic dataset (its images, targets and teacher logits) and keeps its size. At the
start of every epoch the generator (``dfnas.synthesis.generator``; its state carried over from the synthesis
stage when the dataset was made by the ``generator`` method) makes ``refresh_fraction`` x bank-size new
images that replace the oldest ones. New images are conditioned on the teacher's soft predictions for
randomly drawn bank images (recursive calibration, continued online) and, with ``adv_weight`` > 0, pushed
towards inputs where the student being trained still disagrees with the teacher (the adversarial term of
DFAD / CMI / Fast-DFKD). The student is trained on the bank by the shared loop with the online teacher's
soft labels; the bank, its write position and the generator state are in every loop checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfnas.data.imageset import ImageSet
from dfnas.errors import ConfigError, DataError
from dfnas.repro import make_generator
from dfnas.search.loop import DataSource, LoopContext
from dfnas.synthesis.config import SynthesisConfig, without_unusable_bn_term
from dfnas.synthesis.generator import FewStepSynthesizer
from dfnas.synthesis.methods import SYNTHESIS_METHODS, loss_weights, round0_targets
from dfnas.synthesis.optimize import centre_crop, to_uint8
from dfnas.teachers.teacher import Teacher

INVERSION_METHODS = ("full", "plain", "generator")  # synthesis methods whose data comes from the teacher alone


@dataclass
class OnlineConfig:
    """Online synthesis while training (``train.online.*``)."""

    enabled: bool | None = None  # None: on when the training data is a synthetic dataset (nothing real given)
    refresh_fraction: float = 0.1  # share of the bank replaced by new images at each epoch start
    batch_size: int = 128  # images per generator batch
    adv_weight: float = 1.0  # adversarial student-teacher disagreement term (0: off)

    def __post_init__(self) -> None:
        if not 0 < self.refresh_fraction <= 1:
            raise ConfigError(f"train.online.refresh_fraction must lie in (0, 1], got {self.refresh_fraction}")
        if self.batch_size < 1:
            raise ConfigError(f"train.online.batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.adv_weight < math.inf:
            raise ConfigError(f"train.online.adv_weight must be a finite number >= 0, got {self.adv_weight}")

    def active_for(self, ds: ImageSet) -> bool:
        """Whether online synthesis runs for training set ``ds`` (auto: only for data inverted from a teacher,
        i.e. when no real data is given)."""
        if self.enabled is not None:
            return self.enabled
        return ds.info.get("kind") in INVERSION_METHODS


def synthesis_config_of(ds: ImageSet) -> SynthesisConfig:
    """The SynthesisConfig recorded in a synthetic dataset's manifest (the generator and loss settings)."""
    from dfnas.config import from_dict
    from dfnas.data.shards import read_manifest

    src = ds.info.get("source")
    if not src or not (Path(src) / "manifest.json").is_file():
        raise DataError("online synthesis needs a synthetic dataset directory (with manifest.json) as training data")
    cfg = dict(read_manifest(src).get("config") or {})
    cfg.pop("teacher", None)  # the online teacher is passed in; its identity is checked by the caller
    method = SYNTHESIS_METHODS.build("generator")
    if cfg.get("method") != "generator":  # another method's loss weights do not suit a generator
        for key in method.loss_defaults:
            cfg[key] = None
    return method.with_loss_defaults(from_dict(SynthesisConfig, cfg, where=f"manifest of {src}"))


class OnlineBank(DataSource):
    """The replay bank (a fixed-size ImageSet) and the generator that refreshes it."""

    def __init__(self, ds: ImageSet, teacher: Teacher, cfg: OnlineConfig, seed: int, device: torch.device,
                 student: torch.nn.Module | None = None) -> None:
        canvas = int(ds.images.shape[-1])
        if canvas % 4 or ds.images.shape[-2] != canvas:
            raise ConfigError(f"online synthesis needs square canvases with a side divisible by 4; the dataset's "
                              f"images are {tuple(ds.images.shape[-2:])} (set train.online.enabled=false)")
        if teacher.num_classes != ds.num_classes:
            raise DataError(f"teacher has {teacher.num_classes} classes but the dataset {ds.num_classes}")
        self.cfg, self.seed, self.device, self.teacher = cfg, seed, device, teacher
        self.scfg = without_unusable_bn_term(synthesis_config_of(ds), teacher)  # e.g. a TorchScript teacher
        gcfg = dataclasses.replace(self.scfg.generator, adv_weight=cfg.adv_weight)
        fbm = float(self.scfg.first_bn_multiplier or 0)
        self.synth = FewStepSynthesizer(teacher, gcfg, loss_weights(self.scfg), fbm,
                                        canvas, ds.input_size, make_generator(seed, "online", "init"),
                                        jitter=self.scfg.jitter, flip=self.scfg.flip, per_image_regions=True)
        self.carried = self._carry_over(Path(str(ds.info.get("source"))))
        self.bank = ImageSet(ds.images.clone(), ds.targets.clone(), ds.input_size, list(ds.class_names),
                             ds.logits.clone() if ds.logits is not None else None, ds.rounds.clone(), ds.label_mode,
                             dict(ds.info))
        self.online_round = int(ds.rounds.max()) + 1  # the round number images made online carry
        self.position = 0  # next bank slot to overwrite (ring buffer: oldest first)
        self.refreshed_epoch = -1
        self.student = student
        self.made = 0  # images synthesized online so far

    def _carry_over(self, source: Path) -> bool:
        """Start from the synthesis stage's generator state when its shape matches; else warm up afresh."""
        path = source / "state" / "generator_rank0.pt"
        if path.is_file():
            try:
                st = torch.load(path, map_location="cpu", weights_only=True)
                self.synth.load_state_dict(st["state"])
                return True
            except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError, ConfigError):
                pass  # another shape or unreadable: a fresh generator below
        g, b, k = self.scfg.generator, self.cfg.batch_size, self.teacher.num_classes
        self.synth.warm_up(g.warmup_batches, g.warmup_steps, lambda i: round0_targets(i * b, b, k, self.device),
                           make_generator(self.seed, "online", "warmup", device=self.device),
                           make_generator(self.seed, "online", "warmup-geometry"), desc="online generator warm-up")
        return False

    # -- DataSource ------------------------------------------------------------------------------------
    def current(self) -> ImageSet:
        return self.bank

    def epoch_start(self, ctx: LoopContext) -> ImageSet:
        if self.refreshed_epoch == ctx.epoch:  # resumed mid-epoch: this epoch's images are already in
            return self.bank
        n_new = max(1, int(round(len(self.bank) * self.cfg.refresh_fraction)))
        student = self.student if self.student is not None else ctx.model
        was = student.training
        req = [p.requires_grad for p in student.parameters()]
        for p in student.parameters():  # input gradients only: no weight gradients for the student here
            p.requires_grad_(False)
        try:
            for i, start in enumerate(range(0, n_new, self.cfg.batch_size)):
                self._add_batch(min(self.cfg.batch_size, n_new - start), ctx.epoch, i, student)
        finally:
            for p, r in zip(student.parameters(), req, strict=True):
                p.requires_grad_(r)
            student.train(was)
        self.refreshed_epoch = ctx.epoch
        ctx.logger.log({"kind": "online_synthesis", "epoch": ctx.epoch, "new_images": n_new,
                        "images_made": self.made, "bank": len(self.bank)}, step=ctx.step)
        return self.bank

    def _add_batch(self, count: int, epoch: int, index: int, student: torch.nn.Module) -> None:
        """Synthesize ``count`` images and write them over the oldest bank slots."""
        gen = make_generator(self.seed, "online", epoch, index, "draw")
        z_gen = make_generator(self.seed, "online", epoch, index, "z", device=self.device)
        geom = make_generator(self.seed, "online", epoch, index, "geometry")
        n = len(self.bank)
        assert self.bank.logits is not None
        parents = torch.randint(0, n, (count,), generator=gen)
        targets = torch.softmax(self.bank.logits[parents].double() / self.scfg.calibration_temperature, 1).float()
        student.eval()
        canvas = self.synth.make_batch(targets.to(self.device), self.scfg.loss_temperature(),
                                       self.scfg.generator.steps, z_gen, geom, student=student,
                                       where=f"online epoch {epoch} batch {index}")
        images = to_uint8(canvas)  # (count, C, S, S)
        logits = self.teacher.logits(centre_crop(images, self.bank.input_size).float().div(255.0)).float().cpu()
        slots = (self.position + torch.arange(count)) % n
        self.bank.images[slots] = images.cpu()
        self.bank.targets[slots] = targets
        self.bank.logits[slots] = logits
        self.bank.rounds[slots] = self.online_round
        self.position = int((self.position + count) % n)
        self.made += count

    def state_dict(self) -> dict[str, Any]:
        assert self.bank.logits is not None
        return {"images": self.bank.images.clone(), "targets": self.bank.targets.clone(),
                "logits": self.bank.logits.clone(), "rounds": self.bank.rounds.clone(), "position": self.position,
                "refreshed_epoch": self.refreshed_epoch, "made": self.made, "synth": self.synth.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["images"].shape) != tuple(self.bank.images.shape):
            raise DataError(f"checkpointed replay bank holds {tuple(state['images'].shape)} images, this run "
                            f"{tuple(self.bank.images.shape)}")
        self.bank.images.copy_(state["images"])
        self.bank.targets.copy_(state["targets"])
        assert self.bank.logits is not None
        self.bank.logits.copy_(state["logits"])
        self.bank.rounds.copy_(state["rounds"])
        self.position, self.refreshed_epoch = int(state["position"]), int(state["refreshed_epoch"])
        self.made = int(state["made"])
        self.synth.load_state_dict(state["synth"])
