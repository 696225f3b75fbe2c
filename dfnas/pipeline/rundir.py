"""The run directory of ``dfnas run``: identity check (never overwrite another run) and stage markers.

    OUT/config.json            {"kind": "dfnas-run", "config", "identity", "config_hash", "preset", "environment"}
    OUT/stages/<stage>.json    {"status": "running" | "done", "seconds", "attempts", ...} per stage
    OUT/data/ search/ train/ export/ report/    the stages' own output directories

A stage is skipped when its marker says ``done``; a killed stage is rerun, and the stages that are
themselves resumable (synthesis, search, training) continue from their own checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dfnas.config import to_dict
from dfnas.errors import DfnasError
from dfnas.io import atomic_write_json, read_json
from dfnas.pipeline.config import RunConfig
from dfnas.rundir import prepare_run_dir

RUN_KIND = "dfnas-run"
STAGES = ("teacher", "synthesis", "search", "train", "export", "report")


def open_run_dir(out: str | Path, cfg: RunConfig, write: bool = True) -> Path:
    """Create or reopen ``out`` for ``cfg``; raise DfnasError (deleting nothing) when it holds anything else.

    ``write=False`` only checks (ranks other than 0 in a distributed job). The check is
    ``dfnas.rundir.prepare_run_dir`` with ``kind="dfnas-run"``.
    """
    out_dir, _ = prepare_run_dir(out, cfg.identity(), {"config": to_dict(cfg)}, kind=RUN_KIND, write=write,
                                 resume_hint="rerun with the same preset and --set options to resume it, or choose "
                                             "another --out (nothing was changed)")
    return out_dir


def read_run_config(out: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run directory (DfnasError when it is not one)."""
    p = Path(out) / "config.json"
    obj = read_json(p, what="run configuration")
    if not isinstance(obj, dict) or obj.get("kind") != RUN_KIND:
        raise DfnasError(f"{str(Path(out))!r} is not a `dfnas run` directory")
    return obj


def marker_path(out: Path, stage: str) -> Path:
    """``OUT/stages/<stage>.json``."""
    return Path(out) / "stages" / f"{stage}.json"


def read_marker(out: Path, stage: str) -> dict[str, Any]:
    """The stage's marker, or ``{"status": "pending"}``."""
    p = marker_path(out, stage)
    if not p.is_file():
        return {"status": "pending"}
    try:
        obj = read_json(p, what="stage marker")
    except DfnasError:
        return {"status": "pending"}  # a marker is written atomically; unreadable means not finished
    return obj if isinstance(obj, dict) else {"status": "pending"}


def is_done(out: Path, stage: str) -> bool:
    """Whether ``stage`` completed in an earlier (or this) invocation."""
    return read_marker(out, stage).get("status") == "done"


def stage_timings(out: Path) -> dict[str, dict[str, Any]]:
    """{stage: marker} for every stage that has a marker."""
    return {s: m for s in STAGES if (m := read_marker(out, s)).get("status") != "pending"}


class StageHandle:
    """Passed to a running stage: ``info`` is saved in the marker when the stage completes."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}


@contextmanager
def stage(out: Path, name: str, write: bool = True) -> Iterator[StageHandle]:
    """Mark ``name`` running, run the body, then mark it done with its wall time (accumulated over attempts)."""
    prev = read_marker(out, name)
    attempts = int(prev.get("attempts", 0)) + 1
    before = float(prev.get("seconds_total", 0.0))
    t0 = time.perf_counter()
    if write:
        atomic_write_json(marker_path(out, name), {**prev, "status": "running", "attempts": attempts,
                                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    handle = StageHandle()
    try:
        yield handle
    except BaseException:
        if write:  # keep the time spent so far, so the report's timing covers every attempt
            atomic_write_json(marker_path(out, name), {
                **prev, "status": "running", "attempts": attempts,
                "seconds_total": round(before + time.perf_counter() - t0, 3)})
        raise
    seconds = time.perf_counter() - t0
    if write:
        atomic_write_json(marker_path(out, name), {
            "status": "done", "attempts": attempts, "seconds": round(seconds, 3),
            "seconds_total": round(before + seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **handle.info})
