"""Train a found architecture from scratch with the search loop (method ``fixed``), and evaluate it.

Data-free: distillation on a synthetic set (its stored teacher logits, or an online teacher). Baseline:
hard labels of a real set. The run directory holds config.json, log.jsonl, checkpoint.pt (resumable: rerun
the same command), model.pt (the plain network's state dict) and result.json (top-1 on real test images
when given, MACs/params, time). Networks consume RGB pixels in [0, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfnas import distributed as D
from dfnas.config import ADDED_LATER, from_dict, to_dict
from dfnas.data import ImageSet, open_dataset
from dfnas.data.imageset import iterate_batches
from dfnas.errors import ConfigError
from dfnas.io import atomic_torch_save, atomic_write_json
from dfnas.repro import make_generator, resolve_device
from dfnas.search.base import build_method
from dfnas.search.distributed import bare_model, distribute, distribute_data, run_on_ranks
from dfnas.search.fixed import FixedConfig
from dfnas.search.loop import LoopConfig, LoopContext, loop_identity, run_loop
from dfnas.search.losses import Criterion
from dfnas.search.report import plot_progress
from dfnas.search.rundir import dataset_info, resolve_teacher, teacher_identity, with_label_mode
from dfnas.spaces.archfile import nb201_ground_truth
from dfnas.spaces.base import Arch, Space, SpaceConfig, space_from_config
from dfnas.train.datafree import OnlineBank, OnlineConfig


@dataclass
class TrainConfig:
    """Settings of training a fixed network from scratch; ``from_dict`` rejects unknown keys."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    lr_min: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    held_out: float = 0.0  # fraction kept aside to monitor generalization (0: train on everything)
    seed: int = 0
    device: str = "auto"
    label_mode: str | None = None  # distill | soft | hard; None: the dataset's own
    temperature: float = 4.0
    augment: bool = True
    mix: str = field(default="none", metadata=ADDED_LATER)  # none | mixup | cutmix within batches (needs the
    # online teacher, which labels the mixed images)
    checkpoint_every_steps: int = 0
    log_every_steps: int = 20
    eval_max_batches: int | None = None  # held-out batches evaluated per epoch (None: all)
    eval_batch_size: int = 256
    max_steps: int | None = None
    online: OnlineConfig = field(default_factory=OnlineConfig)  # online synthesis on data-free training sets

    def loop(self) -> LoopConfig:
        return LoopConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, lr_min=self.lr_min,
                          momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay,
                          grad_clip=self.grad_clip, augment=self.augment, mix=self.mix,
                          checkpoint_every_steps=self.checkpoint_every_steps, log_every_steps=self.log_every_steps,
                          eval_max_batches=self.eval_max_batches, eval_batch_size=self.eval_batch_size,
                          max_steps=self.max_steps)


@torch.no_grad()
def evaluate(model: nn.Module, imageset: ImageSet, device: str | torch.device = "cpu", batch_size: int = 256,
             max_batches: int | None = None) -> float:
    """Top-1 accuracy (percent) of ``model`` on centre crops of ``imageset`` against its hard labels
    (``targets.argmax``: the true class for real data), in eval mode."""
    dev = torch.device(device)
    was = model.training
    model.eval()
    labels = imageset.hard_labels
    correct = n = 0
    batches = iterate_batches(imageset, batch_size, None, augment=False, device=dev)
    for i, (x, _) in enumerate(itertools.islice(batches, max_batches)):
        y = labels[i * batch_size:i * batch_size + len(x)].to(dev)  # unshuffled: batch i covers rows i*B ...
        correct += int((model(x).argmax(1) == y).sum())
        n += len(x)
    model.train(was)
    return 100.0 * correct / max(n, 1)


