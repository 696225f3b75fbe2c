"""A run directory that cannot be written: a clear error naming it (no OSError traceback); a finished run is
still read. Root ignores permission bits, so the read-only directory is simulated: ``os.access`` says no and
creating a file in it fails with EACCES, as on a read-only mount; a real chmod test runs when it can."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from dfnas.assets import asset_path
from dfnas.cli import main
from dfnas.errors import DfnasError
from dfnas.io import MetricLogger, atomic_write_json
from dfnas.pipeline.config import load_run_config
from dfnas.pipeline.rundir import open_run_dir, read_marker
from dfnas.run import run_pipeline

needs_teacher = pytest.mark.skipif(asset_path("teachers", "resnet20-12fca82f.th") is None,
                                   reason="ResNet-20 checkpoint not found in the shared assets (set DFNAS_ASSETS)")


def _read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make ``root`` (and everything below it) behave as read-only, even for root."""
    root = root.resolve()
    real_access, real_mkstemp = os.access, tempfile.mkstemp

    def inside(path: object) -> bool:
        return Path(str(path)).resolve().is_relative_to(root)

    def access(path, mode, *args, **kwargs):
        return False if mode & os.W_OK and inside(path) else real_access(path, mode, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own keyword)
        if dir is not None and inside(dir):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_writing_into_a_read_only_directory_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    with pytest.raises(DfnasError, match=f"directory '{ro}' is not writable"):
        atomic_write_json(ro / "x.json", {})
    assert list(ro.iterdir()) == []


def test_a_real_read_only_directory_when_permissions_apply(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permission bits do not apply (running as root)")
        with pytest.raises(DfnasError, match="is not writable"):
            atomic_write_json(ro / "x.json", {})
        with pytest.raises(DfnasError, match="is not writable"):
            MetricLogger(ro / "log.jsonl", tensorboard=False)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_report_on_a_read_only_run_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    run = open_run_dir(tmp_path / "run", load_run_config("tiny"))
    _read_only(monkeypatch, run)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"report directory '{run / 'report'}' is not writable" in err and "Traceback" not in err


@needs_teacher
def test_resuming_a_run_in_a_read_only_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = load_run_config("tiny", ["report.real_test=null"], device="cpu")
    out = tmp_path / "run"
    run_pipeline(cfg, out, progress=False, stop_after="teacher")
    _read_only(monkeypatch, out)
    # everything asked for is done: nothing to write, the run is only read
    assert run_pipeline(cfg, out, progress=False, stop_after="teacher") is None
    with pytest.raises(DfnasError, match=f"run directory '{out}' is not writable; stages synthesis still have"):
        run_pipeline(cfg, out, progress=False, stop_after="synthesis")
    assert main(["run", "--preset", "tiny", "--out", str(out), "--set", "report.real_test=null", "--quiet",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is not writable; stages synthesis, search, train, export, report" in err and "Traceback" not in err
    assert read_marker(out, "synthesis")["status"] == "pending" and not (out / "data").exists()
