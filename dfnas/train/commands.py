"""Library function behind ``dfnas train``: an architecture file or string, a YAML file, ``KEY=VALUE``
overrides and flags turned into a ``TrainConfig``, then ``train_network`` (the CLI itself only parses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.config import apply_overrides, check_override_keys, from_dict, load_yaml
from dfnas.search.commands import _space_overrides, online_teacher
from dfnas.spaces.archfile import read_arch_or_string
from dfnas.train.api import TrainConfig, train_network


def train_command(out: str | Path, arch: str | Path, data: str | Path, *, test: str | Path | None = None,
                  epochs: int | None = None, overrides: list[str] | None = None, config: str | Path | None = None,
                  seed: int | None = None, device: str | None = None, teacher: str | None = None,
                  table: str | Path | None = None, progress: bool = True, weights: str | None = None,
                  teacher_settings: list[str] | None = None) -> dict[str, Any]:
    """``dfnas train``: the arch file's space settings (``--set space.C=16`` overrides them) and a TrainConfig."""
    a, space_cfg = read_arch_or_string(arch)
    base: dict[str, Any] = load_yaml(config) if config else {}
    for key, val in (("epochs", epochs), ("seed", seed), ("device", device)):
        if val is not None:
            base[key] = val
    space_ovs, rest = _space_overrides(list(overrides or []), nested=False)
    check_override_keys(TrainConfig, rest)
    space_cfg = apply_overrides(space_cfg, space_ovs)
    cfg = from_dict(TrainConfig, apply_overrides(base, rest), "train")
    tch = online_teacher(data, teacher, weights, teacher_settings)
    return train_network(cfg, a, space_cfg, data, out, test_data=test, progress=progress, teacher=tch,
                         table_path=table)