def resolve_space(space_cfg: Space | SpaceConfig | Mapping[str, Any], ds: ImageSet | None = None) -> Space:
    """A Space from a Space, a ``SpaceConfig`` / {"name", "options"}, or ``Space.config()`` output
    ({"name", "C", ...} as saved in arch.json); class count and input size default to the dataset's.
    Kept for callers of ``dfnas.train.resolve_space``: it is ``dfnas.spaces.base.space_from_config``."""
    return space_from_config(space_cfg, ds)


def manifest_teacher(ds: ImageSet, device: torch.device) -> Any:
    """The teacher recorded in a synthetic dataset's manifest (reference, weights with their SHA-256 checked,
    declared input and normalization), loaded."""
    from dfnas.teachers.recorded import teacher_for_dataset

    src = ds.info.get("source")
    teacher = teacher_for_dataset(src, device=device) if src else None
    if teacher is None:
        raise ConfigError("online synthesis needs the teacher: pass --teacher (the dataset has no manifest naming it)")
    return teacher


@dataclass
class TrainSetup:
    """Everything a training run needs before the loop starts (``prepare_training``)."""

    cfg: TrainConfig
    arch: Arch
    device: torch.device
    ds: ImageSet
    space: Space
    train: ImageSet
    held: ImageSet | None
    test: ImageSet | None
    online: bool  # the replay bank is refreshed by the generator (online data-free training)
    teacher: Any
    identity: dict[str, Any]  # what a resumed run must match (written to config.json, hashed)
    record: dict[str, Any]  # what config.json records besides the identity


def prepare_training(cfg: TrainConfig | Mapping[str, Any], arch: Arch,
                     space_cfg: Space | SpaceConfig | Mapping[str, Any], data: ImageSet | str | Path,
                     device: str | torch.device | None = None, test_data: ImageSet | str | Path | None = None,
                     teacher: Any = None) -> TrainSetup:
    """Validate the config, architecture and data, split the data and describe the run's identity."""
    if not isinstance(cfg, TrainConfig):
        cfg = from_dict(TrainConfig, dict(cfg), "train")
    if not 0.0 <= cfg.held_out < 1.0:
        raise ConfigError(f"held_out must lie in [0, 1), got {cfg.held_out}")
    cfg.loop().check()
    dev = resolve_device(device if device is not None else cfg.device)
    ds = data if isinstance(data, ImageSet) else open_dataset(data)
    ds = with_label_mode(ds, cfg.label_mode)
    space = space_from_config(space_cfg, ds)
    getattr(space, "check", space.validate)(arch)  # ArchError: the architecture is not of this space
    ds.check_compatible(space.num_classes, space.input_size, what=f"dataset {ds.info.get('source') or ''}".strip(),
                        in_channels=space.in_channels)
    test = None
    if test_data is not None:
        test = test_data if isinstance(test_data, ImageSet) else open_dataset(test_data)
        test.check_compatible(space.num_classes, space.input_size, what="test set", in_channels=space.in_channels)
    if cfg.held_out > 0:
        train, held = ds.split(cfg.held_out, make_generator(cfg.seed, "train", "split"))
    else:
        train, held = ds, None
    online = cfg.online.active_for(ds)
    if online and teacher is None:  # data-free training distils from the teacher that made the data
        teacher = manifest_teacher(ds, dev)
    tch = resolve_teacher(teacher, dev, ds)
    identity = {
        "kind": "train", "arch": str(arch), "space": space.config(),
        "loop": loop_identity(cfg.loop()),
        "held_out": cfg.held_out, "seed": cfg.seed, "label_mode": ds.label_mode, "temperature": cfg.temperature,
        "dataset": dataset_info(ds), "online_teacher": teacher_identity(tch),
    }
    if online:  # only then: runs without online synthesis keep their earlier identity hashes
        identity["online"] = {**to_dict(cfg.online), "enabled": True}
    record = {"train": to_dict(cfg), "arch": arch.to_json(), "device": str(dev),
              "split": {"train": len(train), "held_out": len(held) if held is not None else 0},
              "test_set": dataset_info(test) if test is not None else None, **{k: identity[k] for k in
                                                                              ("space", "dataset", "online_teacher")}}
    return TrainSetup(cfg, arch, dev, ds, space, train, held, test, online, tch, identity, record)


