"""``dfnas run`` end to end on the real ResNet-20 teacher with the tiny preset: killed mid-search, resumed,
then every output checked (report, PNGs, export round trip); plus bad inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfnas.assets import asset_path
from dfnas.cli import main
from dfnas.errors import DfnasError, TeacherError
from dfnas.export import load_exported
from dfnas.export.commands import export_command
from dfnas.io import read_jsonl
from dfnas.pipeline.config import load_run_config
from dfnas.pipeline.rundir import read_marker
from dfnas.pipeline.stages import export_stage
from dfnas.report import NB201_MISSING, build_report
from dfnas.run import run_pipeline
from dfnas.spaces.base import space_from_config, subnet_state_dict

REPO = Path(__file__).resolve().parent.parent
TEACHER = asset_path("teachers", "resnet20-12fca82f.th")
needs_teacher = pytest.mark.skipif(TEACHER is None, reason="ResNet-20 checkpoint not found in the shared assets "
                                                           "(set DFNAS_ASSETS)")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["DFNAS_NB201"] = str(tmp_path / "no-such-table.csv")  # the run must work without ground truth
    if TEACHER is not None:
        env["DFNAS_ASSETS"] = str(TEACHER.parent.parent)
    return env


def _is_png(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG" and im.size[0] > 10 and im.size[1] > 10


@pytest.mark.integration
@needs_teacher
def test_tiny_run_killed_mid_search_resumes_and_produces_everything(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dfnas.cli", "run", "--preset", "tiny", "--out", str(out), "--quiet",
           "--set", "search.epochs=40"]
    env = _env(tmp_path)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (out / "search" / "checkpoint.pt").exists():  # synthesis done, search one epoch in
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed:\n{proc.stdout.read().decode()}")
        assert time.monotonic() < deadline, "search never started"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert read_marker(out, "synthesis")["status"] == "done"
    assert read_marker(out, "search")["status"] == "running"
    shards = {p: p.stat().st_mtime_ns for p in (out / "data" / "shards").glob("*.npz")}
    assert shards

    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "report:" in res.stdout
    # finished stages were not redone; the search continued from its checkpoint
    assert read_marker(out, "synthesis")["attempts"] == 1
    assert read_marker(out, "search")["attempts"] == 2
    assert {p: p.stat().st_mtime_ns for p in shards} == shards
    assert any(r.get("kind") == "resume" for r in read_jsonl(out / "search" / "log.jsonl"))
    for s in ("teacher", "synthesis", "search", "train", "export", "report"):
        assert read_marker(out, s)["status"] == "done", s

    # report: both files, every referenced PNG readable
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "report.html").read_text()
    assert NB201_MISSING in md and "cifar10_resnet20" in md
    pngs = ["synthetic_samples.png", "synthesis_losses.png", "search_curves.png", "cell.png", "train_curves.png"]
    for name in pngs:
        assert f"]({name})" in md and f"src='{name}'" in html
        assert _is_png(out / "report" / name), name
    assert "seconds" in read_marker(out, "report")

    # export: the reloaded plain network equals the trained one; `dfnas export --run` gives the same
    net = load_exported(out / "export")
    found = read_marker(out, "search")["arch"]
    assert read_marker(out, "export")["arch"] == found
    onnx_meta = read_marker(out, "export")["onnx"]  # model.onnx beside the weights, or why not
    assert (out / "export" / "model.onnx").is_file() if onnx_meta["file"] else "pip install" in onnx_meta["skipped"]
    space = space_from_config(read_marker(out, "export")["space"])
    ref = space.build_network(space.parse(found))
    ref.load_state_dict(torch.load(out / "train" / "model.pt", weights_only=True))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), ref.eval()(x))
        again = load_exported(export_command(tmp_path / "exp2", run_dir=out))
        assert torch.equal(again(x), net(x))

    assert main(["export", "--out", str(tmp_path / "exp3"), "--arch", str(out / "search" / "arch.json"),
                 "--weights", str(out / "train" / "model.pt")]) == 0
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path / "exp3")(x), net(x))

    # weights inherited from the supernet instead (the export stage on a copy of the run)
    inh = tmp_path / "inherit"
    shutil.copytree(out, inh)
    info = export_stage(load_run_config("tiny", ["search.epochs=40", "export.weights=inherit"]), inh,
                        torch.device("cpu"), None)
    assert "inherited" in info["weights_source"] and info["arch"] == found
    sup = space.build_supernet()
    sup.load_state_dict(torch.load(inh / "search" / "checkpoint.pt", weights_only=True)["model"])
    sub = subnet_state_dict(sup, space.parse(found))
    got = load_exported(inh / "export").state_dict()
    assert set(got) == set(sub)
    assert all(torch.equal(v, sub[k]) for k, v in got.items() if "running_" not in k and "num_batches" not in k)
    assert any(not torch.equal(v, sub[k]) for k, v in got.items() if "running_mean" in k)  # BN re-estimated

    # a table given afterwards: the rebuilt report shows the ground truth
    table = asset_path("nb201", "nats_bench.csv")
    if table is not None:
        build_report(out, table_path=table)
        md2 = (out / "report" / "report.md").read_text()
        assert "CIFAR-10 test accuracy after 200 epochs" in md2 and NB201_MISSING not in md2
    assert main(["report", str(out)]) == 0 and (out / "report" / "report.html").is_file()

    # the same command again: nothing to do; another config in the same directory: refused, nothing touched
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert read_marker(out, "search")["attempts"] == 2
    bad = subprocess.run(cmd[:-1] + ["search.epochs=41"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert "different configuration (search.epochs: 40 -> 41)" in bad.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert {p for p in before if p.parent.name != "stages"} <= set(after)


FACTORIES = """
from torch import nn

