"""One library call per CLI subcommand of the synthesis stage (the CLI only parses arguments)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dfnas.synthesis.config import make_config
from dfnas.synthesis.inspect import evaluate_teacher, format_report, inspect_dataset
from dfnas.synthesis.runner import synthesize
from dfnas.teachers.loader import teacher_config


def synthesize_command(out: str | Path, *, preset: str = "default", overrides: list[str] | None = None,
                       method: str | None = None, teacher: str | None = None, weights: str | None = None,
                       num_images: int | None = None, rounds: int | None = None, seed: int | None = None,
                       device: str = "auto", real: str | None = None, allow_no_batchnorm: bool | None = None,
                       overwrite: bool = False, progress: bool = True) -> Path:
    """Build the config (preset, then ``--set`` overrides, then explicit flags) and synthesize into ``out``.

    Under ``torchrun`` the shards are split across ranks with a barrier after each round.
    """
    from dfnas import distributed

    cfg = make_config(preset, overrides, method=method, num_images=num_images, rounds=rounds, seed=seed,
                      real_path=real, teacher_name=teacher, weights=weights,
                      allow_no_batchnorm=allow_no_batchnorm or None)
    with distributed.process_group(device) as (ctx, dev):
        barrier = (lambda: distributed.barrier(ctx)) if ctx.enabled else None
        return synthesize(cfg, out, device=dev, rank=ctx.rank, world_size=ctx.world_size,
                          progress=progress and ctx.is_main, overwrite=overwrite, barrier=barrier)


def inspect_command(dataset: str | Path, real: str | Path | None = None, teacher: str | None = None,
                    weights: str | None = None, device: str = "auto", as_json: bool = False,
                    teacher_settings: list[str] | None = None) -> str:
    """Inspect ``dataset`` (optionally beside ``real``) and return the printable table (or JSON).

    The teacher is the one in the dataset's manifest (its weights, SHA-256 checked, and declared input) unless
    ``teacher``/``weights``/``teacher_settings`` (``teacher.KEY=VALUE`` declarations) say otherwise.
    """
    from dfnas.repro import resolve_device

    report = inspect_dataset(dataset, teacher, real, device=resolve_device(device), weights=weights,
                             teacher_settings=teacher_settings)
    return json.dumps(report, indent=2) if as_json else format_report(report)


def eval_teacher_command(data: str | Path, teacher: str = "cifar10_resnet20", weights: str | None = None,
                         device: str = "auto", allow_no_batchnorm: bool = True,
                         teacher_settings: list[str] | None = None) -> dict[str, Any]:
    """Top-1 of a teacher on a real dataset (BatchNorm is not needed for evaluation, so it is not required);
    ``teacher_settings`` are ``teacher.KEY=VALUE`` declarations (input size, channels, mean/std, ...)."""
    from dfnas.repro import resolve_device

    tcfg = teacher_config(teacher, weights, teacher_settings, allow_no_batchnorm=allow_no_batchnorm)
    return evaluate_teacher(tcfg, data, device=resolve_device(device))
