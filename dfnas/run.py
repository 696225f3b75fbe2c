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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfnas import distributed as D
from dfnas.errors import DfnasError
from dfnas.io import check_writable
from dfnas.pipeline.config import RunConfig, load_run_config
from dfnas.pipeline.rundir import STAGES, is_done, open_run_dir, read_marker, stage
from dfnas.pipeline.stages import STAGE_LIST, RunState, real_test_path

__all__ = ["RunResult", "real_test_path", "run_command", "run_pipeline"]


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


def run_pipeline(cfg: RunConfig, out: str | Path, progress: bool = True, table_path: str | Path | None = None,
                 stop_after: str | None = None) -> RunResult | None:
    """Run (or resume) every stage of ``cfg`` into ``out``; see the module docstring for the layout.

    The stages are ``dfnas.pipeline.stages.STAGE_LIST``, in order: a stage whose marker says done is skipped.
    ``stop_after`` ends the run after that stage (tests; ``None`` runs everything) and returns None.
    Under torchrun the process group is started here from the environment; ranks other than 0 return None
    after the search.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise DfnasError(f"stop_after {stop_after!r} is not one of {list(STAGES)}")
    ctx, device = D.init_distributed(cfg.device)
    log = _Log(progress and ctx.is_main)
    out_dir = Path(out)
    D.on_main(ctx, lambda: open_run_dir(out_dir, cfg))
    if not ctx.is_main:
        open_run_dir(out_dir, cfg, write=False)
    needed = STAGE_LIST if stop_after is None else STAGE_LIST[:STAGES.index(stop_after) + 1]
    pending = [s.name for s in needed if s.writes and not is_done(out_dir, s.name)]
    if pending:  # a finished run is only read, so it may lie in a read-only place
        check_writable(out_dir, "run directory", f"stages {', '.join(pending)} still have to write into it: fix "
                       "its permissions, or copy the run somewhere writable and resume there")
    log(f"output directory {out_dir} (device {device}, {ctx.world_size} process{'es' if ctx.enabled else ''})")
    state = RunState(cfg, out_dir, device, ctx, progress, table_path)
    for i, st in enumerate(STAGE_LIST):
        if st.main_only and not ctx.is_main:
            return None  # see STAGE_LIST: the other ranks end after the search
        if st.prepare is not None:
            st.prepare(state)
        if not is_done(out_dir, st.name):
            log(f"[{i + 1}/{len(STAGE_LIST)}] {st.title(cfg)}")
            with stage(out_dir, st.name, ctx.is_main) as handle:
                handle.info.update(st.run(state))
            if st.barrier_after:
                D.barrier(ctx)
        if st.name == stop_after and i < len(STAGE_LIST) - 1:
            return None
    export_info = read_marker(out_dir, "export")
    log(f"done: report at {out_dir / 'report' / 'report.md'}")
    return RunResult(out_dir, str(export_info.get("arch", "")), out_dir / "export",
                     out_dir / "report" / "report.md", export_info)


def run_command(out: str | Path, preset: str | Path = "default", overrides: list[str] | None = None,
                teacher: str | None = None, weights: str | None = None, device: str | None = None,
                table_path: str | Path | None = None, progress: bool = True) -> RunResult | None:
    """``dfnas run``: build the RunConfig (preset < --set < flags), then ``run_pipeline``."""
    cfg = load_run_config(preset, overrides, teacher=teacher, weights=weights, device=device)
    try:
        return run_pipeline(cfg, out, progress=progress, table_path=table_path)
    finally:
        D.shutdown()
