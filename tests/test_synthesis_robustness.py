"""Bad synthesis input: rejected before anything is written, or flagged in the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfnas.data.shards import read_manifest
from dfnas.errors import ConfigError, DataError, DfnasError
from dfnas.synthesis import make_config, synthesize
from dfnas.synthesis.toy import toy_teacher


@pytest.fixture(scope="module")
def teacher():
    return toy_teacher(num_classes=4, input_size=8, seed=0)


def _run(cfg, out: Path, teacher, **kw) -> Path:
    return synthesize(cfg, out, teacher=teacher, device="cpu", progress=False, **kw)


def test_non_finite_settings_are_rejected() -> None:
    for bad in ("lr=.inf", "lr=.nan", "tv_l2_weight=.inf", "calibration_temperature=.inf",
                "calibration_loss_temperature=0"):
        with pytest.raises(ConfigError):
            make_config("tiny", [bad])


def test_absurd_settings_are_flagged_in_the_summary(tmp_path: Path, teacher) -> None:
    # an astronomical learning rate saturates every pixel: the teacher no longer sees the targets
    cfg = make_config("tiny", ["plots=false", "lr=1e30", "rounds=1", "num_images=8"])
    with pytest.warns(UserWarning, match="agrees with the targets on only"):
        out = _run(cfg, tmp_path / "absurd", teacher)
    notes = read_manifest(out)["summary"]["warnings"]
    assert notes and "failed" in notes[0]


def test_rejected_real_dataset_leaves_nothing_behind(tmp_path: Path, teacher) -> None:
    real6 = tmp_path / "real6.npz"
    rng = np.random.default_rng(0)
    np.savez(real6, images=rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
             labels=(np.arange(24) % 6).astype(np.uint8))
    out = tmp_path / "rr"
    with pytest.raises(DataError, match="6 classes"):
        _run(make_config("tiny", ["plots=false"], method="real_random"), out, teacher, real_path=real6)
    assert not (out / "manifest.json").exists()
    real4 = tmp_path / "real4.npz"
    np.savez(real4, images=rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8),
             labels=(np.arange(24) % 4).astype(np.uint8))
    # the corrected command runs in the same directory without --overwrite
    done = _run(make_config("tiny", ["plots=false"], method="real_random"), out, teacher, real_path=real4)
    assert read_manifest(done)["complete"]


def test_a_dataset_the_disk_cannot_hold_is_refused(tmp_path: Path, teacher, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DfnasError, match="MiB free"):
        _run(make_config("tiny", ["plots=false"]), tmp_path / "full", teacher)
