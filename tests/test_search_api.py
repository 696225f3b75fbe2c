"""run_search: the run directory's files and contents, NAS-Bench-201 ground truth, and clear input errors."""

from __future__ import annotations

import json

import pytest
import torch

from dfnas.config import from_dict
from dfnas.data import ImageSet
from dfnas.errors import ConfigError, DataError, DfnasError
from dfnas.search import DEFAULT_EPOCHS, SearchConfig, run_search
from dfnas.spaces import Arch
from dfnas.spaces.nb201_table import NB201Table
from dfnas.teachers import Teacher, TeacherSpec

FILES = ["arch.json", "arch.txt", "log.jsonl", "checkpoint.pt", "config.json", "result.json", "progress.png"]


def tiny_set(n: int = 24, k: int = 4, labels: torch.Tensor | None = None, seed: int = 0, logits: bool = True,
             size: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size + 2, size + 2), generator=g, dtype=torch.uint8)
    lg = torch.randn(n, k, generator=g) * 3
    if labels is not None:
        lg = torch.nn.functional.one_hot(labels, k).float() * 5
    return ImageSet(images, torch.softmax(lg, 1), size, [str(i) for i in range(k)], lg if logits else None,
                    label_mode="distill" if logits else "hard", info={"source": "tiny", "kind": "test"})


def _cfg(**kw) -> dict:
    base = {"method": "darts", "space": {"name": "nb201", "options": {"C": 2}}, "epochs": 1, "batch_size": 6,
            "eval_max_batches": 1}
    base.update(kw)
    return base


def _table_or_none():
    try:
        return NB201Table.load()
    except Exception:  # noqa: BLE001  (no assets on this machine: those checks are skipped)
        return None


def test_run_search_writes_the_run_directory(tmp_path):
    res = run_search(_cfg(), tiny_set(), tmp_path, device="cpu", progress=False, table_path=tmp_path / "none.csv")
    for f in FILES:
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    arch_json = json.loads((tmp_path / "arch.json").read_text())
    assert Arch.from_json(arch_json["arch"]) == res.arch
    assert arch_json["space"] == {"name": "nb201", "num_classes": 4, "input_size": 8, "C": 2, "N": 1}
    assert (tmp_path / "arch.txt").read_text().strip() == str(res.arch)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["split"] == {"train": 12, "held_out": 12}
    assert cfg["search"]["held_out"] == 0.5 and cfg["search"]["seed"] == 0
    assert cfg["dataset"]["n"] == 24 and len(cfg["dataset"]["fingerprint"]) == 16
    assert "teacher" in cfg["dataset"] and "torch" in cfg["environment"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["macs"] > 0 and result["params"] > 0 and result["search_time_s"] >= 0
    assert result["arch_str"] == str(res.arch)
    assert result["nb201"] is None and "not found" in result["nb201_note"]  # missing table: still a result
    kinds = {json.loads(line)["kind"] for line in (tmp_path / "log.jsonl").read_text().splitlines()}
    assert {"epoch", "done"} <= kinds
    epoch = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "epoch"][0]
    assert set(epoch["alpha"]) == set(res.space.decisions()) and "entropy" in epoch and "held_out_acc" in epoch


def test_result_has_nb201_ground_truth_with_the_table(tmp_path):
    table = _table_or_none()
    if table is None:
        pytest.skip("NAS-Bench-201 table not available")
    res = run_search(_cfg(method="spos", spos={"population": 3, "top_k": 2, "generations": 1, "eval_batches": 1,
                                               "bn_batches": 1}),
                     tiny_set(), tmp_path, device="cpu", progress=False)
    truth = table.lookup(res.arch)
    assert res.result["nb201"]["cifar10"] == truth["cifar10"]
    assert 0 <= res.result["nb201"]["percentile"] <= 100 and res.result["nb201_note"] is None


def test_online_teacher_is_used_and_recorded(tmp_path):
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    for p in net.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g))
    teacher = Teacher(net, TeacherSpec(name="tiny-teacher", num_classes=4, input_size=8))
    run_search(_cfg(method="proxyless"), tiny_set(logits=False), tmp_path, device="cpu", progress=False,
               teacher=teacher)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["online_teacher"]["name"] == "tiny-teacher"
    bad = Teacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(300, 3)),
                  TeacherSpec(name="three", num_classes=3, input_size=8))
    with pytest.raises(DataError, match="3 classes"):
        run_search(_cfg(method="proxyless"), tiny_set(logits=False), tmp_path / "b", device="cpu", progress=False,
                   teacher=bad)


@pytest.mark.parametrize("cfg,match", [
    (_cfg(space={"name": "nasbench101"}), "unknown search space"),
    (_cfg(method="enas"), "unknown search method"),
    (_cfg(method="fixed"), "train_network"),
    (_cfg(held_out=0.0), "held-out"),
    (_cfg(epoch=3), "did you mean 'epochs'"),
    (_cfg(darts={"remedy": "magic"}), "remedy"),
    (_cfg(proxyless={"flops_loss": "mul"}), "target_macs"),
    (_cfg(method="proxyless", epochs=2, proxyless={"warmup_epochs": 2}), "no architecture step"),
    (_cfg(method="darts", epochs=2, darts={"warmup_epochs": 3}), "darts.warmup_epochs=3"),
    (_cfg(space={"name": "nb201", "options": {"depth": 3}}), "unknown option"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, cfg, match):
    with pytest.raises(DfnasError, match=match):  # ConfigError, or ArchError for space options
        run_search(cfg, tiny_set(), tmp_path, device="cpu", progress=False)


@pytest.mark.parametrize("make,cfg,match", [
    (lambda: tiny_set(), _cfg(space={"name": "nb201", "options": {"C": 2, "num_classes": 10}}), "4 classes"),
    (lambda: tiny_set(), _cfg(space={"name": "nb201", "options": {"C": 2, "input_size": 16}}), "8px"),
    (lambda: tiny_set(n=0), _cfg(), "empty"),
    (lambda: tiny_set(labels=torch.zeros(24, dtype=torch.long)), _cfg(), "only 1 class"),
    (lambda: tiny_set(n=3), _cfg(held_out=0.9), "to train on"),
    (lambda: tiny_set(logits=False), _cfg(label_mode="distill"), "logits"),
])
def test_bad_dataset_is_a_clear_error(tmp_path, make, cfg, match):
    with pytest.raises(DataError, match=match):
        run_search(cfg, make(), tmp_path, device="cpu", progress=False)


def test_config_round_trips_and_rejects_unknown_nested_keys():
    cfg = from_dict(SearchConfig, {"method": "spos", "spos": {"max_macs": 1e6}, "space": {"name": "darts"}})
    assert cfg.spos.max_macs == 1e6 and cfg.space.name == "darts"
    with pytest.raises(ConfigError, match="poplation"):
        from_dict(SearchConfig, {"spos": {"poplation": 3}})


def test_resolved_config_fills_default_epochs_and_can_drop_idle_method_blocks():
    cfg = from_dict(SearchConfig, {"method": "proxyless"}, "search")
    full = cfg.resolved()
    assert full["epochs"] == DEFAULT_EPOCHS["proxyless"] and {"darts", "proxyless", "spos"} <= set(full)
    active = cfg.resolved(only_active_method=True)
    assert "proxyless" in active and "darts" not in active and "spos" not in active
    assert active["proxyless"]["warmup_epochs"] is None  # library defaults are filled in, not left out