def train_network(cfg: TrainConfig | Mapping[str, Any], arch: Arch, space_cfg: Space | SpaceConfig | Mapping[str, Any],
                  data: ImageSet | str | Path, out: str | Path, device: str | torch.device | None = None,
                  test_data: ImageSet | str | Path | None = None, progress: bool = True, teacher: Any = None,
                  table_path: str | Path | None = None,
                  on_step: Callable[[LoopContext], None] | None = None,
                  dist: D.DistContext | None = None) -> dict[str, Any]:
    """Train the plain network of ``arch`` from scratch on ``data``; return (and write) result.json's dict.

    ``space_cfg`` gives the space settings (e.g. the arch.json ``space`` entry, possibly with a larger C);
    ``test_data`` (ImageSet or path) is evaluated at the end (top-1 %, key ``test_top1``); ``teacher``
    enables online distillation. Rerunning with the same arguments resumes or returns the finished run.

    ``dist``: the ranks to train on (default: the running process group, if any, else one process); under
    torchrun every rank calls this, the network trains with DistributedDataParallel and rank 0 writes ``out``.
    The steps are those of ``run_search``: ``prepare_training``, then ``dfnas.search.distributed.run_on_ranks``
    (open the run directory, the loop, the results).
    """
    ctx = D.current() if dist is None else dist
    setup = prepare_training(cfg, arch, space_cfg, data, device, test_data, teacher)
    cfg, dev, space, train, held, test = setup.cfg, setup.device, setup.space, setup.train, setup.held, setup.test
    ds, online, tch = setup.ds, setup.online, setup.teacher
    method = distribute(build_method("fixed", space, FixedConfig(arch), make_generator(cfg.seed, "method", "fixed"),
                                     dev), ctx)
    criterion = Criterion(ds.label_mode, cfg.temperature, tch)
    banks: list[OnlineBank] = []  # the replay bank, made once the run directory is open

    def loop(loop_dir: Path, h: str) -> Any:
        source = OnlineBank(train, tch, cfg.online, cfg.seed, dev) if online else None
        banks.extend([source] if source is not None else [])
        return run_loop(method, train, held, cfg.loop(), criterion, loop_dir, dev, h, cfg.seed,
                        progress=progress and ctx.is_main, on_step=on_step,
                        desc=f"train[{space.name}" + (f" x{ctx.world_size}]" if ctx.enabled else "]"),
                        data_source=distribute_data(source, ctx))

    def finish(outcome: Any, out_dir: Path, h: str) -> dict[str, Any]:
        model = bare_model(outcome.model)
        atomic_torch_save(out_dir / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
        from dfnas.spaces.flops import space_cost

        gt, note = nb201_ground_truth(space, arch, table_path)
        result = {
            "arch": arch.to_json(), "arch_str": str(arch), "space": space.config(), **space_cost(space, arch),
            "train_time_s": round(outcome.elapsed_s, 2), "weight_steps": outcome.steps, "epochs": cfg.epochs,
            "label_mode": ds.label_mode, "online_teacher": tch is not None,
            "final_held_out": outcome.last_eval or None,
            "online_synthesis": online, "images_made_online": banks[0].made if banks else 0,
            "test_top1": evaluate(model, test, dev, cfg.eval_batch_size) if test is not None else None,
            "test_set": (test.info.get("source") if test is not None else None),
            "test_n": len(test) if test is not None else 0, "nb201": gt, "nb201_note": note,
            **({"world_size": ctx.world_size} if ctx.enabled else {}),
        }
        atomic_write_json(out_dir / "result.json", result)
        plot_progress(out_dir / "log.jsonl", out_dir / "progress.png", f"train {arch}")
        return result

    return run_on_ranks(out, setup.identity, setup.record, ctx, loop, finish)[2]
