"""``run_search``: one architecture search on an ImageSet (synthetic or real), written to a run directory.

    OUT/config.json   resolved configuration, seed, split sizes, dataset (incl. teacher identity), environment
    OUT/log.jsonl     step / epoch / generation records (losses, lr, softmax(alpha), population ...)
    OUT/checkpoint.pt everything needed to resume (rerun the same command)
    OUT/arch.json     {"format", "arch": Arch.to_json(), "space": Space.config(), "info"}
    OUT/arch.txt      the architecture string
    OUT/result.json   arch, MACs/params, search time; NAS-Bench-201 ground truth when available
    OUT/progress.png  search curves

Networks consume RGB pixels in [0, 1] (no mean/std normalization; the stem's BatchNorm absorbs it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfnas import distributed as D
from dfnas.config import ADDED_LATER, from_dict, identity_dict, to_dict
from dfnas.data import ImageSet, open_dataset
from dfnas.errors import ArchError, ConfigError
from dfnas.io import atomic_write_json
from dfnas.repro import make_generator, resolve_device
from dfnas.search.base import SEARCH_METHODS, build_method, get_method_cls
from dfnas.search.darts import DartsConfig
from dfnas.search.distributed import distribute, run_on_ranks
from dfnas.search.loop import LoopConfig, LoopContext, loop_identity, run_loop
from dfnas.search.losses import Criterion
from dfnas.search.proxyless import ProxylessConfig
from dfnas.search.report import plot_progress
from dfnas.search.rundir import (
    dataset_info,
    resolve_teacher,
    teacher_identity,
    with_label_mode,
)
from dfnas.search.spos import SposConfig
from dfnas.search.zerocost import ZeroCostConfig
from dfnas.search.zerocost.prefilter import PrefilterConfig, prefilter_space
from dfnas.spaces.archfile import nb201_ground_truth, write_arch_files
from dfnas.spaces.base import Arch, Space, SpaceConfig, space_from_config

# Defaults live beside what they configure: a method's CPU epochs in its class (``default_epochs``), a space's
# CPU size in its class (``cpu_defaults``). This summary of the methods that set their own epochs is read-only.
DEFAULT_EPOCHS: dict[str, int] = {n: get_method_cls(n).default_epochs for n in SEARCH_METHODS.names()
                                  if "default_epochs" in vars(get_method_cls(n))}


@dataclass
class SearchConfig:
    """Everything a search needs; ``from_dict(SearchConfig, {...})`` rejects unknown keys."""

    method: str = "darts"  # darts | proxyless | spos | zerocost (or a proxy name: naswot, synflow ...)
    space: SpaceConfig = field(default_factory=SpaceConfig)  # name + options (over the space's cpu_defaults)
    epochs: int | None = None  # None: the method's CPU default (its class's default_epochs)
    batch_size: int = 64
    lr: float = 0.025  # SGD on network weights, cosine to lr_min per step (DARTS: 0.025 -> 0.001)
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    held_out: float = 0.5  # fraction of the images held out (architecture steps / candidate scoring)
    seed: int = 0
    device: str = "auto"
    label_mode: str | None = None  # distill | soft | hard; None: the dataset's own
    temperature: float = 4.0  # distillation temperature
    augment: bool = True
    checkpoint_every_steps: int = 0  # 0: checkpoint at epoch ends (and SPOS generations) only
    log_every_steps: int = 10
    eval_max_batches: int | None = 8  # held-out batches evaluated per epoch (None: all, 0: none)
    max_steps: int | None = None  # cap on weight steps (quick runs, benchmarks)
    # default | identity: candidate convolutions that keep their input's shape start as the identity map plus
    # their random draw, so an untrained parametric op is no worse than a skip (dfnas.search.weights_init)
    candidate_init: str = field(default="default", metadata=ADDED_LATER)
    darts: DartsConfig = field(default_factory=DartsConfig)
    proxyless: ProxylessConfig = field(default_factory=ProxylessConfig)
    spos: SposConfig = field(default_factory=SposConfig)
    zerocost: ZeroCostConfig = field(default_factory=ZeroCostConfig)  # every training-free method's options
    # zero-cost pre-filter of a supernet search: keep the options the proxies rank best (off by default)
    prefilter: PrefilterConfig = field(default_factory=PrefilterConfig, metadata=ADDED_LATER)

    def check(self) -> None:
        cls = get_method_cls(self.method)  # ConfigError listing the methods for an unknown name
        if self.method == "fixed":
            raise ConfigError("method 'fixed' trains a given architecture: use dfnas.train.train_network")
        if not 0.0 < self.held_out < 1.0 and cls.needs_held_out:
            raise ConfigError(f"method {self.method!r} needs a held-out split: held_out must lie in (0, 1), "
                              f"got {self.held_out}")
        if self.prefilter.enabled and cls.training_free:
            raise ConfigError(f"prefilter applies to the methods that train a supernet; {self.method!r} is "
                              f"training-free (its zerocost options already choose the candidates)")
        warmup, epochs = getattr(self.method_options(), "warmup_epochs", None), self.resolved_epochs()
        if warmup is not None and warmup >= epochs:  # DARTS, ProxylessNAS
            raise ConfigError(f"{self.options_field()}.warmup_epochs={warmup} leaves no architecture step in the "
                              f"search's {epochs} epochs (the cell would be the argmax of the "
                              f"random initialization): use fewer warm-up epochs or more epochs")
        self.loop().check()

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return get_method_cls(self.method).default_epochs if self.method in SEARCH_METHODS else 10

    def loop(self) -> LoopConfig:
        return LoopConfig(epochs=self.resolved_epochs(), batch_size=self.batch_size, lr=self.lr, lr_min=self.lr_min,
                          momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay,
                          grad_clip=self.grad_clip, augment=self.augment,
                          checkpoint_every_steps=self.checkpoint_every_steps, log_every_steps=self.log_every_steps,
                          eval_max_batches=self.eval_max_batches, max_steps=self.max_steps,
                          candidate_init=self.candidate_init)

    def options_field(self) -> str:
        """The block holding this method's options (the per-proxy methods share ``zerocost``)."""
        return get_method_cls(self.method).options_field or self.method

    def method_options(self) -> Any:
        return getattr(self, self.options_field(), None)

    def resolved(self, only_active_method: bool = False) -> dict[str, Any]:
        """This config as a plain dict with the method's default epochs filled in (what a run records).

        ``only_active_method`` drops the option blocks of the methods that do not run (their settings cannot
        change this run's result), and settings added later while at their defaults (``identity_dict``), e.g.
        to key cached results on the settings that matter.
        """
        d = {**(identity_dict(self) if only_active_method else to_dict(self)), "epochs": self.resolved_epochs()}
        if only_active_method:
            d = {k: v for k, v in d.items() if k == self.options_field() or k not in SEARCH_METHODS}
        return d


