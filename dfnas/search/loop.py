"""The one training loop behind every search method and behind training a fixed network from scratch.

Per step: optional architecture step on a held-out batch (method hook), the method's path/weight setup,
then one SGD step on the network weights (momentum, optional Nesterov, weight decay, gradient clipping,
cosine learning rate per step). At each epoch end: held-out evaluation of the method's current
configuration and the method's record. Everything needed to continue is checkpointed atomically every
epoch (and every ``checkpoint_every_steps`` steps): rerunning the same command resumes where it stopped.

Resuming is bitwise exact on CPU: the data generator is restored to its state at the start of the current
epoch and the already-consumed batches are regenerated and skipped (cropping only, no forward pass), so
the batches after the resume are the ones an uninterrupted run would have drawn. The held-out stream is
restored the same way; the method's own generator and all optimizer/scheduler states are saved as is.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfnas.config import ADDED_LATER, identity_dict
from dfnas.data.imageset import MIX_MODES, ImageSet, iterate_batches
from dfnas.errors import ConfigError, DfnasError
from dfnas.io import MetricLogger, atomic_torch_save
from dfnas.repro import make_generator
from dfnas.search.base import Batch, SearchMethod
from dfnas.search.losses import Criterion
from dfnas.search.weights_init import CANDIDATE_INITS, identity_init_candidates, init_parameters
from dfnas.spaces.base import Arch

CHECKPOINT_VERSION = 1
# LoopConfig keys that do not change results: left out of a run's resume identity
CADENCE_KEYS = ("checkpoint_every_steps", "log_every_steps")


@dataclass
class LoopConfig:
    """Weight-training settings shared by all methods (and by ``dfnas.train``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0  # max global L2 norm of weight gradients; <= 0 disables clipping
    augment: bool = True  # random canvas crop + horizontal flip (ImageSet.crop_batch)
    pad: int = 4  # zero padding for random crops of images exactly the input size
    mix: str = field(default="none", metadata=ADDED_LATER)  # none | mixup | cutmix within each batch (needs an
    # online teacher to label the mixed images)
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends only
    log_every_steps: int = 10
    eval_max_batches: int | None = 8  # held-out batches evaluated per epoch; None: all; 0: no evaluation
    eval_batch_size: int = 256
    max_steps: int | None = None  # stop training after this many weight steps (short runs, benchmarks)
    # supernet candidates whose convolutions keep their input's shape start as the identity (plus their random
    # draw) instead of noise (weights_init.identity_init_candidates); no effect on a network without choices
    candidate_init: str = field(default="default", metadata=ADDED_LATER)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0 or self.lr_min < 0:
            raise ConfigError(f"lr must be > 0 and lr_min >= 0, got {self.lr} and {self.lr_min}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.mix not in MIX_MODES:
            raise ConfigError(f"mix {self.mix!r} is not one of {list(MIX_MODES)}")
        if self.candidate_init not in CANDIDATE_INITS:
            raise ConfigError(f"candidate_init {self.candidate_init!r} is not one of {list(CANDIDATE_INITS)}")


def loop_identity(cfg: LoopConfig) -> dict[str, Any]:
    """The loop settings that determine results: all but the cadence keys (settings added later only when set)."""
    return {k: v for k, v in identity_dict(cfg).items() if k not in CADENCE_KEYS}



class InfiniteBatches:
    """Endless augmented batches from a held-out split, reshuffled every pass, with resumable state."""

    def __init__(self, ds: ImageSet, cfg: LoopConfig, generator: torch.Generator, device: torch.device) -> None:
        self.ds, self.cfg, self.generator, self.device = ds, cfg, generator, device
        self._it: Iterator[Batch] | None = None
        self._pass_start = generator.get_state()
        self._consumed = 0

    def _new_pass(self) -> None:
        self._pass_start = self.generator.get_state()
        self._consumed = 0
        bs = min(self.cfg.batch_size, len(self.ds))
        self._it = iterate_batches(self.ds, bs, self.generator, self.cfg.augment, self.cfg.pad,
                                   drop_last=True, device=self.device)

    def __next__(self) -> Batch:
        if self._it is None:
            self._new_pass()
        assert self._it is not None
        try:
            b = next(self._it)
        except StopIteration:
            self._it = None
            return self.__next__()
        self._consumed += 1
        return b

    def state_dict(self) -> dict[str, Any]:
        return {"active": self._it is not None, "pass_start": self._pass_start, "consumed": self._consumed,
                "now": self.generator.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if not s["active"]:
            self.generator.set_state(s["now"])
            self._it = None
            return
        self.generator.set_state(s["pass_start"])
        self._new_pass()
        for _ in range(s["consumed"]):  # regenerate and drop the batches already used
            next(self)


class DataSource:
    """A training set that changes between epochs (online data-free training: a replay bank that new synthetic
    images refresh). ``epoch_start`` returns the set the coming epoch sweeps; everything needed to continue
    after a kill is in ``state_dict`` (saved in every loop checkpoint)."""

    def epoch_start(self, ctx: LoopContext) -> ImageSet:
        raise NotImplementedError

    def current(self) -> ImageSet:
        """The set the current epoch sweeps (after a resume: the restored one)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


@dataclass
class LoopContext:
    """What hooks see: the model, data, optimizer and counters of the running loop."""

    model: nn.Module
    method: SearchMethod
    cfg: LoopConfig
    criterion: Criterion
    device: torch.device
    train: ImageSet
    held_out: ImageSet | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    logger: MetricLogger
    out_dir: Path
    steps_per_epoch: int
    seed: int
    progress: bool = True
    epoch: int = 0
    step: int = 0  # weight steps completed so far (global)
    save_checkpoint: Callable[[], None] = lambda: None  # hooks (SPOS evolution) checkpoint through this
    extra: dict[str, Any] = field(default_factory=dict)
    data_source: DataSource | None = None  # replaces ``train`` at every epoch start when set

    @property
    def total_steps(self) -> int:
        planned = self.cfg.epochs * self.steps_per_epoch
        return planned if self.cfg.max_steps is None else min(planned, self.cfg.max_steps)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass
class LoopOutcome:
    arch: Arch
    model: nn.Module
    steps: int
    elapsed_s: float
    resumed: bool
    last_eval: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # what the method left in ctx.extra (SPOS: best score)


@torch.no_grad()
def evaluate_loss_acc(model: nn.Module, ds: ImageSet, criterion: Criterion, device: torch.device,
                      batch_size: int = 256, max_batches: int | None = None) -> dict[str, float]:
    """Mean loss and top-1 accuracy (percent) on centre crops of ``ds``, in eval mode."""
    was = model.training
    model.eval()
    tot_loss, correct, n = 0.0, 0, 0
    batches = iterate_batches(ds, batch_size, None, augment=False, device=device)
    for x, y in itertools.islice(batches, max_batches):
        logits = model(x)  # (B, K)
        tot_loss += float(criterion(logits, x, y)) * len(x)
        correct += int((logits.argmax(1) == criterion.classes(y)).sum())
        n += len(x)
    model.train(was)
    return {"loss": tot_loss / max(n, 1), "acc": 100.0 * correct / max(n, 1), "n": n}


class LoopInterrupted(Exception):
    """Raised by an ``on_step`` callback to stop a run as a kill would (used by tests)."""


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n >= batch_size else 1


def run_loop(method: SearchMethod, train: ImageSet, held_out: ImageSet | None, cfg: LoopConfig,
             criterion: Criterion, out_dir: str | Path, device: torch.device, config_hash: str, seed: int,
             progress: bool = True, on_step: Callable[[LoopContext], None] | None = None,
             desc: str | None = None, data_source: DataSource | None = None) -> LoopOutcome:
    """Train ``method``'s model on ``train`` and return the method's final architecture.

    Writes ``log.jsonl`` and ``checkpoint.pt`` into ``out_dir``; when a checkpoint of the same
    ``config_hash`` exists there, continues from it (a finished run returns immediately). With a
    ``data_source``, every epoch sweeps the set it returns at that epoch's start (same size as ``train``).
    """
    from tqdm import tqdm

    cfg.check()
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    if method.needs_held_out and held_out is None:
        raise ConfigError(f"method {method.name!r} needs a held-out split (set held_out > 0)")
    if cfg.mix != "none" and criterion.teacher is None:
        raise ConfigError(f"mix {cfg.mix!r} needs an online teacher to label the mixed images (stored labels "
                          "belong to the unmixed ones); use online_teacher: true or mix: none")
    # constructors draw initial weights from the global RNG: redraw them from the run's seed
    model = init_parameters(method.build_model(), make_generator(seed, "loop", "init"))
    if cfg.candidate_init == "identity":
        identity_init_candidates(model)
    # channels-last weights make every activation channels-last: on CPU oneDNN then skips reordering tensors
    # with few channels on each call (the 8-channel 1x1 convolution of NB201 at C=8 runs 20x faster), a step of
    # the default's cell 15-20 % and of its DARTS supernet 35 % faster; the values change by float rounding only
    model = model.to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    bs = min(cfg.batch_size, len(train))
    spe = _steps_per_epoch(len(train), bs)
    optimizer, scheduler = make_optimizer(params, cfg, cfg.epochs * spe)
    data_gen = make_generator(seed, "loop", "train-batches")
    held_iter = (InfiniteBatches(held_out, cfg, make_generator(seed, "loop", "held-out-batches"), device)
                 if held_out is not None else None)
    logger = MetricLogger(out / "log.jsonl")
    ctx = LoopContext(model, method, cfg, criterion, device, train, held_out, optimizer, scheduler, logger, out,
                      spe, seed, progress, data_source=data_source)
    method.setup(ctx)

    st: dict[str, Any] = {"phase": "train", "batch_in_epoch": 0, "epoch_gen": data_gen.get_state(),
                          "stats": [0.0, 0, 0], "elapsed_s": 0.0, "arch": None, "last_eval": {}}
    t_start = time.perf_counter()

    def save(phase: str | None = None) -> None:
        if phase is not None:
            st["phase"] = phase
        atomic_torch_save(ckpt_path, {
            "version": CHECKPOINT_VERSION, "config_hash": config_hash, "phase": st["phase"],
            "epoch": ctx.epoch, "step": ctx.step, "batch_in_epoch": st["batch_in_epoch"],
            "epoch_gen": st["epoch_gen"], "stats": list(st["stats"]), "last_eval": dict(st["last_eval"]),
            "elapsed_s": st["elapsed_s"] + time.perf_counter() - t_start, "arch": st["arch"],
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "method": method.state_dict(), "held_out": held_iter.state_dict() if held_iter else None,
            "extra": dict(ctx.extra), "data_source": data_source.state_dict() if data_source is not None else None,
        })

    ctx.save_checkpoint = save
    resumed = ckpt_path.exists()
    if resumed:
        ck = load_checkpoint(ckpt_path, config_hash)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        method.load_state_dict(ck["method"])
        if held_iter is not None and ck["held_out"] is not None:
            held_iter.load_state_dict(ck["held_out"])
        ctx.epoch, ctx.step = ck["epoch"], ck["step"]
        ctx.extra.update(ck.get("extra") or {})
        if data_source is not None and ck.get("data_source") is not None:
            data_source.load_state_dict(ck["data_source"])
            ctx.train = data_source.current()
        st.update({k: ck[k] for k in ("phase", "batch_in_epoch", "epoch_gen", "stats", "elapsed_s", "arch",
                                      "last_eval")})
        if st["phase"] == "done":
            logger.close()
            return LoopOutcome(Arch.from_json(st["arch"]), model, ctx.step, st["elapsed_s"], True, st["last_eval"],
                               dict(ctx.extra))
        logger.log({"kind": "resume", "epoch": ctx.epoch, "step": ctx.step, "phase": st["phase"]})

    bar = tqdm(total=ctx.total_steps, initial=min(ctx.step, ctx.total_steps), disable=not progress,
               desc=desc or f"search[{method.name}]", leave=False, dynamic_ncols=True)
    try:
        if st["phase"] == "train":
            _train_epochs(ctx, st, data_gen, held_iter, save, bar, on_step)
            save("finalize")
        arch = method.finalize(ctx)
        st["arch"] = arch.to_json()
        save("done")
        logger.log({"kind": "done", "step": ctx.step, "arch": str(arch)})
    finally:
        bar.close()
        logger.close()
    elapsed = st["elapsed_s"] + time.perf_counter() - t_start
    return LoopOutcome(arch, model, ctx.step, elapsed, resumed, st["last_eval"], dict(ctx.extra))


def make_optimizer(params: list[torch.Tensor], cfg: LoopConfig, total_steps: int, lr: float | None = None,
                   lr_min: float | None = None
                   ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """The loop's SGD (momentum, optional Nesterov, weight decay) and its schedule: cosine from ``lr`` to
    ``lr_min`` (default: the config's) over ``total_steps``, stepped once per weight step."""
    optimizer = torch.optim.SGD(params, lr=cfg.lr if lr is None else lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps),
                                                           eta_min=cfg.lr_min if lr_min is None else lr_min)
    return optimizer, scheduler


def _sgd_step(opt: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
              params: list[torch.Tensor], grad_clip: float) -> None:
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    scheduler.step()


def finetune(model: nn.Module, train: ImageSet, cfg: LoopConfig, criterion: Criterion, device: torch.device,
             generator: torch.Generator, steps: int, lr: float) -> float:
    """``steps`` weight steps of the loop's kind (augmentation, SGD, clipping; cosine from ``lr`` to 0) on the
    model as it is configured now, e.g. one path of a supernet, whose weights it starts from. Parameters
    outside that path get no gradient and stay as they are. Returns the mean training loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt, scheduler = make_optimizer(params, cfg, steps, lr=lr, lr_min=0.0)
    bs = min(cfg.batch_size, len(train))
    model.train()
    done, total = 0, 0.0
    while done < steps:  # as many passes over ``train`` as the steps need
        for x, y in iterate_batches(train, bs, generator, cfg.augment, cfg.pad, drop_last=True, device=device,
                                    mix=cfg.mix if cfg.augment else "none"):
            opt.zero_grad(set_to_none=True)
            loss = criterion(model(x), x, y)  # x: (B, C, S, S)
            if not torch.isfinite(loss.detach()):
                raise DfnasError(f"fine-tuning loss became {float(loss.detach())} at step {done}; lower its "
                                 "learning rate")
            loss.backward()
            _sgd_step(opt, scheduler, params, cfg.grad_clip)
            total += float(loss.detach())
            done += 1
            if done >= steps:
                break
    return total / max(done, 1)


def load_checkpoint(path: Path, config_hash: str) -> dict[str, Any]:
    """The loop checkpoint at ``path``, refused (``DfnasError``) when unreadable or of another configuration."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise DfnasError(f"checkpoint {str(path)!r} cannot be read ({e}); delete it to start over") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise DfnasError(f"checkpoint {str(path)!r} is not a dfnas loop checkpoint of version {CHECKPOINT_VERSION}")
    if ck["config_hash"] != config_hash:
        raise DfnasError(f"{str(path.parent)!r} holds a run with a different configuration (hash "
                         f"{ck['config_hash']} != {config_hash}); use another --out, or delete the directory "
                         "to start over")
    return ck


def _train_epochs(ctx: LoopContext, st: dict[str, Any], data_gen: torch.Generator,
                  held_iter: InfiniteBatches | None, save: Callable[..., None], bar: Any,
                  on_step: Callable[[LoopContext], None] | None) -> None:
    cfg, model, method, opt = ctx.cfg, ctx.model, ctx.method, ctx.optimizer
    params = [p for g in opt.param_groups for p in g["params"]]
    bs = min(cfg.batch_size, len(ctx.train))
    while ctx.epoch < cfg.epochs and ctx.step < ctx.total_steps:
        t_epoch = time.perf_counter()
        if ctx.data_source is not None:  # new images for this epoch (a no-op when resuming mid-epoch)
            ctx.train = ctx.data_source.epoch_start(ctx)
        data_gen.set_state(st["epoch_gen"])
        batches = iterate_batches(ctx.train, bs, data_gen, cfg.augment, cfg.pad, drop_last=True, device=ctx.device,
                                  mix=cfg.mix if cfg.augment else "none")
        for _ in range(st["batch_in_epoch"]):  # resume mid-epoch: regenerate and skip consumed batches
            next(batches)
        for x, y in batches:
            arch_rec: dict[str, float] = {}
            if method.wants_arch_step(ctx):
                if held_iter is None:
                    raise ConfigError(f"method {method.name!r} needs a held-out split (set held_out > 0)")
                arch_rec = method.arch_step(ctx, next(held_iter), (x, y))
            method.before_weight_step(ctx)
            model.train()
            opt.zero_grad(set_to_none=True)
            logits, lv = _forward_backward(ctx, x, y)
            _sgd_step(opt, ctx.scheduler, params, cfg.grad_clip)
            ctx.step += 1
            method.after_weight_step(ctx)
            st["batch_in_epoch"] += 1
            correct = int((logits.detach().argmax(1) == ctx.criterion.classes(y)).sum())
            st["stats"] = [st["stats"][0] + lv * len(x), st["stats"][1] + correct, st["stats"][2] + len(x)]
            bar.update(1)
            if ctx.step % max(1, cfg.log_every_steps) == 0:
                ctx.logger.log({"kind": "step", "epoch": ctx.epoch, "step": ctx.step, "loss": lv,
                                "lr": ctx.lr, **arch_rec}, step=ctx.step)
                bar.set_postfix(loss=f"{lv:.3f}", epoch=ctx.epoch)
            if cfg.checkpoint_every_steps > 0 and ctx.step % cfg.checkpoint_every_steps == 0:
                save()
            if on_step is not None:
                on_step(ctx)
            if ctx.step >= ctx.total_steps:
                break
        _end_epoch(ctx, st, time.perf_counter() - t_epoch)
        ctx.epoch += 1
        st["batch_in_epoch"], st["epoch_gen"], st["stats"] = 0, data_gen.get_state(), [0.0, 0, 0]
        save()


def _forward_backward(ctx: LoopContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Loss and gradients of one weight step on batch ``x`` (B, C, S, S): one pass of the configured model, or
    the mean over the method's ``weight_paths`` (targets computed once). Returns (last logits (B, K), loss)."""
    paths = ctx.method.weight_paths(ctx)
    runs: list[Arch | None] = [None] if paths is None else list(paths)
    target = ctx.criterion.targets(x, y)
    lv = 0.0
    for path in runs:
        if path is not None:
            ctx.model.set_path(path)
        logits = ctx.model(x)  # (B, K)
        loss = ctx.criterion.loss_on(logits, target) / len(runs)
        if not torch.isfinite(loss.detach()):
            raise DfnasError(f"training loss became {float(loss.detach())} at step {ctx.step} (epoch {ctx.epoch}); "
                             "lower the learning rate (lr) or enable grad_clip")
        loss.backward()
        lv += float(loss.detach())
    return logits.detach(), lv


def _end_epoch(ctx: LoopContext, st: dict[str, Any], seconds: float) -> None:
    loss_sum, correct, n = st["stats"]
    rec: dict[str, Any] = {"kind": "epoch", "epoch": ctx.epoch, "step": ctx.step, "lr": ctx.lr,
                           "train_loss": loss_sum / max(n, 1), "train_acc": 100.0 * correct / max(n, 1),
                           "epoch_seconds": seconds}
    if ctx.held_out is not None and ctx.cfg.eval_max_batches != 0 and ctx.method.prepare_eval(ctx):
        ev = evaluate_loss_acc(ctx.model, ctx.held_out, ctx.criterion, ctx.device, ctx.cfg.eval_batch_size,
                               ctx.cfg.eval_max_batches)
        rec.update(held_out_loss=ev["loss"], held_out_acc=ev["acc"])
        st["last_eval"] = {"held_out_loss": ev["loss"], "held_out_acc": ev["acc"]}
    rec.update(ctx.method.epoch_end(ctx))
    ctx.logger.log(rec, step=ctx.step)
