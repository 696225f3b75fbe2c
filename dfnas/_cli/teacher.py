"""The teacher flags shared by every sub-command that takes a teacher, and their translation."""

from __future__ import annotations

import argparse


def add_teacher_flags(p: argparse.ArgumentParser, default: str | None = None,
                      teacher_help: str = "named teacher, path/to/file.py:factory or TorchScript file") -> None:
    """Add ``--teacher``, ``--weights``, ``--factory-loads-weights`` and the input declarations
    (``--input-size``, ``--in-channels``, ``--num-classes``, ``--mean``, ``--std``) to ``p``."""
    p.add_argument("--teacher", default=default, help=teacher_help)
    p.add_argument("--weights", default=None, help="teacher checkpoint file, or a directory holding it (a "
                   "file.py:factory teacher needs it)")
    p.add_argument("--factory-loads-weights", action="store_true",
                   help="the file.py:factory returns a trained model by itself, so no --weights are needed")
    p.add_argument("--input-size", type=int, default=None, help="teacher input size in px (default 32)")
    p.add_argument("--in-channels", type=int, default=None, help="teacher input channels (default 3)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="declared class count, checked against the teacher's output (default: inferred)")
    p.add_argument("--mean", default=None, help="per-channel normalization mean, e.g. [0.5,0.5,0.5]")
    p.add_argument("--std", default=None, help="per-channel normalization std, e.g. [0.5,0.5,0.5]")


def teacher_settings(args: argparse.Namespace) -> list[str]:
    """The declarations among the teacher flags as ``teacher.KEY=VALUE`` overrides (``--input-size 64`` ->
    ``teacher.input_size=64``): ``--set`` overrides of ``synthesize`` and ``run``, and the ``teacher_settings``
    of the other commands."""
    pairs = [("input_size", args.input_size), ("in_channels", args.in_channels), ("num_classes", args.num_classes),
             ("mean", args.mean), ("std", args.std), ("factory_loads_weights", args.factory_loads_weights or None)]
    return [f"teacher.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in pairs if v is not None]
