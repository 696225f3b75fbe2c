"""End-to-end synthesis on a tiny seeded teacher: format, recursion, resume, ranks, baselines, errors."""

from __future__ import annotations

import dataclasses
import errno
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dfnas.data.shards import list_shards, read_manifest, read_shard, read_synthetic
from dfnas.errors import ConfigError, DataError, DfnasError
from dfnas.synthesis import SYNTHESIS_METHODS, make_config, synthesize
from dfnas.synthesis.optimize import NonFiniteLossError
from dfnas.synthesis.toy import toy_teacher


@pytest.fixture(scope="module")
def teacher():
    return toy_teacher(num_classes=4, input_size=8, seed=0)


def _cfg(*overrides: str, **fields):
    # pictures are tested once (output-format test); drawing them costs about a second per run
    plots = [] if any(o.startswith("plots=") for o in overrides) else ["plots=false"]
    return make_config("tiny", [*plots, *overrides], **fields)


def _run(cfg, out: Path, teacher, **kw) -> Path:
    return synthesize(cfg, out, teacher=teacher, device="cpu", progress=False, **kw)


def _all_shards(out: Path) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    return {(r, s): read_shard(p) for r, s, p in list_shards(out)}


def _run_killed(cfg, out: Path, teacher, monkeypatch, shards: int) -> None:
    """Run ``cfg`` into ``out`` and kill it (KeyboardInterrupt) once ``shards`` shards are on disk."""
    import dfnas.synthesis.runner as runner

    real_write, calls = runner.write_shard, []

    def killing_write(*args, **kwargs):
        if len(calls) == shards:
            raise KeyboardInterrupt
        calls.append(args[0])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(runner, "write_shard", killing_write)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, out, teacher)
    monkeypatch.setattr(runner, "write_shard", real_write)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, teacher) -> Path:
    return _run(_cfg("plots=true"), tmp_path_factory.mktemp("ds") / "tiny", teacher)


