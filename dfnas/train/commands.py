"""Library function behind ``dfnas train``: an architecture file or string, a YAML file, ``KEY=VALUE``
overrides and flags turned into a ``TrainConfig``, then ``train_network`` (the CLI itself only parses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.config import apply_overrides, build_config, load_yaml
from dfnas.distributed import process_group
from dfnas.search.commands import online_teacher
from dfnas.spaces.archfile import read_arch_or_string
from dfnas.spaces.base import Arch
from dfnas.train.api import TrainConfig, train_network


def train_config(arch: str | Path, *, epochs: int | None = None, overrides: list[str] | None = None,
                 config: str | Path | None = None, seed: int | None = None,
                 device: str | None = None) -> tuple[TrainConfig, Arch, dict[str, Any]]:
    """``dfnas train``'s (config, architecture, space settings).

    The config: config file < ``--set`` overrides < flags (``dfnas.config.merge_layers``). The space settings:
    the architecture file's, with ``--set space.KEY=VALUE`` overrides on top (e.g. ``space.C=16``).
    """
    a, space_cfg = read_arch_or_string(arch)
    space_ovs, rest = [], []
    for ov in overrides or []:
        key = ov.split("=", 1)[0].strip()
        if key.startswith("space."):
            space_ovs.append(ov.lstrip()[len("space."):].lstrip())
        else:
            rest.append(ov)
    base: dict[str, Any] = load_yaml(config) if config else {}
    flags = {"epochs": epochs, "seed": seed, "device": device}
    return build_config(TrainConfig, base, rest, flags, where="train"), a, apply_overrides(space_cfg, space_ovs)


def train_command(out: str | Path, arch: str | Path, data: str | Path, *, test: str | Path | None = None,
                  epochs: int | None = None, overrides: list[str] | None = None, config: str | Path | None = None,
                  seed: int | None = None, device: str | None = None, teacher: str | None = None,
                  table: str | Path | None = None, progress: bool = True, weights: str | None = None,
                  teacher_settings: list[str] | None = None) -> dict[str, Any]:
    """``dfnas train``: ``train_config`` (the arch file's space settings and a TrainConfig), then
    ``train_network``; ``teacher`` (online distillation) is completed from the dataset's manifest. Under
    ``torchrun`` every rank trains (DistributedDataParallel) and rank 0 writes ``out``."""
    cfg, a, space_cfg = train_config(arch, epochs=epochs, overrides=overrides, config=config, seed=seed,
                                     device=device)
    tch = online_teacher(data, teacher, weights, teacher_settings)
    with process_group(cfg.device) as (ctx, dev):
        return train_network(cfg, a, space_cfg, data, out, device=dev, test_data=test,
                             progress=progress and ctx.is_main, teacher=tch, table_path=table, dist=ctx)
