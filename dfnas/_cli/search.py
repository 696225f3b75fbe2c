"""Sub-commands ``search``, ``train`` and ``nb201 lookup``: parse, then call one library function."""

from __future__ import annotations

import argparse
import json
import os

from dfnas._cli.teacher import add_teacher_flags, teacher_settings

ONLINE_TEACHER_HELP = ("online distillation: teacher name or file (optional; the weights and declared input of the "
                       "dataset's own teacher are reused when it is the same)")


def _search(args: argparse.Namespace) -> int:
    from dfnas.search.commands import search_command

    res = search_command(args.out, args.data, method=args.method, space=args.space, epochs=args.epochs,
                         overrides=args.set, config=args.config, seed=args.seed, device=args.device,
                         teacher=args.teacher, weights=args.weights, teacher_settings=teacher_settings(args),
                         table=args.nb201_table, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints
        return 0
    r = res.result
    line = f"{r['method']} on {res.space.name}: {r['arch_str']}  ({r['macs'] / 1e6:.2f} M MACs, " \
           f"{r['params'] / 1e6:.3f} M params, {r['search_time_s']:.0f} s)"
    if r.get("nb201"):
        line += f"\nNAS-Bench-201 CIFAR-10 test accuracy {r['nb201']['cifar10']:.2f} % " \
                f"(percentile {r['nb201']['percentile']:.1f})"
    print(line + f"\nrun directory: {res.out_dir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dfnas.train.commands import train_command

    r = train_command(args.out, args.arch, args.data, test=args.test, epochs=args.epochs, overrides=args.set,
                      config=args.config, seed=args.seed, device=args.device, teacher=args.teacher,
                      weights=args.weights, teacher_settings=teacher_settings(args), table=args.nb201_table,
                      progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":
        return 0
    line = f"trained {r['arch_str']} in {r['train_time_s']:.0f} s"
    if r.get("online_synthesis"):
        line += f" (data-free: {r['images_made_online']:,} images synthesized online into the replay bank)"
    if r.get("test_top1") is not None:
        line += f"; top-1 {r['test_top1']:.2f} % on {r['test_n']} test images"
    print(line + f"\nrun directory: {args.out}")
    return 0


def _nb201_lookup(args: argparse.Namespace) -> int:
    from dfnas.search.commands import nb201_lookup

    r = nb201_lookup(args.arch, args.table)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['arch']}\nCIFAR-10 test accuracy {r['cifar10']:.2f} % (percentile {r['percentile']:.1f}; "
              f"CIFAR-100 {r['cifar100']:.2f} %, ImageNet16-120 {r['imagenet16']:.2f} %; index {r['index']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``search``, ``train`` and ``nb201`` (``lookup``) to the ``dfnas`` command."""
    p = subparsers.add_parser("search", help="search an architecture on a (synthetic or real) dataset")
    p.add_argument("--data", required=True, help="synthesized dataset directory or a real dataset")
    p.add_argument("--out", required=True, help="run directory (a killed search resumes when rerun)")
    p.add_argument("--method", default=None,
                   help="darts | proxyless | spos (default darts), or training-free: zerocost | naswot | synflow | "
                        "jacob_cov | snip | grad_norm | params | flops (options: --set zerocost.candidates=100 ...)")
    p.add_argument("--space", default=None, help="nb201 | darts | proxyless | spos (default nb201, C=8 N=1)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--config", default=None, help="YAML file with SearchConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a SearchConfig key, e.g. --set darts.remedy=beta --set space.C=16 (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    add_teacher_flags(p, teacher_help=ONLINE_TEACHER_HELP)
    p.add_argument("--nb201-table", default=None, help="NAS-Bench-201 CSV (default: DFNAS_NB201 / assets)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_search)

    p = subparsers.add_parser("train", help="train a found architecture from scratch and evaluate it")
    p.add_argument("--arch", required=True, help="arch.json from `dfnas search` (or an architecture string)")
    p.add_argument("--data", required=True, help="training set: synthesized directory or real dataset")
    p.add_argument("--test", default=None, help="real test set to report top-1 on")
    p.add_argument("--out", required=True, help="run directory (a killed run resumes when rerun)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--config", default=None, help="YAML file with TrainConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig key or a space setting, e.g. --set lr=0.1 --set space.C=16")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    add_teacher_flags(p, teacher_help=ONLINE_TEACHER_HELP)
    p.add_argument("--nb201-table", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("nb201", help="NAS-Bench-201 ground truth")
    sub = p.add_subparsers(dest="nb201_command", metavar="ACTION")
    sub.required = True
    q = sub.add_parser("lookup", help="true CIFAR-10 test accuracy and percentile of a cell")
    q.add_argument("arch", help="NB201 string |op~0|+|op~0|op~1|+|...| or an arch.json / result.json")
    q.add_argument("--table", default=None, help="NAS-Bench-201 CSV (default: DFNAS_NB201 / assets)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_nb201_lookup)