def test_output_format_manifest_logs_and_pictures(tiny_dataset: Path, teacher) -> None:
    man = read_manifest(tiny_dataset)
    for key in ("complete", "input_size", "class_names", "label_mode", "method", "teacher", "config_hash", "config",
                "seed", "environment"):
        assert key in man, key
    assert man["complete"] is True and man["label_mode"] == "distill" and man["method"] == "full"
    assert man["input_size"] == 8 and man["canvas_size"] == 10 and man["teacher"]["name"] == teacher.spec.name
    assert man["environment"]["torch"] == torch.__version__
    assert [(r, s) for r, s, _ in list_shards(tiny_dataset)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    ds = read_synthetic(tiny_dataset)
    assert ds.images.shape == (16, 3, 10, 10) and ds.images.dtype == torch.uint8
    assert ds.rounds.tolist() == [0] * 8 + [1] * 8
    # round 0: balanced one-hot targets, image i -> class i % K
    assert torch.equal(ds.targets[:8], torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float())
    # stored logits are the teacher's on the centre crop of the stored uint8 canvas
    with torch.no_grad():
        logits = teacher(ds.images[:, :, 1:9, 1:9].float() / 255)
    assert torch.allclose(ds.logits, logits, atol=1e-5)
    recs = [json.loads(line) for line in (tiny_dataset / "synthesis_log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "step" in r]
    assert steps and {"loss", "loss_ce", "loss_bn", "loss_tv_l2", "lr", "acc"} <= set(steps[0])
    assert len([r for r in recs if r.get("event") == "shard_done"]) == 4
    from PIL import Image

    with Image.open(tiny_dataset / "samples.png") as im:
        assert im.size[1] >= 4 * 20  # one row per class, tiles scaled x2
    with Image.open(tiny_dataset / "loss_curves.png") as im:
        assert im.size[0] > 100


def test_recursive_targets_equal_previous_round_predictions(tiny_dataset: Path, teacher) -> None:
    ds = read_synthetic(tiny_dataset)
    t = read_manifest(tiny_dataset)["config"]["calibration_temperature"]
    with torch.no_grad():  # what is on disk: centre crop of the saved uint8 round-0 canvases
        prev = teacher(ds.images[:8, :, 1:9, 1:9].float() / 255)
    assert torch.allclose(ds.targets[8:], torch.softmax(prev / t, 1), atol=1e-5)
    assert not torch.allclose(ds.targets[8:], ds.targets[:8])


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, teacher, tiny_dataset: Path,
                                                     monkeypatch) -> None:
    out = tmp_path / "resumed"
    _run_killed(_cfg(), out, teacher, monkeypatch, shards=3)  # dies while round 1 is half done
    assert read_manifest(out)["complete"] is False and len(list_shards(out)) == 3
    with pytest.raises(DataError, match="incomplete"):
        read_synthetic(out)
    _run(_cfg(), out, teacher)
    a, b = _all_shards(tiny_dataset), _all_shards(out)
    assert a.keys() == b.keys()
    for key in a:
        for name in a[key]:
            assert np.array_equal(a[key][name], b[key][name]), (key, name)
    assert read_manifest(out)["config_hash"] == read_manifest(tiny_dataset)["config_hash"]


def test_ranks_split_shards_and_match_single_process(tmp_path: Path, teacher, tiny_dataset: Path) -> None:
    out = tmp_path / "ranks"
    sync = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            _run(_cfg(), out, teacher, rank=rank, world_size=2, barrier=sync.wait)
        except BaseException as e:  # surface any failure of the thread in the test
            errors.append(e)
            sync.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert read_manifest(out)["complete"] is True
    a, b = _all_shards(tiny_dataset), _all_shards(out)
    assert all(np.array_equal(a[k]["images"], b[k]["images"]) for k in a)
    log1 = [json.loads(x) for x in (out / "synthesis_log.rank1.jsonl").read_text().splitlines()]
    assert {r["shard"] for r in log1 if r.get("event") == "shard_done"} == {1}


def test_rank_without_barrier_gets_clear_error(tmp_path: Path, teacher) -> None:
    with pytest.raises(DataError, match="barrier"):
        _run(_cfg(), tmp_path / "r", teacher, rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rank 2"):
        _run(_cfg(), tmp_path / "r2", teacher, rank=2, world_size=2)


def test_existing_dataset_with_other_config_is_refused(tmp_path: Path, teacher, tiny_dataset: Path) -> None:
    out = tmp_path / "ds"
    _run(_cfg("num_images=8", "rounds=1"), out, teacher)
    before = _all_shards(out)
    with pytest.raises(DfnasError, match=r"different config.*another --out.*--overwrite") as ei:
        _run(_cfg(), out, teacher)
    assert str(out) in str(ei.value)
    assert _all_shards(out).keys() == before.keys()  # nothing deleted
    _run(_cfg(), out, teacher, overwrite=True)
    assert _all_shards(out).keys() == _all_shards(tiny_dataset).keys()
    # a non-empty directory that is not a dataset is never written into
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DfnasError, match="not empty"):
        _run(_cfg(), other, teacher, overwrite=True)
    # settings that only change logs keep the hash: a rerun is a no-op resume
    _run(_cfg("log_every=3"), out, teacher)


def test_nan_loss_aborts_and_writes_no_shard(tmp_path: Path) -> None:
    broken = toy_teacher(seed=0)
    broken.batchnorms()[0].running_var.fill_(-1.0)  # NaN activations
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"round 0 shard 0: loss term '\w+' became nan at step 0"):
        _run(_cfg(), out, broken)
    assert list_shards(out) == [] and read_manifest(out)["complete"] is False


def test_unwritable_or_full_output_dir(tmp_path: Path, teacher, monkeypatch) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(DfnasError, match="cannot be created|not a directory"):
        _run(_cfg(), afile, teacher)
    with pytest.raises(DfnasError, match="cannot be created"):
        _run(_cfg(), afile / "sub", teacher)

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    out = tmp_path / "full"
    with pytest.raises(DfnasError, match="no space left"):
        _run(_cfg(), out, teacher)
    assert list_shards(out) == [] and not list((out / "shards").glob(".*"))  # temp files cleaned up


def test_teacher_without_batchnorm_turns_feature_term_off(tmp_path: Path) -> None:
    plain = toy_teacher(seed=0, batchnorm=False)
    with pytest.warns(UserWarning, match="no BatchNorm"):
        out = _run(_cfg("rounds=1", "num_images=4"), tmp_path / "nobn", plain)
    man = read_manifest(out)
    assert man["config"]["bn_weight"] == 0.0 and man["complete"]


def test_baselines_share_the_output_format(tmp_path: Path, teacher) -> None:
    assert set(SYNTHESIS_METHODS.names()) >= {"full", "plain", "noise", "real_random"}
    noise = read_synthetic(_run(_cfg(method="noise"), tmp_path / "noise", teacher))
    assert noise.label_mode == "hard" and noise.images.shape == (16, 3, 8, 8) and int(noise.rounds.max()) == 0
    assert torch.equal(noise.targets.sum(1), torch.ones(16))
    assert 0.35 < noise.images.float().mean().item() / 255 < 0.65
    plain = _run(_cfg(method="plain"), tmp_path / "plain", teacher)
    man = read_manifest(plain)
    assert man["config"]["rounds"] == 1 and man["canvas_size"] == 8 and man["label_mode"] == "distill"

    gen = torch.Generator().manual_seed(5)
    real_images = torch.randint(0, 256, (24, 8, 8, 3), generator=gen, dtype=torch.uint8).numpy()
    labels = (np.arange(24) % 4).astype(np.uint8)
    np.savez(tmp_path / "real.npz", images=real_images, labels=labels)
    with pytest.raises(ConfigError, match="--real"):
        _run(_cfg(method="real_random"), tmp_path / "rr0", teacher)
    rr = read_synthetic(_run(_cfg(method="real_random"), tmp_path / "rr", teacher, real_path=tmp_path / "real.npz"))
    assert rr.label_mode == "hard" and len(rr) == 16
    flat = {bytes(real_images[i]) for i in range(24)}
    picked = [bytes(img.permute(1, 2, 0).contiguous().numpy()) for img in rr.images]
    assert set(picked) <= flat and len(set(picked)) == 16  # real images, no repeats
    np.savez(tmp_path / "real6.npz", images=real_images, labels=(np.arange(24) % 6).astype(np.uint8))
    with pytest.raises(DataError, match="6 classes"):
        _run(_cfg(method="real_random"), tmp_path / "rr6", teacher, real_path=tmp_path / "real6.npz")

    # the KD control: the very images of real_random (same seed), labelled by the teacher's softmax
    rt = read_synthetic(_run(_cfg(method="real_teacher"), tmp_path / "rt", teacher, real_path=tmp_path / "real.npz"))
    assert rt.label_mode == "distill" and torch.equal(rt.images, rr.images)
    with torch.no_grad():
        expected = torch.softmax(teacher(rt.images.float() / 255.0), 1)
    assert torch.allclose(rt.targets, expected, atol=1e-5)
    assert torch.allclose(torch.softmax(rt.logits, 1), expected, atol=1e-5)  # stored logits agree with targets


def test_config_errors_are_clear(teacher, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        make_config("tiny", ["stepz=3"])
    with pytest.raises(ConfigError, match="bn_weight"):
        make_config("tiny", ["bn_weight=-1"])
    with pytest.raises(ConfigError, match="unknown synthesis preset"):
        make_config("huge")
    with pytest.raises(ConfigError, match="unknown synthesis method 'fancy'"):
        _run(_cfg(method="fancy"), tmp_path / "m", teacher)
    with pytest.raises(ConfigError, match="canvas_size"):
        _run(_cfg("canvas_size=6"), tmp_path / "c", teacher)
    cfg = make_config("default", ["steps=7"], rounds=3, num_images=10, teacher_name="x.py:f")
    assert (cfg.steps, cfg.rounds, cfg.images_per_round(), cfg.teacher.name) == (7, 3, [4, 3, 3], "x.py:f")


def test_inspect_dataset_metrics_and_table(tiny_dataset: Path, teacher, tmp_path: Path) -> None:
    from dfnas.synthesis.inspect import dataset_metrics, format_report, inspect_dataset

    gen = torch.Generator().manual_seed(1)
    np.savez(tmp_path / "real.npz", images=torch.randint(0, 256, (12, 8, 8, 3), generator=gen,
                                                         dtype=torch.uint8).numpy(),
             labels=(np.arange(12) % 4).astype(np.uint8))
    rep = inspect_dataset(tiny_dataset, teacher, real=tmp_path / "real.npz")
    m, r = rep["metrics"], rep["real_metrics"]
    summary = read_manifest(tiny_dataset)["summary"]
    assert m["agreement"] == pytest.approx(np.mean(summary["agreement_per_round"]))
    assert m["class_counts"] == summary["class_counts"] and r["images"] == 12
    assert 0 <= m["diversity"] <= 2 and m["bn_distance"] > 0 and 0 <= m["mean_entropy"] <= np.log(4) + 1e-6
    # diversity against a brute-force mean pairwise cosine distance
    ds = read_synthetic(tiny_dataset)
    with torch.no_grad():
        f = torch.nn.functional.normalize(teacher.features(ds.images[:, :, 1:9, 1:9].float() / 255).double(), dim=1)
    cos = f @ f.T
    brute = 1 - (cos.sum() - cos.diag().sum()) / (len(f) * (len(f) - 1))
    assert m["diversity"] == pytest.approx(float(brute), abs=1e-6)
    same = ds.subset(torch.zeros(5, dtype=torch.long))
    assert dataset_metrics(same, teacher)["diversity"] == pytest.approx(0.0, abs=1e-9)
    table = format_report(rep)
    assert "teacher agreement" in table and "BN-statistics distance" in table and "real" in table


def test_ablations_are_single_overrides(tmp_path: Path, teacher) -> None:
    no_rec = read_synthetic(_run(_cfg("rounds=1"), tmp_path / "norec", teacher))
    assert int(no_rec.rounds.max()) == 0 and len(no_rec) == 16
    no_reg = _run(_cfg("canvas_size=8", "lowres_fraction=0.5", "per_image_regions=true"), tmp_path / "noreg", teacher)
    assert read_synthetic(no_reg).images.shape[-1] == 8 and read_manifest(no_reg)["canvas_size"] == 8
    assert read_manifest(no_reg)["config"]["regional_update"] is False  # recorded as resolved
    no_bn = read_manifest(_run(_cfg("bn_weight=0"), tmp_path / "nobn", teacher))
    assert no_bn["complete"] and no_bn["config"]["bn_weight"] == 0.0
    log = [json.loads(x) for x in (tmp_path / "nobn" / "synthesis_log.jsonl").read_text().splitlines()]
    assert all("loss_bn" not in r for r in log)


def test_regional_update_off_is_the_input_sized_canvas_with_the_same_data_hash(tmp_path: Path, teacher) -> None:
    from dfnas.synthesis.runner import dataset_hash, resolve_config

    method = SYNTHESIS_METHODS.build("full")
    off = resolve_config(_cfg("regional_update=false"), teacher, method)
    explicit = resolve_config(_cfg("canvas_size=8"), teacher, method)  # the teacher takes 8 px inputs
    assert off.canvas_size == explicit.canvas_size == 8 and not off.regional_update and not explicit.regional_update
    # one dataset, two spellings: the same hash, so a dataset made either way resumes under the other
    assert dataset_hash(dataclasses.asdict(off), teacher) == dataset_hash(dataclasses.asdict(explicit), teacher)
    on = resolve_config(_cfg(), teacher, method)
    assert on.canvas_size == 10 and on.regional_update
    assert dataset_hash(dataclasses.asdict(on), teacher) != dataset_hash(dataclasses.asdict(off), teacher)
    with pytest.raises(ConfigError, match="regional_update=false.*canvas_size is 12"):
        resolve_config(_cfg("regional_update=false", "canvas_size=12"), teacher, method)
    gen_method = SYNTHESIS_METHODS.build("generator")
    gen = resolve_config(_cfg("regional_update=false", method="generator"), teacher, gen_method)
    assert gen.canvas_size == 8 and not gen.regional_update


def test_calibrated_preset_is_the_measured_recipe() -> None:
    cfg = make_config("calibrated")
    assert (cfg.onehot_loss_temperature, cfg.calibration_temperature, cfg.loss_temperature()) == (4.0, 16.0, 1.0)
    assert not cfg.regional_update and cfg.jitter == 0 and not cfg.flip and cfg.resolved_canvas(32) == 32
    assert cfg.rounds == 2 and cfg.method == "full"


def test_calibration_ce_weight_changes_only_the_soft_rounds(tmp_path, teacher) -> None:
    """``calibration_ce_weight`` weights the cross-entropy of rounds >= 1 only: equal to ce_weight it makes the
    same bytes as leaving it unset, larger it keeps round 0's images and changes round 1's; the generator, whose
    one set of weights serves every round, refuses it; at its default it stays out of the data's identity."""
    from dfnas.data import open_dataset
    from dfnas.synthesis.runner import data_identity

    def images(name: str, *extra: str) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = make_config("tiny", ["plots=false", "regional_update=false", *extra])
        synthesize(cfg, tmp_path / name, teacher=teacher, device="cpu", progress=False)
        ds = open_dataset(tmp_path / name)
        return ds.images, ds.rounds

    base, rounds = images("unset")
    same, _ = images("equal", "calibration_ce_weight=1.0")
    up, _ = images("up", "calibration_ce_weight=20")
    r0 = rounds == 0
    assert torch.equal(base, same)
    assert torch.equal(base[r0], up[r0]) and not torch.equal(base[~r0], up[~r0])
    with pytest.raises(ConfigError, match="calibration_ce_weight"):
        make_config("tiny", ["calibration_ce_weight=-1"])
    with pytest.raises(ConfigError, match="calibration_ce_weight applies to method 'full'"):
        synthesize(make_config("tiny", ["method=generator", "calibration_ce_weight=2"]), tmp_path / "gen",
                   teacher=teacher, device="cpu", progress=False)
    assert not (tmp_path / "gen" / "manifest.json").exists()
    assert "calibration_ce_weight" not in data_identity(dataclasses.asdict(make_config("tiny")), {})["config"]
