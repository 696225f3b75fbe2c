"""train_network: trains a found architecture with the shared loop, saves it, evaluates on test images."""

from __future__ import annotations

import json

import pytest
import torch

from dfnas.data import ImageSet
from dfnas.errors import ArchError, DataError
from dfnas.spaces import build_space
from dfnas.train import evaluate, train_network

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
SPACE = {"name": "nb201", "C": 4, "N": 1}


def colour_set(n: int, seed: int, k: int = 2) -> ImageSet:
    """Class c images are noisy but dominated by colour channel c: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.rand(n, 3, 8, 8, generator=g) * 0.5
    x[torch.arange(n), y] += 0.5
    images = (x * 255).round().to(torch.uint8)
    return ImageSet(images, torch.nn.functional.one_hot(y, k).float(), 8, [f"c{i}" for i in range(k)],
                    label_mode="hard", info={"source": f"colour-{seed}", "kind": "real"})


def _arch():
    return build_space("nb201").parse(ARCH)


def test_train_network_learns_saves_and_evaluates(tmp_path):
    cfg = {"epochs": 4, "batch_size": 16, "lr": 0.1, "held_out": 0.25}
    res = train_network(cfg, _arch(), SPACE, colour_set(96, 0), tmp_path, device="cpu",
                        test_data=colour_set(64, 1), progress=False)
    for f in ("model.pt", "result.json", "config.json", "log.jsonl", "checkpoint.pt", "progress.png"):
        assert (tmp_path / f).is_file(), f
    assert res["test_top1"] >= 90.0 and res["test_n"] == 64  # the colour task is easy: training works
    assert json.loads((tmp_path / "result.json").read_text())["test_top1"] == res["test_top1"]
    # model.pt is the plain network's state dict: it loads strictly and reproduces the reported accuracy
    space = build_space("nb201", num_classes=2, input_size=8, C=4, N=1)
    net = space.build_network(_arch())
    net.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    assert evaluate(net, colour_set(64, 1)) == res["test_top1"]
    assert res["macs"] > 0 and res["params"] == sum(p.numel() for p in net.parameters())
    # rerunning the finished run returns its result without training again
    n_lines = len((tmp_path / "log.jsonl").read_text().splitlines())
    again = train_network(cfg, _arch(), SPACE, colour_set(96, 0), tmp_path, device="cpu",
                          test_data=colour_set(64, 1), progress=False)
    assert again["test_top1"] == res["test_top1"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == n_lines


def test_evaluate_counts_hard_labels():
    ds = colour_set(10, 0)  # labels alternate 0, 1

    class AlwaysZero(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1)

    assert evaluate(AlwaysZero(), ds, batch_size=3) == pytest.approx(50.0)


def test_train_network_rejects_foreign_arch_and_mismatched_test_set(tmp_path):
    with pytest.raises(ArchError):
        train_network({"epochs": 1}, _arch(), {"name": "darts", "C": 2, "layers": 3}, colour_set(16, 0),
                      tmp_path / "a", device="cpu", progress=False)
    three = colour_set(12, 2, k=3)
    with pytest.raises(DataError, match="test set"):
        train_network({"epochs": 1}, _arch(), SPACE, colour_set(16, 0), tmp_path / "b", device="cpu",
                      test_data=three, progress=False)
