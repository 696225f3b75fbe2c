"""Online data-free training: a replay bank the generator refreshes every epoch, resumable after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dfnas.data import read_synthetic
from dfnas.search.loop import LoopInterrupted
from dfnas.spaces import build_space
from dfnas.synthesis import make_config, synthesize
from dfnas.synthesis.toy import toy_teacher
from dfnas.train import train_network

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
SPACE = {"name": "nb201", "C": 4, "N": 1}
CFG = {"epochs": 3, "batch_size": 8, "lr": 0.05, "online": {"refresh_fraction": 0.25, "batch_size": 4}}


@pytest.fixture(scope="module")
def teacher():
    return toy_teacher(num_classes=4, input_size=8, seed=0)


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory, teacher) -> Path:
    cfg = make_config("tiny", ["plots=false", "method=generator", "generator.warmup_batches=1",
                               "generator.warmup_steps=2", "generator.width=4", "generator.latent_dim=8"])
    return synthesize(cfg, tmp_path_factory.mktemp("online") / "data", teacher=teacher, device="cpu", progress=False)


def _arch():
    return build_space("nb201").parse(ARCH)


def _train(out: Path, data: Path, teacher, cfg=None, **kw):
    return train_network(cfg or CFG, _arch(), SPACE, data, out, device="cpu", progress=False, teacher=teacher, **kw)


def test_online_training_refreshes_the_bank(tmp_path: Path, gen_data: Path, teacher) -> None:
    res = _train(tmp_path / "run", gen_data, teacher)
    assert res["online_synthesis"] is True and res["images_made_online"] == 3 * 4  # 25 % of 16 per epoch
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    online = [r for r in recs if r.get("kind") == "online_synthesis"]
    assert [r["epoch"] for r in online] == [0, 1, 2] and all(r["new_images"] == 4 for r in online)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    bank = ck["data_source"]
    original = read_synthetic(gen_data)
    # 12 of the 16 slots hold new images (round 2 = made online), the other 4 are still the dataset's
    assert int((bank["rounds"] == 2).sum()) == 12
    assert torch.equal(bank["images"][12:], original.images[12:])
    assert not torch.equal(bank["images"][:12], original.images[:12])
    ident = json.loads((tmp_path / "run" / "config.json").read_text())["identity"]
    assert ident["online"]["enabled"] is True and ident["online"]["adv_weight"] == 1.0


def test_online_training_resumes_after_a_kill_to_the_same_weights(tmp_path: Path, gen_data: Path, teacher) -> None:
    ref = _train(tmp_path / "ref", gen_data, teacher)

    def kill(ctx) -> None:
        if ctx.step == 3:  # mid-epoch 1 (2 steps per epoch of 16 images at batch 8), after a refresh
            raise LoopInterrupted

    cfg = {**CFG, "checkpoint_every_steps": 1}
    with pytest.raises(LoopInterrupted):
        _train(tmp_path / "killed", gen_data, teacher, cfg=cfg, on_step=kill)
    res = _train(tmp_path / "killed", gen_data, teacher, cfg=cfg)
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res["images_made_online"] == ref["images_made_online"]


def test_online_off_for_real_data_and_when_disabled(tmp_path: Path, gen_data: Path, teacher) -> None:
    res = _train(tmp_path / "off", gen_data, teacher, cfg={**CFG, "online": {"enabled": False}})
    assert res["online_synthesis"] is False and res["images_made_online"] == 0
    assert "online" not in json.loads((tmp_path / "off" / "config.json").read_text())["identity"]
