"""The CLI sub-commands, and one small synthesis run on the real ResNet-20 teacher from the shared assets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dfnas.assets import asset_path
from dfnas.data.shards import read_manifest, read_synthetic

RESNET20 = asset_path("teachers", "resnet20-12fca82f.th")
EXACT_TEST = asset_path("cifar10", "exact_test_1017.npz")


def _parser() -> argparse.ArgumentParser:
    from dfnas._cli import synthesis

    parser = argparse.ArgumentParser(prog="dfnas")
    synthesis.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_synthesize_and_inspect_with_a_factory_teacher(tmp_path: Path, capsys) -> None:
    module = tmp_path / "teacher_mod.py"
    module.write_text("from dfnas.synthesis.toy import toy_teacher\n\n"
                      "def make():\n    return toy_teacher(num_classes=4, input_size=32, seed=2).model\n")
    out = tmp_path / "ds"
    args = _parser().parse_args(["synthesize", "--teacher", f"{module}:make", "--factory-loads-weights", "--out",
                                 str(out), "--preset", "tiny",
                                 "--set", "steps=2", "--set", "plots=false", "--num-images", "8", "--rounds", "2",
                                 "--seed", "3", "--device", "cpu", "--quiet"])
    assert args.func(args) == 0
    man = read_manifest(out)
    assert man["complete"] and man["seed"] == 3 and man["config"]["steps"] == 2 and man["canvas_size"] == 40
    assert len(read_synthetic(out)) == 8
    args = _parser().parse_args(["inspect", str(out), "--device", "cpu", "--json"])
    capsys.readouterr()
    assert args.func(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["metrics"]["images"] == 8 and rep["teacher"] == f"{module}:make"
    args = _parser().parse_args(["synthesize", "--out", str(out), "--method", "noise", "--teacher", f"{module}:make",
                                 "--factory-loads-weights", "--preset", "tiny", "--device", "cpu", "--quiet"])
    from dfnas.errors import DfnasError

    with pytest.raises(DfnasError, match="different config"):
        args.func(args)


@pytest.mark.integration
@pytest.mark.skipif(RESNET20 is None or EXACT_TEST is None,
                    reason="shared assets not found (set DFNAS_ASSETS to the assets directory)")
def test_resnet20_tiny_budget_synthesis_is_teacher_consistent(tmp_path: Path) -> None:
    from dfnas.synthesis import make_config, synthesize
    from dfnas.synthesis.inspect import format_report, inspect_dataset
    from dfnas.teachers import TeacherConfig, load_teacher

    teacher = load_teacher(TeacherConfig(name="cifar10_resnet20", download=False))
    cfg = make_config("default", ["num_images=20", "batch_size=10", "rounds=2", "steps=30", "plots=false"])
    out = synthesize(cfg, tmp_path / "r20", teacher=teacher, progress=False)
    man = read_manifest(out)
    assert man["complete"] and man["teacher"]["sha256"].startswith("12fca82f")
    # 30 steps already invert every round-0 target of a well-trained teacher
    assert man["summary"]["agreement_per_round"][0] >= 0.9
    ds = read_synthetic(out)
    assert ds.images.shape == (20, 3, 40, 40)
    rep = inspect_dataset(out, teacher)
    assert rep["metrics"]["agreement"] == pytest.approx(sum(man["summary"]["agreement_per_round"]) / 2)
    assert "teacher agreement" in format_report(rep)


@pytest.mark.integration
@pytest.mark.skipif(RESNET20 is None or EXACT_TEST is None,
                    reason="shared assets not found (set DFNAS_ASSETS to the assets directory)")
def test_resnet20_tiny_budget_generator_synthesis_and_calibration_report(tmp_path: Path) -> None:
    from dfnas.synthesis import make_config, synthesize
    from dfnas.synthesis.inspect import format_report, inspect_dataset
    from dfnas.teachers import TeacherConfig, load_teacher

    teacher = load_teacher(TeacherConfig(name="cifar10_resnet20", download=False))
    cfg = make_config("default", ["method=generator", "num_images=60", "batch_size=20", "rounds=2", "plots=false",
                                  "generator.warmup_batches=3"])
    out = synthesize(cfg, tmp_path / "gen", teacher=teacher, progress=False)
    man = read_manifest(out)
    assert man["complete"] and man["config"]["bn_weight"] == 10.0 and man["canvas_size"] == 40
    ds = read_synthetic(out)
    assert ds.images.shape == (60, 3, 40, 40) and ds.rounds.tolist() == [0] * 30 + [1] * 30
    # a few teacher passes per batch: the teacher already recognizes the target class well above chance (10 %)
    assert man["summary"]["agreement_per_round"][0] >= 0.2
    rep = inspect_dataset(out, teacher, real=EXACT_TEST)
    rounds = rep["metrics"]["per_round"]
    assert set(rounds) == {"0", "1"} and all(-1 <= r["similarity_spearman"] <= 1 for r in rounds.values())
    assert 0 < rounds["1"]["second_class_mass"] < 0.5
    table = format_report(rep)
    assert "class-similarity Spearman" in table and "per recursion round" in table