def not_image():
    return nn.Linear(5, 3)

def segmenter():
    return nn.Conv2d(3, 4, 1)
"""


@pytest.mark.parametrize("factory, message", [("not_image", "not an image classifier of 3x32x32 inputs"),
                                              ("segmenter", "not an image classifier: expected logits")])
def test_a_teacher_that_is_not_an_image_classifier_is_refused(tmp_path, factory, message):
    models = tmp_path / "models.py"
    models.write_text(FACTORIES)
    cfg = load_run_config("tiny", ["teacher.factory_loads_weights=true"], teacher=f"{models}:{factory}", device="cpu")
    with pytest.raises(TeacherError, match=message):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "stages"]


def test_cli_reports_bad_inputs_in_one_line(tmp_path, capsys):
    code = main(["run", "--preset", "tiny", "--out", str(tmp_path / "r"), "--set", "search.epoch=3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'epochs'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    code = main(["run", "--preset", "tiny", "--out", str(tmp_path / "r2"), "--weights", str(tmp_path / "nope.th"),
                 "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "do not exist" in err
    code = main(["run", "--preset", "no-such-preset", "--out", str(tmp_path / "r3")])
    assert code == 2 and "unknown preset" in capsys.readouterr().err
    assert main(["run", "--list-presets"]) == 0
    assert "tiny" in capsys.readouterr().out.split()


@needs_teacher
def test_stop_after_a_stage_then_continue_where_it_stopped(tmp_path):
    cfg = load_run_config("tiny", ["report.real_test=null"], device="cpu")
    assert run_pipeline(cfg, tmp_path, progress=False, stop_after="teacher") is None
    assert read_marker(tmp_path, "teacher")["status"] == "done"
    assert read_marker(tmp_path, "teacher")["identity"]["name"] == "cifar10_resnet20"
    assert read_marker(tmp_path, "teacher")["real_test"] is None  # real data switched off
    assert read_marker(tmp_path, "synthesis")["status"] == "pending" and not (tmp_path / "data").exists()
    assert run_pipeline(cfg, tmp_path, progress=False, stop_after="teacher") is None
    assert read_marker(tmp_path, "teacher")["attempts"] == 1  # not redone


FACTORY_NO_BN = """
from torch import nn

def plain():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
"""


def test_a_teacher_without_batchnorm_names_the_run_setting(tmp_path):
    models = tmp_path / "plain.py"
    models.write_text(FACTORY_NO_BN)
    cfg = load_run_config("tiny", ["teacher.factory_loads_weights=true"], teacher=f"{models}:plain", device="cpu")
    with pytest.raises(TeacherError, match="teacher.allow_no_batchnorm=true"):
        run_pipeline(cfg, tmp_path / "run", progress=False)


@needs_teacher
def test_a_run_resumes_however_its_directory_is_spelled_or_wherever_it_moved(tmp_path, monkeypatch):
    from dfnas.io import read_json

    monkeypatch.chdir(tmp_path)
    cfg = load_run_config("tiny", ["report.real_test=null"], device="cpu")
    run_pipeline(cfg, "runR", progress=False, stop_after="search")
    search_cfg = read_json(tmp_path / "runR" / "search" / "config.json")
    assert search_cfg["identity"]["dataset"]["source"] == "data"  # relative to the run directory
    # the search stage is redone into its existing directory, the run now spelled as an absolute path
    (tmp_path / "runR" / "stages" / "search.json").unlink()
    run_pipeline(cfg, tmp_path / "runR", progress=False, stop_after="search")
    assert read_marker(tmp_path / "runR", "search")["status"] == "done"
    # moved elsewhere, then resumed (search redone again, then training): same hashes throughout
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "runR", tmp_path / "moved" / "runS")
    (tmp_path / "moved" / "runS" / "stages" / "search.json").unlink()
    run_pipeline(cfg, "moved/runS", progress=False, stop_after="train")
    assert read_json(tmp_path / "moved" / "runS" / "search" / "config.json")["config_hash"] == search_cfg["config_hash"]
    train_cfg = read_json(tmp_path / "moved" / "runS" / "train" / "config.json")
    assert train_cfg["identity"]["dataset"]["source"] == "data"


def test_a_search_dir_recorded_with_another_path_to_the_same_data_resumes(tmp_path):
    from dfnas.rundir import prepare_run_dir

    ident = {"kind": "search", "seed": 0, "dataset": {"source": "runR/data", "fingerprint": "abc", "n": 8}}
    out, h = prepare_run_dir(tmp_path / "s", ident, {})
    # the same data (fingerprint) under another path: resumed under the recorded hash
    moved = {**ident, "dataset": {**ident["dataset"], "source": "data"}}
    assert prepare_run_dir(tmp_path / "s", moved, {}) == (out, h)
    other = {**ident, "dataset": {**ident["dataset"], "source": "data", "fingerprint": "abd"}}
    with pytest.raises(DfnasError, match="dataset.fingerprint: 'abc' -> 'abd', dataset.source: 'runR/data' -> 'data'"):
        prepare_run_dir(tmp_path / "s", other, {})


def test_the_stages_are_records_in_order_each_after_the_stages_it_reads():
    from dfnas.pipeline.rundir import STAGES
    from dfnas.pipeline.stages import STAGE_LIST

    assert tuple(s.name for s in STAGE_LIST) == STAGES
    for i, s in enumerate(STAGE_LIST):
        assert set(s.needs) <= {t.name for t in STAGE_LIST[:i]}, s.name
        assert s.writes and callable(s.run) and s.title(load_run_config("tiny"))
    assert [s.name for s in STAGE_LIST if s.main_only] == ["train", "export", "report"]
