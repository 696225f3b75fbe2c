"""Teachers that are not 3-channel 32 px: every space takes the channels and input size of the data, a space
that cannot take them is refused before any work, and the CLI search runs on 1-channel 28 px images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfnas.cli import main
from dfnas.errors import ArchError
from dfnas.io import read_json
from dfnas.pipeline.config import load_run_config
from dfnas.pipeline.rundir import read_marker
from dfnas.run import run_pipeline
from dfnas.spaces import build_space

TINY = {
    "nb201": {"C": 4, "N": 1},
    "darts": {"C": 4, "layers": 3},
    "proxyless": {"width_mult": 0.25, "layers_per_stage": 1},
    "spos": {"width_mult": 0.25, "layers": [1, 1, 1, 1]},
}
# a seeded 1-channel teacher whose factory builds its own (untrained, seeded) weights
GRAY = """
import torch
from dfnas.synthesis.toy import ToyNet

def gray():
    torch.manual_seed(0)
    return ToyNet(num_classes=4, in_channels=1).eval()
"""


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_space_takes_one_channel_28px_images(name: str) -> None:
    space = build_space(name, num_classes=4, input_size=28, in_channels=1, **TINY[name])
    space.check_input()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    arch = space.sample(torch.Generator().manual_seed(1))
    sup = space.build_supernet().eval()
    sup.set_path(arch)
    with torch.no_grad():
        assert sup(x).shape == (2, 4)
        assert space.build_network(arch).eval()(x).shape == (2, 4)
    cfg = space.config()
    assert cfg["in_channels"] == 1
    assert build_space(**cfg).build_network(arch).stem[0].in_channels == 1
    # RGB spaces record no in_channels: their configs, and the run hashes built on them, are unchanged
    assert "in_channels" not in build_space(name, num_classes=4, input_size=28, **TINY[name]).config()


def test_a_space_that_cannot_take_the_images_is_refused_clearly() -> None:
    with pytest.raises(ArchError, match="cannot take 1-channel 2 px images"):
        build_space("nb201", num_classes=4, input_size=2, in_channels=1, C=4, N=1).check_input()
    with pytest.raises(ArchError, match="multiple of 4"):
        build_space("darts", num_classes=4, input_size=30, in_channels=1, C=4, layers=3)


def _gray_teacher(tmp_path: Path) -> str:
    (tmp_path / "gray.py").write_text(GRAY)
    return f"{tmp_path / 'gray.py'}:gray"


def test_cli_search_on_a_one_channel_dataset(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    assert main(["synthesize", "--teacher", _gray_teacher(tmp_path), "--factory-loads-weights", "--in-channels", "1",
                 "--input-size", "28", "--preset", "tiny", "--method", "generator", "--set", "plots=false",
                 "--set", "generator.warmup_batches=1", "--set", "generator.width=4", "--out", str(data),
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["search", "--data", str(data), "--space", "nb201", "--method", "spos", "--set", "space.C=4",
                 "--set", "space.N=1", "--set", "epochs=1", "--set", "batch_size=4", "--set", "spos.population=2",
                 "--set", "spos.top_k=1", "--set", "spos.generations=1", "--out", str(tmp_path / "s"), "--quiet",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    space = read_json(tmp_path / "s" / "arch.json")["space"]
    assert space["in_channels"] == 1 and space["input_size"] == 28


def test_run_refuses_a_space_the_teacher_images_do_not_fit_before_synthesis(tmp_path: Path) -> None:
    overrides = ["teacher.factory_loads_weights=true", "teacher.in_channels=1", "teacher.input_size=30",
                 "search.space.name=darts", "search.space.options={C: 4, layers: 3}", "report.real_test=null"]
    cfg = load_run_config("tiny", overrides, teacher=_gray_teacher(tmp_path), device="cpu")
    with pytest.raises(ArchError, match="multiple of 4"):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert read_marker(tmp_path / "run", "synthesis")["status"] == "pending"
    assert not (tmp_path / "run" / "data").exists()
