"""``spos.supernet_from``: a SPOS search on a finished run's supernet equals one that retrains it, trains nothing,
and refuses a run whose supernet was trained under another configuration."""

from __future__ import annotations

import json

import pytest
import torch
from test_search_resume import _cfg, tiny_set

from dfnas.errors import ConfigError
from dfnas.search import run_search

OTHER_EVOLUTION = {"population": 6, "top_k": 3, "generations": 2, "bn_batches": 2, "eval_batches": 1,
                   "score": "loss"}


def _spos(evolution: dict | None = None, **kw) -> dict:
    cfg = _cfg("spos", **kw)
    if evolution is not None:
        cfg["spos"] = evolution
    return cfg


def _records(path, kind):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def test_reused_supernet_gives_the_search_that_retraining_gives_and_trains_nothing(tmp_path):
    ds = tiny_set()
    donor = run_search(_spos(), ds, tmp_path / "donor", device="cpu", progress=False)
    retrained = run_search(_spos(OTHER_EVOLUTION), ds, tmp_path / "retrained", device="cpu", progress=False)
    reused = run_search(_spos({**OTHER_EVOLUTION, "supernet_from": str(tmp_path / "donor")}), ds,
                        tmp_path / "reused", device="cpu", progress=False)

    # same weights, so the new evolution scores every candidate exactly as after retraining
    assert reused.arch == retrained.arch
    assert reused.result["spos"] == retrained.result["spos"]
    assert reused.result["weight_steps"] == donor.result["weight_steps"] == retrained.result["weight_steps"]
    for k, v in retrained.model.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):  # BN: last candidate's
            assert torch.equal(reused.model.state_dict()[k], v), k
    log = tmp_path / "reused" / "log.jsonl"
    assert not _records(log, "step") and not _records(log, "epoch")  # no weight step was taken
    assert len(_records(log, "generation")) == OTHER_EVOLUTION["generations"]
    origin = reused.result["supernet_from"]
    donor_record = json.loads((tmp_path / "donor" / "config.json").read_text())
    assert origin["config_hash"] == donor_record["config_hash"]
    assert origin["weight_steps"] == donor.result["weight_steps"]
    donor_epochs = sum(r["epoch_seconds"] for r in _records(tmp_path / "donor" / "log.jsonl", "epoch"))
    assert origin["training_seconds"] == pytest.approx(donor_epochs)
    assert reused.result["search_time_s"] >= round(donor_epochs, 2)  # the supernet's training time counts
    # finished: a rerun returns it without work, and the donor is untouched
    again = run_search(_spos({**OTHER_EVOLUTION, "supernet_from": str(tmp_path / "donor")}), ds,
                       tmp_path / "reused", device="cpu", progress=False)
    assert again.arch == reused.arch
    assert run_search(_spos(), ds, tmp_path / "donor", device="cpu", progress=False).arch == donor.arch


def test_reuse_is_refused_for_another_supernet_configuration_or_an_unfinished_run(tmp_path):
    ds = tiny_set()
    run_search(_spos(), ds, tmp_path / "donor", device="cpu", progress=False)
    reuse = {**OTHER_EVOLUTION, "supernet_from": str(tmp_path / "donor")}
    cases = [
        (_spos(reuse, lr=0.05), ds, "trained its supernet under another configuration .*lr"),
        (_spos(reuse, seed=1), ds, "another configuration .*seed"),
        (_spos({**reuse, "sampling": "fair"}), ds, "another configuration .*sampling"),
        (_spos(reuse), tiny_set(seed=1), "another configuration .*dataset"),
        (_spos({**reuse, "supernet_from": str(tmp_path / "nowhere")}), ds,
         "spos.supernet_from .*nowhere.* is not a search run directory"),
    ]
    for i, (cfg, data, match) in enumerate(cases):
        with pytest.raises(ConfigError, match=match):
            run_search(cfg, data, tmp_path / f"refused{i}", device="cpu", progress=False)
        assert not (tmp_path / f"refused{i}" / "checkpoint.pt").exists()  # nothing half-made to resume from

    darts = run_search(_cfg("darts"), ds, tmp_path / "darts", device="cpu", progress=False)
    assert darts.arch is not None
    with pytest.raises(ConfigError, match="is a 'darts' run; only a 'spos' run's supernet can be reused"):
        run_search(_spos({**reuse, "supernet_from": str(tmp_path / "darts")}), ds, tmp_path / "r_darts",
                   device="cpu", progress=False)

    # a donor killed mid-training: its checkpoint is still in the train phase
    ck = torch.load(tmp_path / "donor" / "checkpoint.pt", weights_only=True)
    ck["phase"] = "train"
    torch.save(ck, tmp_path / "donor" / "checkpoint.pt")
    with pytest.raises(ConfigError, match="has not finished training its supernet"):
        run_search(_spos(reuse), ds, tmp_path / "r_unfinished", device="cpu", progress=False)


def test_training_seconds_count_each_epoch_once_and_survive_a_cut_line(tmp_path):
    from dfnas.search.reuse import training_seconds

    log = tmp_path / "log.jsonl"
    assert training_seconds(log) is None
    lines = [{"kind": "epoch", "epoch": 0, "epoch_seconds": 2.0}, {"kind": "step", "step": 3},
             {"kind": "epoch", "epoch": 0, "epoch_seconds": 3.0},  # epoch 0 again after a resume: its last record
             {"kind": "epoch", "epoch": 1, "epoch_seconds": 4.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "ep')  # killed mid-line
    assert training_seconds(log) == 7.0
