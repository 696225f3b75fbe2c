"""``dfnas run``: teacher -> synthetic data -> architecture search -> exported network -> report.

    OUT/config.json       the resolved RunConfig (a rerun with another config is refused)
    OUT/stages/*.json     completion markers with wall times (a rerun skips finished stages)
    OUT/data/             synthesized dataset (``dfnas.synthesis``; resumes shard by shard)
    OUT/search/           search run (``dfnas.search``; resumes from its checkpoint)
    OUT/train/            the found network trained from scratch by distillation (``dfnas.train``)
    OUT/export/           arch.json + model.safetensors (``dfnas.export``; ``load_exported`` reads it)
    OUT/report/           report.md, report.html and their PNGs (``dfnas.report``)

Under ``torchrun`` every rank runs this same function: synthesis splits its shards across ranks, the
search trains the supernet with DistributedDataParallel, then rank 0 alone trains the final network,
exports and writes the report (the other ranks return None once the search is done).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfnas import distributed as D
from dfnas.errors import DfnasError
from dfnas.io import check_writable
from dfnas.pipeline.config import RunConfig, load_run_config
from dfnas.pipeline.rundir import STAGES, is_done, open_run_dir, read_marker, stage


@dataclass
class RunResult:
    """What a finished run produced."""

    out_dir: Path
    arch: str
    export_dir: Path
    report_md: Path
    summary: dict[str, Any]


class _Log:
    """Stage headers on stderr (the stages draw their own progress bars)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[dfnas run {time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _on_main(ctx: D.DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank."""
    if not ctx.enabled:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except DfnasError as e:
            error = str(e)
        except Exception as e:  # other ranks must not wait forever for a rank 0 that crashed
            error = f"{type(e).__name__}: {e}"
            D.broadcast_object((None, error), ctx)
            raise
    result, error = D.broadcast_object((result, error), ctx)
    if error is not None:
        raise DfnasError(error)
    return result


def real_test_path(cfg: RunConfig, num_classes: int, input_size: int) -> Path | None:
    """The real test set the teacher and the exported network are evaluated on (evaluation only), or None."""
    from dfnas.assets import asset_path

    rt = cfg.report.real_test
    if rt is None or rt == "" or str(rt).lower() in ("none", "null", "off"):
        return None
    if rt != "auto":
        p = Path(rt)
        if not p.exists():
            raise DfnasError(f"report.real_test {rt!r} does not exist (set it to null to skip real-data evaluation)")
        return p
    # auto: the shared CIFAR-10 test subset, only for a CIFAR-10 teacher
    if num_classes != 10 or input_size != 32:
        return None
    return asset_path("cifar10", "exact_test_1017.npz")


def _load_test(cfg: RunConfig, path: Path | None) -> Any:
    if path is None:
        return None
    from dfnas.data import open_dataset

    ds = open_dataset(path)
    if cfg.report.max_test_images is not None and len(ds) > cfg.report.max_test_images:
        ds = ds.subset(torch.arange(cfg.report.max_test_images))
    return ds


def run_pipeline(cfg: RunConfig, out: str | Path, progress: bool = True, table_path: str | Path | None = None,
                 stop_after: str | None = None) -> RunResult | None:
    """Run (or resume) every stage of ``cfg`` into ``out``; see the module docstring for the layout.

    ``stop_after`` ends the run after that stage (tests; ``None`` runs everything) and returns None.
    Under torchrun the process group is started here from the environment; ranks other than 0 return None
    after the search.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise DfnasError(f"stop_after {stop_after!r} is not one of {list(STAGES)}")
    ctx, device = D.init_distributed(cfg.device)
    log = _Log(progress and ctx.is_main)
    out_dir = Path(out)
    _on_main(ctx, lambda: open_run_dir(out_dir, cfg))
    if not ctx.is_main:
        open_run_dir(out_dir, cfg, write=False)
    write = ctx.is_main
    needed = STAGES if stop_after is None else STAGES[:STAGES.index(stop_after) + 1]
    pending = [s for s in needed if not is_done(out_dir, s)]
    if pending:  # a finished run is only read, so it may lie in a read-only place
        check_writable(out_dir, "run directory", f"stages {', '.join(pending)} still have to write into it: fix "
                       "its permissions, or copy the run somewhere writable and resume there")
    log(f"output directory {out_dir} (device {device}, {ctx.world_size} process{'es' if ctx.enabled else ''})")
    teacher_box: dict[str, Any] = {}

    def teacher() -> Any:
        if "t" not in teacher_box:
            from dfnas.errors import TeacherError
            from dfnas.teachers import load_teacher

            try:
                teacher_box["t"] = load_teacher(cfg.teacher, device)
            except TeacherError as e:
                if "--allow-no-batchnorm" not in str(e):
                    raise
                raise TeacherError(f"{e} (with `dfnas run`: --set teacher.allow_no_batchnorm=true)") from None
        return teacher_box["t"]

    def done(name: str) -> bool:
        return stop_after is not None and STAGES.index(name) >= STAGES.index(stop_after)

    # 1. teacher: load and check it (an image classifier with BatchNorm), evaluate on real data if any
    if not is_done(out_dir, "teacher"):
        log("[1/6] teacher")
        with stage(out_dir, "teacher", write) as st:
            t = teacher()
            st.info["identity"] = t.spec.identity()
            if ctx.is_main:
                st.info["real_test"] = _eval_teacher(cfg, t, device)
        D.barrier(ctx)
    if done("teacher"):
        return None

    # the search space must take the teacher's images: refused now, not after the synthesis has run
    if not is_done(out_dir, "search"):
        _check_spaces(cfg, teacher())

    # 2. synthesis: every rank makes its shards; barrier between rounds
    data_dir = out_dir / "data"
    if not is_done(out_dir, "synthesis"):
        log("[2/6] synthesis (recursive label calibration + regional update)")
        from dfnas.pipeline.stages import synthesis_stage

        with stage(out_dir, "synthesis", write) as st:
            st.info.update(synthesis_stage(cfg, data_dir, teacher(), device, ctx, progress))
    if done("synthesis"):
        return None

    # 3. search: DistributedDataParallel supernet under torchrun
    if not is_done(out_dir, "search"):
        log(f"[3/6] search ({cfg.search.method} on {cfg.search.space.name})")
        from dfnas.pipeline.stages import search_stage

        with stage(out_dir, "search", write) as st:
            online = teacher() if cfg.online_teacher else None
            st.info.update(search_stage(cfg, data_dir, out_dir / "search", device, ctx, progress, table_path,
                                        online))
    if done("search"):
        return None

    # 4-6: rank 0 only. The other ranks end here rather than wait in a collective: training the final
    # network can outlast any process-group timeout, and torchrun waits for rank 0 anyway.
    if not ctx.is_main:
        return None

    def finish() -> dict[str, Any]:
        from dfnas.pipeline.stages import export_stage, train_stage

        ident = read_marker(out_dir, "teacher").get("identity", {})
        test_ds = _load_test(cfg, real_test_path(cfg, int(ident.get("num_classes", 0)),
                                                 int(ident.get("input_size", 0))))
        if not is_done(out_dir, "train"):
            what = "distillation from scratch" if cfg.export.weights == "distill" else "skipped: inherited weights"
            log(f"[4/6] train ({what})")
            with stage(out_dir, "train") as st:
                online = teacher() if cfg.online_teacher or _online_synthesis(cfg) else None
                st.info.update(train_stage(cfg, out_dir, device, progress, table_path, test_ds, online))
        if done("train"):
            return {}
        if not is_done(out_dir, "export"):
            log("[5/6] export")
            with stage(out_dir, "export") as st:
                st.info.update(export_stage(cfg, out_dir, device, test_ds))
        if done("export"):
            return {}
        if not is_done(out_dir, "report"):
            log("[6/6] report")
            from dfnas.report import build_report

            with stage(out_dir, "report") as st:
                st.info["files"] = [p.name for p in build_report(out_dir, table_path=table_path)]
        return read_marker(out_dir, "export")

    export_info = finish()
    if stop_after is not None and STAGES.index(stop_after) < STAGES.index("report"):
        return None
    log(f"done: report at {out_dir / 'report' / 'report.md'}")
    return RunResult(out_dir, str(export_info.get("arch", "")), out_dir / "export",
                     out_dir / "report" / "report.md", export_info)


def _check_spaces(cfg: RunConfig, teacher: Any) -> None:
    """ArchError unless the search space (and the export's, when it resizes the network) builds networks
    that run on the teacher's images (channels, input size, classes)."""
    from dfnas.search.api import make_space
    from dfnas.spaces.base import SpaceConfig

    spec = teacher.spec
    dims = {"num_classes": teacher.num_classes, "input_size": spec.input_size, "in_channels": spec.in_channels}
    spaces = [cfg.search.space]
    if cfg.export.weights == "distill" and cfg.export.space:
        spaces.append(SpaceConfig(cfg.search.space.name, {**cfg.search.space.options, **cfg.export.space}))
    for sc in spaces:
        make_space(sc, **dims).check_input()


def _online_synthesis(cfg: RunConfig) -> bool:
    """Whether the train stage synthesizes online (and so distils from the teacher on every batch)."""
    from dfnas.train.datafree import INVERSION_METHODS

    enabled = cfg.train.online.enabled
    return enabled if enabled is not None else cfg.synthesis.method in INVERSION_METHODS


@torch.no_grad()
def _eval_teacher(cfg: RunConfig, teacher: Any, device: torch.device) -> dict[str, Any] | None:
    """Teacher top-1 on the real test set (evaluation only), or None when there is none."""
    from dfnas.train.api import evaluate

    path = real_test_path(cfg, teacher.num_classes, teacher.spec.input_size)
    ds = _load_test(cfg, path)
    if ds is None:
        return None
    if ds.num_classes != teacher.num_classes or ds.input_size != teacher.spec.input_size:
        return None
    return {"path": str(path), "n": len(ds), "top1": evaluate(teacher, ds, device)}


def run_command(out: str | Path, preset: str | Path = "default", overrides: list[str] | None = None,
                teacher: str | None = None, weights: str | None = None, device: str | None = None,
                table_path: str | Path | None = None, progress: bool = True) -> RunResult | None:
    """``dfnas run``: build the RunConfig (preset < --set < flags), then ``run_pipeline``."""
    cfg = load_run_config(preset, overrides, teacher=teacher, weights=weights, device=device)
    try:
        return run_pipeline(cfg, out, progress=progress, table_path=table_path)
    finally:
        D.shutdown()