@dataclass
class SearchResult:
    arch: Arch
    space: Space
    out_dir: Path
    result: dict[str, Any]
    model: nn.Module | None = None  # the trained supernet (weights for the found arch: subnet_state_dict)


def make_space(space_cfg: SpaceConfig | dict[str, Any], ds: ImageSet | None = None, *,
               num_classes: int | None = None, input_size: int | None = None, in_channels: int | None = None
               ) -> Space:
    """Build the space a search runs on: CPU defaults < configured options; class count, input size and image
    channels from ``ds`` (or, without a dataset, from the keywords, e.g. the teacher's) where the options leave
    them unset. ArchError for a space nothing searches (a fixed family), before any work starts."""
    sc = space_cfg if isinstance(space_cfg, SpaceConfig) else from_dict(SpaceConfig, dict(space_cfg), "space")
    space = space_from_config(sc, ds, cpu_defaults=True, num_classes=num_classes, input_size=input_size,
                              in_channels=in_channels)
    if space.not_searchable:
        raise ArchError(space.not_searchable)
    return space


@dataclass
class SearchSetup:
    """Everything a search needs before the loop starts (``prepare_search``)."""

    cfg: SearchConfig
    device: torch.device
    ds: ImageSet
    space: Space
    train: ImageSet
    held: ImageSet
    teacher: Any
    identity: dict[str, Any]  # what a resumed run must match (written to config.json, hashed)
    record: dict[str, Any]  # what config.json records besides the identity
    prefilter: dict[str, Any] | None = None  # what the zero-cost pre-filter kept (None: no pre-filter)

    def build_method(self) -> Any:
        cfg = self.cfg
        return build_method(cfg.method, self.space, cfg.method_options(),
                            make_generator(cfg.seed, "method", cfg.method), self.device)

    def criterion(self) -> Criterion:
        return Criterion(self.ds.label_mode, self.cfg.temperature, self.teacher)


def prepare_search(cfg: SearchConfig | dict[str, Any], data: ImageSet | str | Path,
                   device: str | torch.device | None = None, teacher: Any = None, progress: bool = True
                   ) -> SearchSetup:
    """Validate the config and data, build the space (restricted by the zero-cost pre-filter when it is on),
    split the data and describe the run's identity."""
    if not isinstance(cfg, SearchConfig):
        cfg = from_dict(SearchConfig, dict(cfg), "search")
    cfg.check()
    dev = resolve_device(device if device is not None else cfg.device)
    ds = data if isinstance(data, ImageSet) else open_dataset(data)
    ds = with_label_mode(ds, cfg.label_mode)
    space = make_space(cfg.space, ds)
    ds.check_compatible(space.num_classes, space.input_size, what=f"dataset {ds.info.get('source') or ''}".strip(),
                        in_channels=space.in_channels)
    space.check_input()  # ArchError now rather than a shape error inside the first step
    train, held = ds.split(cfg.held_out, make_generator(cfg.seed, "search", "split"))
    prefilter = None
    if cfg.prefilter.enabled:  # the supernet and the method see only the options the proxies keep
        space, prefilter = prefilter_space(space, train, cfg.prefilter, cfg.seed, dev, progress=progress)
    tch = resolve_teacher(teacher, dev, ds)
    trains = not get_method_cls(cfg.method).training_free  # a training-free search ignores the loop settings
    identity = {
        "kind": "search", "method": cfg.method, "method_options": identity_dict(cfg.method_options()),
        "space": space.config(),
        "loop": loop_identity(cfg.loop()) if trains else None,
        "held_out": cfg.held_out, "seed": cfg.seed, "label_mode": ds.label_mode, "temperature": cfg.temperature,
        "dataset": dataset_info(ds), "online_teacher": teacher_identity(tch),
    }
    if prefilter is not None:  # absent when off, so searches without it keep their identities
        identity["prefilter"] = to_dict(cfg.prefilter)
    record = {"search": cfg.resolved(), "device": str(dev),
              "split": {"train": len(train), "held_out": len(held)},
              "space": space.config(), "dataset": identity["dataset"], "online_teacher": identity["online_teacher"]}
    if prefilter is not None:
        record["prefilter"] = prefilter
    return SearchSetup(cfg, dev, ds, space, train, held, tch, identity, record, prefilter)


