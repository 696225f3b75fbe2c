"""Sub-commands ``run``, ``export`` and ``report``: parse, then call one library function."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dfnas._cli.teacher import add_teacher_flags, teacher_settings


def _run(args: argparse.Namespace) -> int:
    from dfnas.run import run_command

    if args.list_presets:
        from dfnas.pipeline.config import list_presets

        print("\n".join(list_presets()))
        return 0
    out = args.out or str(Path("runs") / Path(args.preset).stem)
    res = run_command(out, preset=args.preset, overrides=args.set + teacher_settings(args), teacher=args.teacher,
                      weights=args.weights, device=args.device, table_path=args.nb201_table, progress=not args.quiet)
    if res is not None and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 prints
        print(f"architecture: {res.arch}")
        print(f"exported network: {res.export_dir}")
        print(f"report: {res.report_md}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from dfnas.export.commands import export_command

    out = export_command(args.out, run_dir=args.run, arch=args.arch, weights=args.weights, device=args.device)
    print(f"exported to {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from dfnas.report import build_report

    files = build_report(args.run, table_path=args.nb201_table)
    print(json.dumps([str(f) for f in files], indent=2) if args.json else f"report written to {files[0]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run``, ``export`` and ``report`` to the ``dfnas`` command."""
    p = subparsers.add_parser("run", help="the whole pipeline: teacher -> synthetic data -> search -> export -> report",
                              description="Run (or resume) the whole pipeline into --out. Rerunning the same command "
                                          "continues a killed run; under torchrun the stages use every process.")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset name>)")
    p.add_argument("--preset", default="default",
                   help="preset name (default, tiny, nb201-paper, darts-cifar10-paper, ...) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted, e.g. --set search.epochs=3 --set synthesis.steps=100")
    add_teacher_flags(p)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the preset's, auto)")
    p.add_argument("--nb201-table", default=None, help="NAS-Bench-201 CSV (default: DFNAS_NB201 / assets)")
    p.add_argument("--list-presets", action="store_true", help="print the bundled preset names and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("export", help="export a found network as arch.json + model.safetensors + model.onnx")
    p.add_argument("--out", required=True, help="export directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", default=None, help="a `dfnas train` or `dfnas run` directory to export from")
    src.add_argument("--arch", default=None, help="arch.json (or architecture string) to export with --weights")
    p.add_argument("--weights", default=None, help="with --arch: a state dict (.pt) or model.safetensors file")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("report", help="(re)build report.md and report.html of a `dfnas run` directory")
    p.add_argument("run", help="the run directory")
    p.add_argument("--nb201-table", default=None, help="NAS-Bench-201 CSV (default: DFNAS_NB201 / assets)")
    p.add_argument("--json", action="store_true", help="print the written files as JSON")
    p.set_defaults(func=_report)
