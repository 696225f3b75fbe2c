"""A killed search resumes where it stopped and ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from dfnas.data import ImageSet
from dfnas.errors import DfnasError
from dfnas.search import LoopInterrupted, run_search
from dfnas.search.spos import evolution as evolution_mod


def tiny_set(n: int = 56, k: int = 4, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 10, 10), generator=g, dtype=torch.uint8)
    logits = torch.randn(n, k, generator=g) * 3
    return ImageSet(images, torch.softmax(logits, 1), 8, [str(i) for i in range(k)], logits, label_mode="distill")


def _cfg(method: str, **kw) -> dict:
    base = {"method": method, "space": {"name": "nb201", "options": {"C": 2}}, "epochs": 2, "batch_size": 8,
            "checkpoint_every_steps": 2, "log_every_steps": 1, "eval_max_batches": 1,
            "darts": {"arch_lr": 0.05}, "proxyless": {"arch_lr": 0.05},
            "spos": {"population": 4, "top_k": 2, "generations": 3, "bn_batches": 1, "eval_batches": 1}}
    base.update(kw)
    return base


def _assert_same(a, b, path="ckpt"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            if k != "elapsed_s":
                _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _stop_at(step: int):
    def hook(ctx):
        if ctx.step == step:
            raise LoopInterrupted(f"killed at step {step}")
    return hook


@pytest.mark.parametrize("method", ["darts", "proxyless", "spos", "spos-fair", "proxyless-fair-identity",
                                    "proxyless-fair-averaged", "proxyless-fair-both"])
def test_kill_then_resume_is_bitwise_identical(tmp_path, method):
    ds = tiny_set()
    if method == "spos-fair":  # strict-fairness sampling: several paths per weight step
        method_cfg = _cfg("spos")
        method_cfg["spos"] = {**method_cfg["spos"], "sampling": "fair"}
        _cfg_m = lambda: method_cfg  # noqa: E731
    elif method == "proxyless-fair-identity":  # fair weight paths on identity-started candidates
        method_cfg = _cfg("proxyless", candidate_init="identity")
        method_cfg["proxyless"] = {**method_cfg["proxyless"], "sampling": "fair"}
        _cfg_m = lambda: method_cfg  # noqa: E731
    elif method in ("proxyless-fair-averaged", "proxyless-fair-both"):  # the measured derivation on the weights
        # averaged over the steps (both: and on the last ones, the better whole cell)
        method_cfg = _cfg("proxyless", candidate_init="identity")
        method_cfg["proxyless"] = {**method_cfg["proxyless"], "sampling": "fair", "derive": "measured",
                                   "derive_paths": 2, "derive_weights": method.rsplit("-", 1)[1],
                                   "average_from": 0.2}
        _cfg_m = lambda: method_cfg  # noqa: E731
    else:
        _cfg_m = lambda: _cfg(method)  # noqa: E731
    ref = run_search(_cfg_m(), ds, tmp_path / "ref", device="cpu", progress=False)
    # 28 training images, batch 8: 3 steps per epoch. Killed after step 3 (before the epoch-end checkpoint):
    # the last checkpoint is mid-epoch (step 2), so the resume replays the epoch's data stream and redoes step 3
    with pytest.raises(LoopInterrupted):
        run_search(_cfg_m(), ds, tmp_path / "run", device="cpu", progress=False, on_step=_stop_at(3))
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (2, 0, 2)
    res = run_search(_cfg_m(), ds, tmp_path / "run", device="cpu", progress=False)
    assert res.arch == ref.arch
    _assert_same(torch.load(ref.out_dir / "checkpoint.pt", weights_only=True),
                 torch.load(res.out_dir / "checkpoint.pt", weights_only=True))
    log = [json.loads(line) for line in (res.out_dir / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "resume" and r["step"] == 2 for r in log)


def test_kill_during_evolution_resumes_at_the_next_generation(tmp_path, monkeypatch):
    ds = tiny_set()
    ref = run_search(_cfg("spos"), ds, tmp_path / "ref", device="cpu", progress=False)
    real = evolution_mod.Evolution.next_population
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 2:  # generation 0 is done and checkpointed; die while making generation 2
            raise LoopInterrupted("killed during evolution")
        return real(self)

    monkeypatch.setattr(evolution_mod.Evolution, "next_population", flaky)
    with pytest.raises(LoopInterrupted):
        run_search(_cfg("spos"), ds, tmp_path / "run", device="cpu", progress=False)
    monkeypatch.setattr(evolution_mod.Evolution, "next_population", real)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["phase"] == "finalize" and ck["method"]["evolution"]["generation"] == 1
    res = run_search(_cfg("spos"), ds, tmp_path / "run", device="cpu", progress=False)
    assert res.arch == ref.arch and res.result["spos"]["best_score"] == ref.result["spos"]["best_score"]
    again = run_search(_cfg("spos"), ds, tmp_path / "run", device="cpu", progress=False)  # finished: no rework
    assert again.arch == res.arch and again.result["spos"] == res.result["spos"]


def test_changed_config_is_refused_and_finished_run_is_returned(tmp_path):
    ds = tiny_set()
    first = run_search(_cfg("darts"), ds, tmp_path, device="cpu", progress=False)
    with pytest.raises(DfnasError, match="epochs"):
        run_search(_cfg("darts", epochs=3), ds, tmp_path, device="cpu", progress=False)
    with pytest.raises(DfnasError, match="fingerprint"):
        run_search(_cfg("darts"), tiny_set(seed=1), tmp_path, device="cpu", progress=False)
    n_lines = len((tmp_path / "log.jsonl").read_text().splitlines())
    again = run_search(_cfg("darts", checkpoint_every_steps=0), ds, tmp_path, device="cpu", progress=False)
    assert again.arch == first.arch
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == n_lines  # nothing was retrained