def finish_search(setup: SearchSetup, outcome: Any, out_dir: Path, config_hash: str,
                  table_path: str | Path | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write arch.json/arch.txt, result.json and progress.png for a finished loop; return the result."""
    cfg, space, arch = setup.cfg, setup.space, outcome.arch
    result = _result(cfg, space, arch, outcome.elapsed_s, outcome.steps, outcome.last_eval, table_path)
    result.update(outcome.extra)
    result.update(extra or {})
    if setup.prefilter is not None:  # the pre-filter's own pick beside the search's, to judge what it adds
        best = space.parse(setup.prefilter["best_candidate"])
        gt = nb201_ground_truth(space, best, table_path)[0]
        result["prefilter"] = {**setup.prefilter, "best_candidate_nb201": gt}
    write_arch_files(out_dir, space, arch, {"method": cfg.method, "config_hash": config_hash})
    atomic_write_json(out_dir / "result.json", result)
    plot_progress(out_dir / "log.jsonl", out_dir / "progress.png", f"{cfg.method} on {space.name}: {arch}")
    return result


def run_search(cfg: SearchConfig | dict[str, Any], data: ImageSet | str | Path, out: str | Path,
               device: str | torch.device | None = None, progress: bool = True,
               table_path: str | Path | None = None, teacher: Any = None,
               on_step: Callable[[LoopContext], None] | None = None,
               dist: D.DistContext | None = None) -> SearchResult:
    """Search an architecture on ``data`` and write the run directory ``out`` (see the module docstring).

    ``device`` overrides ``cfg.device``; ``teacher`` (a Teacher or a teacher name) enables online
    distillation on the augmented batches; ``table_path`` points at the NAS-Bench-201 CSV (else the
    assets settings); ``on_step(ctx)`` is called after every weight step (tests, benchmarks).
    Rerunning with the same arguments resumes an interrupted search or returns a finished one.

    ``dist``: the ranks to search on (default: the running process group, if any, else one process). Under
    torchrun every rank calls this: the supernet trains with DistributedDataParallel
    (``dfnas.search.distributed``), rank 0 writes ``out``, and every rank returns the same SearchResult.
    """
    ctx = D.current() if dist is None else dist
    setup = prepare_search(cfg, data, device, teacher, progress=progress and ctx.is_main)
    cfg, space = setup.cfg, setup.space
    method = distribute(setup.build_method(), ctx)  # a training-free method is refused under torchrun

    def loop(loop_dir: Path, h: str) -> Any:
        if method.training_free:  # zero-cost proxies: score candidates, no supernet (on_step does not apply)
            return method.search_without_training(setup, loop_dir, h, progress=progress)
        if not (loop_dir / "checkpoint.pt").exists():
            method.seed_run(loop_dir, h, setup.identity)
        return run_loop(method, setup.train, setup.held, cfg.loop(), setup.criterion(), loop_dir, setup.device, h,
                        cfg.seed, progress=progress and ctx.is_main, on_step=on_step,
                        desc=f"search[{cfg.method}/{space.name}" + (f" x{ctx.world_size}]" if ctx.enabled else "]"))

    def finish(outcome: Any, out_dir: Path, h: str) -> dict[str, Any]:
        return finish_search(setup, outcome, out_dir, h, table_path,
                             {"world_size": ctx.world_size} if ctx.enabled else None)

    outcome, out_dir, result = run_on_ranks(out, setup.identity, setup.record, ctx, loop, finish)
    return SearchResult(outcome.arch, space, out_dir, result, outcome.model)


def _result(cfg: SearchConfig, space: Space, arch: Arch, elapsed: float, steps: int, last_eval: dict[str, float],
            table_path: str | Path | None) -> dict[str, Any]:
    from dfnas.spaces.flops import space_cost

    gt, note = nb201_ground_truth(space, arch, table_path)
    return {
        "arch": arch.to_json(), "arch_str": str(arch), "method": cfg.method, "space": space.config(),
        **space_cost(space, arch), "search_time_s": round(elapsed, 2), "weight_steps": steps,
        "epochs": cfg.resolved_epochs(), "final_held_out": last_eval or None,
        "nb201": gt, "nb201_note": note,
    }
