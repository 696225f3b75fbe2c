"""A user's ImageNet-sized teacher (ResNet-18 shape, 224 px, 1,000 classes, random weights) through the generic
``path/to/file.py:factory --weights ckpt`` path: the resource estimate printed before synthesis, refusals of
what the disk or memory cannot hold, synthesis that reads shards lazily, and a tiny ``dfnas run`` end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import dfnas.synthesis.resources as resources
import dfnas.synthesis.runner as runner
from dfnas.cli import main
from dfnas.data.shards import SHARD_KEYS
from dfnas.errors import DfnasError
from dfnas.io import read_json
from dfnas.spaces import build_space
from dfnas.spaces.flops import count_macs
from dfnas.synthesis.config import SynthesisConfig
from dfnas.synthesis.generator import ConditionalGenerator
from dfnas.synthesis.methods import SYNTHESIS_METHODS
from dfnas.teachers.loader import TeacherConfig, load_teacher

FACTORY = f"{Path(__file__).with_name('imagenet_teacher.py')}:build"
TEACHER_FLAGS = ["--input-size", "224", "--num-classes", "1000"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict of the factory's ResNet-18 with seeded random weights (what a user's trained one would be)."""
    spec = importlib.util.spec_from_file_location("imagenet_teacher", FACTORY.rpartition(":")[0])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet18.pt"
    torch.save(module.build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def teacher(checkpoint: Path):
    return load_teacher(TeacherConfig(name=FACTORY, weights=str(checkpoint), input_size=224, num_classes=1000))


def _resolved(teacher, **settings) -> SynthesisConfig:
    cfg = SynthesisConfig(method="generator", **settings)
    return runner.resolve_config(cfg, teacher, SYNTHESIS_METHODS.build("generator"))


def test_the_estimate_counts_an_imagenet_teacher(teacher) -> None:
    cfg = _resolved(teacher, num_images=1000, batch_size=16)
    assert cfg.canvas_size == 280
    est = resources.estimate_resources(cfg, teacher)
    assert 1.7e9 < est["teacher_macs"] < 1.9e9  # ResNet-18 at 224 px: 1.82 GMAC
    per_image = 3 * 280 * 280 + 2 * 4 * 1000 + 2  # uint8 canvas, float32 targets + logits, int16 round
    assert est["disk_bytes"] >= 1000 * per_image
    # the 1,000-class generator's class embedding is factorized: tens of millions of weights, not 157 M
    assert 0 < est["generator_params"] < 40e6
    assert 0 < est["seconds"] < 1e6 and 0.5 * 2**30 < est["peak_memory_bytes"] < 8 * 2**30
    # memory does not grow with the dataset: shards are streamed, parents read one shard at a time
    big = resources.estimate_resources(dataclasses.replace(cfg, num_images=10**6), teacher)
    assert big["peak_memory_bytes"] == est["peak_memory_bytes"]
    assert big["disk_bytes"] - est["disk_bytes"] == (10**6 - 1000) * per_image  # the generator state is fixed


def test_only_an_imagenet_sized_generator_factorizes_its_class_embedding() -> None:
    cifar = ConditionalGenerator(10, 40, width=16)
    assert not cifar.factorized and isinstance(cifar.embed, torch.nn.Linear)  # CIFAR weights/states unchanged
    big = ConditionalGenerator(1000, 280, width=16)
    assert big.factorized and sum(p.numel() for p in big.parameters()) < 25e6
    z, y = torch.zeros(2, 64), torch.eye(1000)[:2]
    assert big(z, y).shape == (2, 3, 280, 280)


def test_requests_the_disk_or_memory_cannot_hold_are_refused(tmp_path: Path, teacher, monkeypatch) -> None:
    cfg = _resolved(teacher, num_images=10**9, batch_size=16)
    with pytest.raises(DfnasError, match=r"1,000,000,000 images needs about .* MiB free"):
        resources.check_resources(cfg, teacher, tmp_path, progress=False)
    monkeypatch.setattr(resources, "available_memory", lambda device: 2**20)
    with pytest.raises(DfnasError, match=r"batch_size 16 needs about .* cpu memory \(teacher 224 px, 1000 "
                                         r"classes.*only 1 MiB is available; lower batch_size"):
        resources.check_resources(_resolved(teacher, num_images=8, batch_size=16), teacher, tmp_path, False)
    # through the command: refused before anything but the manifest is written
    out = tmp_path / "data"
    code = main(["synthesize", "--teacher", FACTORY, "--weights", str(teacher.spec.source), *TEACHER_FLAGS,
                 "--method", "generator", "--set", "num_images=8", "--out", str(out), "--quiet"])
    assert code != 0 and not list(out.glob("shards/*.npz"))


def test_nb201_takes_224px_1000_class_images(teacher) -> None:
    # deliberate: the benchmark's stride-1 stem is kept, so the cells run at 224, 112 and 56 px (49x the MACs of
    # the 32 px network); a global pool before the classifier takes any input size
    space = build_space("nb201", num_classes=1000, input_size=224, C=4, N=1)
    space.check_input()
    net = space.build_network(space.sample(torch.Generator().manual_seed(0)))
    small = build_space("nb201", num_classes=1000, input_size=32, C=4, N=1).build_network(
        space.sample(torch.Generator().manual_seed(0)))
    assert count_macs(net, 224) > 30 * count_macs(small, 32)


def test_tiny_run_with_an_imagenet_teacher_end_to_end(tmp_path: Path, checkpoint: Path, monkeypatch,
                                                      capsys) -> None:
    reads: list[tuple[str, tuple[str, ...]]] = []
    real_read = runner.read_shard

    def spy(path, keys=SHARD_KEYS, data=None):
        reads.append((Path(path).name, tuple(keys)))
        return real_read(path, keys, data)

    monkeypatch.setattr(runner, "read_shard", spy)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    code = main(["run", "--preset", "tiny", "--teacher", FACTORY, "--weights", str(checkpoint), *TEACHER_FLAGS,
                 "--out", str(out), "--device", "cpu",
                 "--set", "synthesis.num_images=8", "--set", "synthesis.batch_size=4",
                 "--set", "synthesis.generator.warmup_batches=1", "--set", "synthesis.generator.warmup_steps=1",
                 "--set", "synthesis.generator.steps=1", "--set", "report.real_test=null",
                 "--set", "search.epochs=1", "--set", "search.batch_size=4", "--set", "train.epochs=1",
                 "--set", "train.batch_size=4", "--set", "train.online.batch_size=4"])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    # the estimate comes before any work: teacher MACs, time, disk and peak memory
    assert "synthesis: 8 images (generator, 2 round(s), batch 4, 224 px on a 280 px canvas, teacher 1,814 " \
           "MMAC/image); about" in err and "peak memory about" in err
    # round 1's targets (2 rounds of one 4-image shard) came from round 0's logits alone; only the sample grid
    # read images (finalize reads targets, logits and rounds through load_checked_shard, one shard at a time)
    assert ("r00_s0000.npz", ("logits",)) in reads
    assert all("images" not in keys or keys == ("images",) for _name, keys in reads)
    space = read_json(out / "export" / "arch.json")["space"]
    assert space["input_size"] == 224 and space["num_classes"] == 1000
    # the sample grid shows at most 16 of the 1,000 classes, unzoomed
    with Image.open(out / "data" / "samples.png") as im:
        assert im.height <= 16 * 282
    grid = runner.save_dataset_grid(out / "data", tmp_path / "grid.png")
    with Image.open(grid) as im:
        assert 282 <= im.height <= 8 * 282  # one row of 280 px tiles (+ padding) per class among 8 images
    assert seconds < 120, seconds
