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
                "calibration_loss_temperature=0", "onehot_loss_temperature=0", "onehot_loss_temperature=.inf",
                "ce_confidence_cap=0", "ce_confidence_cap=1.5"):
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


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.npz"))}


def test_a_damaged_or_deleted_shard_is_made_again_by_a_rerun(tmp_path: Path, teacher) -> None:
    cfg = make_config("tiny", ["plots=false"])  # 2 rounds x 2 shards of 4 images
    out = _run(cfg, tmp_path / "ds", teacher)
    good = _bytes(out)
    man = read_manifest(out)
    assert set(man["shards"]) == set(good)
    assert all(rec["images"] == 4 and len(rec["sha256"]) == 64 for rec in man["shards"].values())

    (out / "shards" / "r00_s0001.npz").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"1 shard\(s\) are missing or damaged .*r00_s0001"):
        _run(cfg, out, teacher)
    assert _bytes(out) == good and read_manifest(out)["complete"]

    (out / "shards" / "r01_s0001.npz").unlink()
    with pytest.warns(UserWarning, match="r01_s0001.npz is missing"):
        _run(cfg, out, teacher)
    assert _bytes(out) == good and read_manifest(out)["complete"]


def test_a_remade_shard_unlike_its_record_remakes_the_shards_derived_from_it(tmp_path: Path, teacher,
                                                                             monkeypatch) -> None:
    import json

    import dfnas.synthesis.runner as runner

    cfg = make_config("tiny", ["plots=false"])
    out = _run(cfg, tmp_path / "ds", teacher)
    good = _bytes(out)
    written: list[str] = []
    real_write = runner.write_shard

    def spy(path, *args, **kwargs):
        written.append(Path(path).name)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(runner, "write_shard", spy)
    (out / "shards" / "r00_s0000.npz").unlink()
    with pytest.warns(UserWarning, match="missing"):
        _run(cfg, out, teacher)
    assert written == ["r00_s0000.npz"]  # made again identically: round 1 still derives from it
    # a record the remade shard does not match (e.g. other hardware): round 1's shard 0 is made again too
    man = read_manifest(out)
    man["shards"]["r00_s0000.npz"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(man))
    written.clear()
    with pytest.warns(UserWarning, match="damaged"):
        _run(cfg, out, teacher)
    assert written == ["r00_s0000.npz", "r01_s0000.npz"]
    assert _bytes(out) == good


def test_a_damaged_generator_shard_is_made_again_from_the_start(tmp_path: Path, teacher) -> None:
    cfg = make_config("tiny", ["plots=false", "method=generator", "generator.warmup_batches=1",
                               "generator.warmup_steps=2", "generator.width=4", "generator.latent_dim=8"])
    out = _run(cfg, tmp_path / "gen", teacher)
    good = _bytes(out)
    # the saved generator state is past shard r00_s0001: only a rerun from the start reproduces it
    (out / "shards" / "r00_s0001.npz").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="made again from the start"):
        _run(cfg, out, teacher)
    assert _bytes(out) == good and read_manifest(out)["complete"]


def test_readers_refuse_a_dataset_with_fewer_images_than_its_manifest(tmp_path: Path, teacher, capsys) -> None:
    from dfnas.cli import main
    from dfnas.data import open_dataset

    out = _run(make_config("tiny", ["plots=false"]), tmp_path / "ds", teacher)
    (out / "shards" / "r00_s0001.npz").unlink()
    with pytest.raises(DataError, match="4 of the 16 images its manifest lists are missing"):
        open_dataset(out)
    for argv in (["inspect", str(out)],
                 ["search", "--data", str(out), "--out", str(tmp_path / "s"), "--method", "spos", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "r00_s0001.npz is missing" in err and "rerun the same `dfnas synthesize`" in err, err
    assert not (tmp_path / "s").exists()
    # a shard replaced by another valid shard file: caught by the checksum
    other = out / "shards" / "r00_s0000.npz"
    (out / "shards" / "r00_s0001.npz").write_bytes(other.read_bytes())
    with pytest.raises(DataError, match="r00_s0001.npz is damaged"):
        open_dataset(out)


def test_refusal_of_another_config_names_the_differing_keys(tmp_path: Path, teacher) -> None:
    out = _run(make_config("tiny", ["plots=false"]), tmp_path / "ds", teacher)
    with pytest.raises(DfnasError, match=r"different configuration \(num_images: 16 -> 8, steps: 6 -> 7\)"):
        _run(make_config("tiny", ["plots=false", "steps=7", "num_images=8"]), out, teacher)
    # settings that only change logs or pictures are not named (nor refused)
    _run(make_config("tiny", ["plots=false", "log_every=3"]), out, teacher)


def test_round0_and_later_rounds_get_their_own_loss_temperature() -> None:
    import dataclasses

    import torch

    from dfnas.synthesis.methods import ShardJob, SynthesisMethod
    from dfnas.synthesis.runner import data_identity

    temps = make_config("tiny", ["onehot_loss_temperature=8", "calibration_temperature=2"])
    job0 = ShardJob(round_idx=0, shard_idx=0, start=3, count=2, parent_targets=None)
    targets, temp = SynthesisMethod.targets_for(job0, 4, torch.device("cpu"), temps)
    assert temp == 8.0 and targets.tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]  # image i gets class i % K
    soft = torch.full((2, 4), 0.25)
    job1 = dataclasses.replace(job0, round_idx=1, parent_targets=soft)
    targets, temp = SynthesisMethod.targets_for(job1, 4, torch.device("cpu"), temps)
    assert temp == 2.0 and torch.equal(targets, soft)
    # the defaults stay out of the data's identity (datasets made before the options keep their hash)
    cfg = dataclasses.asdict(make_config("tiny"))
    assert not {"onehot_loss_temperature", "ce_confidence_cap"} & set(data_identity(cfg, {})["config"])
    cfg = dataclasses.asdict(make_config("tiny", ["onehot_loss_temperature=8", "ce_confidence_cap=0.9"]))
    assert {"onehot_loss_temperature", "ce_confidence_cap"} <= set(data_identity(cfg, {})["config"])
