"""Sub-commands ``synthesize``, ``inspect`` and ``eval-teacher``: parse, then call one library function."""

from __future__ import annotations

import argparse
import json

from dfnas._cli.teacher import add_teacher_flags, teacher_settings


def _synthesize(args: argparse.Namespace) -> int:
    from dfnas.synthesis.commands import synthesize_command

    out = synthesize_command(args.out, preset=args.preset, overrides=args.set + teacher_settings(args),
                             method=args.method, teacher=args.teacher, weights=args.weights, num_images=args.num_images,
                             rounds=args.rounds, seed=args.seed, device=args.device, real=args.real,
                             allow_no_batchnorm=args.allow_no_batchnorm, overwrite=args.overwrite,
                             progress=not args.quiet)
    print(f"dataset written to {out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dfnas.synthesis.commands import inspect_command

    print(inspect_command(args.dataset, real=args.real, teacher=args.teacher, weights=args.weights,
                          device=args.device, as_json=args.json, teacher_settings=teacher_settings(args)))
    return 0


def _eval_teacher(args: argparse.Namespace) -> int:
    from dfnas.synthesis.commands import eval_teacher_command

    res = eval_teacher_command(args.data, teacher=args.teacher, weights=args.weights, device=args.device,
                               teacher_settings=teacher_settings(args))
    print(json.dumps(res, indent=2) if args.json else
          f"{res['teacher']}: top-1 {res['top1']:.2%} on {res['images']} images of {res['data']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synthesize``, ``inspect`` and ``eval-teacher`` to the ``dfnas`` command."""
    p = subparsers.add_parser("synthesize", help="synthesize a training set from a teacher (or a baseline)")
    p.add_argument("--out", required=True, help="dataset directory (a killed run resumes when rerun)")
    add_teacher_flags(p)
    p.add_argument("--method", default=None, help="full (default) | generator (few-step, fast) | plain | noise | "
                   "real_random | real_teacher (real images, teacher labels)")
    p.add_argument("--preset", default="default", help="default (CPU recipe) | calibrated (soft rounds that keep "
                   "the teacher's class similarities; no regional update) | tiny (smoke test)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a SynthesisConfig key, e.g. --set steps=400 --set bn_weight=0 (repeatable)")
    p.add_argument("--num-images", type=int, default=None, help="total images over all rounds")
    p.add_argument("--rounds", type=int, default=None, help="recursive label calibration rounds (1 = off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--real", default=None, help="real dataset for --method real_random / real_teacher")
    p.add_argument("--allow-no-batchnorm", action="store_true",
                   help="accept a teacher without BatchNorm (the feature-statistics term is then off)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset of a different config in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synthesize)

    p = subparsers.add_parser("inspect", help="teacher agreement, entropy, BN distance, diversity, per-round "
                              "calibration (entropy, second-class mass, class-similarity Spearman vs --real)")
    p.add_argument("dataset", help="synthesized dataset directory or a real dataset")
    p.add_argument("--real", default=None, help="real dataset to show side by side")
    add_teacher_flags(p, teacher_help="teacher (default: the one in the dataset's manifest, with its weights and "
                      "declared input; given flags override it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_inspect)

    p = subparsers.add_parser("eval-teacher", help="top-1 accuracy of a teacher on a real dataset")
    add_teacher_flags(p, default="cifar10_resnet20")
    p.add_argument("--data", required=True, help=".npz file, CIFAR batch files or ImageFolder tree")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_eval_teacher)
