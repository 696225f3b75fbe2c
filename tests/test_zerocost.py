"""Zero-cost proxies (values by hand or by an independent formula), the training-free search methods
(registered, resumable, on every space, from the command line) and their bad inputs."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dfnas._cli import search as search_cli
from dfnas.data import ImageSet
from dfnas.errors import ConfigError, DataError, DfnasError
from dfnas.search import SEARCH_METHODS, run_search
from dfnas.search.zerocost import (
    build_proxy,
    candidate_archs,
    combined_scores,
    parse_proxies,
    proxy_batches,
    proxy_names,
    ranks,
    score_arch,
)
from dfnas.search.zerocost import method as zc_method
from dfnas.spaces import build_space
from dfnas.spaces.archfile import read_arch_file
from dfnas.spaces.nb201 import NB201Space


def tiny_set(n: int = 40, k: int = 4, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 10, 10), generator=g, dtype=torch.uint8)
    logits = torch.randn(n, k, generator=g) * 3
    return ImageSet(images, torch.softmax(logits, 1), 8, [str(i) for i in range(k)], logits, label_mode="distill")


def _linear(w: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    t = torch.tensor(w, dtype=torch.float32)
    m = nn.Linear(t.shape[1], t.shape[0], bias=bias is not None)
    with torch.no_grad():
        m.weight.copy_(t)
        if bias is not None:
            m.bias.copy_(torch.tensor(bias))
    return m


# --------------------------------------------------------------------------------------------------------
# the proxies against values computed by hand / by an independent formula
# --------------------------------------------------------------------------------------------------------

def test_naswot_one_relu_layer_by_hand():
    net = nn.Sequential(_linear([[1, 0], [0, 1], [1, -1]]), nn.ReLU())
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [2.0, -1.0]])
    # pre-activations (1, 2, -1), (-1, 1, -2), (2, -1, 3) -> codes 110, 010, 101; K = 3 - Hamming distance
    # K = [[3, 2, 1], [2, 3, 0], [1, 0, 3]], det K = 27 - 12 - 3 = 12
    assert build_proxy("naswot").score(net, x, torch.zeros(3)) == pytest.approx(math.log(12.0))
    # two images with the same code: K singular, the worst score
    same = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    assert build_proxy("naswot").score(net, same, torch.zeros(2)) == -math.inf


def test_synflow_two_linear_layers_closed_form():
    w1, w2 = [[1.0, -2.0, 0.5], [-1.0, 3.0, 2.0]], [[-2.0, 0.5]]
    net = nn.Sequential(_linear(w1), _linear(w2))
    # R = 1^T |W2| |W1| 1 = 2 * 3.5 + 0.5 * 6 = 10; each layer's sum of |theta * dR/dtheta| equals R
    assert build_proxy("synflow").score(net, torch.randn(5, 3), torch.zeros(5)) == pytest.approx(20.0)
    assert torch.equal(net[0].weight, torch.tensor(w1))  # the caller's network is not modified


def _two_layer(seed: int = 0) -> tuple[nn.Sequential, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1, b1, w2, b2 = rng.normal(size=(5, 4)), rng.normal(size=5), rng.normal(size=(3, 5)), rng.normal(size=3)
    net = nn.Sequential(_linear(w1.tolist(), b1.tolist()), nn.ReLU(), _linear(w2.tolist(), b2.tolist()))
    return net, w1, b1, w2, b2


def test_jacob_cov_matches_numpy_formula():
    net, w1, b1, w2, _ = _two_layer()
    x = np.random.default_rng(1).normal(size=(6, 4))
    # d(sum of outputs)/dx for one image = W1^T diag(1[W1 x + b1 > 0]) W2^T 1
    jac = np.stack([w1.T @ ((w1 @ xi + b1 > 0) * (w2.T @ np.ones(3))) for xi in x])
    ev = np.linalg.eigvalsh(np.corrcoef(jac))
    want = -np.sum(np.log(ev + 1e-5) + 1.0 / (ev + 1e-5))
    got = build_proxy("jacob_cov").score(net, torch.tensor(x, dtype=torch.float32), torch.zeros(6))
    assert got == pytest.approx(want, rel=1e-3)


def test_snip_and_grad_norm_match_the_cross_entropy_gradient():
    rng = np.random.default_rng(2)
    w, x, y = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), np.array([0, 2, 1, 1, 0])
    z = x @ w.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(3)[y]).T @ x / len(x)  # dL/dW of the mean cross-entropy, (3, 4)
    net = nn.Sequential(_linear(w.tolist()))
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    assert build_proxy("snip").score(net, xt, yt) == pytest.approx(np.abs(w * g).sum(), rel=1e-4)
    assert build_proxy("grad_norm").score(net, xt, yt) == pytest.approx(np.linalg.norm(g), rel=1e-4)
    assert net[0].weight.grad is None  # gradients were taken on a copy


def test_params_and_flops_by_counting():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.zeros(2, 3, 5, 5)
    assert build_proxy("params").score(net, x, torch.zeros(2)) == 3 * 4 * 9 + 4 + 4 * 2 + 2
    assert build_proxy("flops").score(net, x, torch.zeros(2)) == 4 * 5 * 5 * 27 + 2 * 4  # MACs of one image


def test_nb201_all_none_cell_scores_lowest_and_scores_are_deterministic():
    space = NB201Space(num_classes=4, input_size=8, C=2, N=1)
    ds = tiny_set()
    batches = proxy_batches(ds, 8, 2, torch.Generator().manual_seed(0), proxies=["naswot"])
    none = NB201Space.parse("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    conv = NB201Space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
                            "nor_conv_3x3~1|nor_conv_3x3~2|")
    s_none = score_arch(space, none, proxy_names(), batches, seed=0)
    s_conv = score_arch(space, conv, proxy_names(), batches, seed=0)
    assert s_none["naswot"] == -math.inf and math.isfinite(s_conv["naswot"])
    assert s_none["jacob_cov"] == -math.inf and s_conv["synflow"] > s_none["synflow"]
    assert score_arch(space, conv, proxy_names(), batches, seed=0) == s_conv


def test_ranks_and_combined_scores():
    assert ranks([3.0, -math.inf, 3.0, 1.0]) == [2.5, 0.0, 2.5, 1.0]
    scores = [{"a": 1.0, "b": 30.0}, {"a": 2.0, "b": 10.0}, {"a": 3.0, "b": 20.0}]
    assert combined_scores(scores, ["a", "b"]) == [2.0, 1.0, 3.0]
    assert combined_scores(scores, ["b"]) == [30.0, 10.0, 20.0]


def test_candidates_cover_the_whole_nb201_space_when_asked_for_more():
    space = NB201Space(C=2, N=1)
    archs = candidate_archs(space, 20_000, torch.Generator().manual_seed(0))
    assert len(archs) == 5 ** 6 and len({str(a) for a in archs}) == 5 ** 6
    few = candidate_archs(space, 7, torch.Generator().manual_seed(0))
    assert len({str(a) for a in few}) == 7 and few == candidate_archs(space, 7, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------------
# the search methods
# --------------------------------------------------------------------------------------------------------

def _cfg(method: str = "naswot", **zc) -> dict:
    return {"method": method, "space": {"name": "nb201", "options": {"C": 2}}, "batch_size": 8,
            "zerocost": {"candidates": 6, "batch_size": 8, **zc}}


def test_methods_registered_for_every_proxy():
    for p in proxy_names():
        assert p in SEARCH_METHODS
    assert "zerocost" in SEARCH_METHODS


def test_search_writes_the_usual_run_directory(tmp_path):
    res = run_search(_cfg(), tiny_set(), tmp_path / "s", device="cpu", progress=False)
    assert (tmp_path / "s" / "arch.json").is_file() and res.result["weight_steps"] == 0
    arch, space_cfg = read_arch_file(tmp_path / "s" / "arch.json")  # what `dfnas train` / `export` read
    assert arch == res.arch and space_cfg["C"] == 2
    lines = (tmp_path / "s" / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 6
    best = max(json.loads(ln)["scores"]["naswot"] for ln in lines)
    assert res.result["zerocost"]["best_score"] == pytest.approx(best)
    kinds = [json.loads(ln)["kind"] for ln in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert kinds.count("candidate") == 6 and kinds[-1] == "done"
    # the generic method with the same proxy finds the same cell; a combination runs too
    same = run_search(_cfg("zerocost", proxy="naswot"), tiny_set(), tmp_path / "z", device="cpu", progress=False)
    assert same.arch == res.arch
    both = run_search(_cfg("zerocost", proxy="naswot+synflow"), tiny_set(), tmp_path / "c", device="cpu",
                      progress=False)
    assert both.result["zerocost"]["proxies"] == ["naswot", "synflow"]


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch):
    ref = run_search(_cfg(), tiny_set(), tmp_path / "ref", device="cpu", progress=False)
    real = zc_method.score_arch
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(zc_method, "score_arch", dying)
    with pytest.raises(KeyboardInterrupt):
        run_search(_cfg(), tiny_set(), tmp_path / "run", device="cpu", progress=False)
    path = tmp_path / "run" / "scores.jsonl"
    assert len(path.read_text().splitlines()) == 3 and not (tmp_path / "run" / "arch.json").exists()
    with open(path, "a") as fh:
        fh.write('{"i": 3, "arch": "cut sh')  # a line cut short by the kill
    monkeypatch.setattr(zc_method, "score_arch", real)
    calls["n"] = 0
    res = run_search(_cfg(), tiny_set(), tmp_path / "run", device="cpu", progress=False)
    assert res.arch == ref.arch

    def scores(p):
        return {r["i"]: r["scores"] for r in map(json.loads, p.read_text().splitlines()[:3] +
                                                 p.read_text().splitlines()[4:])}
    assert scores(path) == {r["i"]: r["scores"] for r in
                            map(json.loads, (tmp_path / "ref" / "scores.jsonl").read_text().splitlines())}
    assert any(json.loads(ln).get("kind") == "resume" for ln in (tmp_path / "run" / "log.jsonl").open())


def _run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dfnas")
    search_cli.register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


def _npz(path, n=24, size=8, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), labels=np.arange(n) % 3)
    return str(path)


SPACES = {
    "nb201": ["space.C=2"],
    "darts": ["space.C=2", "space.layers=3"],
    "proxyless": ["space.width_mult=0.1", "space.layers_per_stage=[1,1,1,1,1]"],
    "spos": ["space.width_mult=0.25", "space.layers=[1,1,1,1]"],
}


@pytest.mark.parametrize("space", list(SPACES))
def test_cli_search_on_every_space(tmp_path, capsys, space):
    data = _npz(tmp_path / "d.npz")
    sets = [x for s in SPACES[space] for x in ("--set", s)]
    code = _run_cli(["search", "--data", data, "--out", str(tmp_path / "s"), "--method", "naswot", "--space", space,
                     "--quiet", "--set", "zerocost.candidates=3", "--set", "zerocost.batch_size=6", *sets,
                     "--nb201-table", str(tmp_path / "missing.csv")])
    assert code == 0 and f"naswot on {space}" in capsys.readouterr().out
    arch, _ = read_arch_file(tmp_path / "s" / "arch.json")
    assert arch.space == space


# --------------------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------------------

def test_unknown_proxy_or_method_lists_the_valid_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown zero-cost proxy 'nasbot'.*naswot.*synflow"):
        run_search(_cfg("zerocost", proxy="nasbot"), tiny_set(), tmp_path / "a", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="unknown search method 'naswat'.*jacob_cov.*naswot"):
        run_search(_cfg("naswat"), tiny_set(), tmp_path / "b", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="method 'naswot' scores with proxy 'naswot'.*zerocost.proxy=synflow"):
        run_search(_cfg("naswot", proxy="synflow"), tiny_set(), tmp_path / "c", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="names a proxy twice"):
        parse_proxies("naswot+naswot")


def test_dataset_too_small_for_the_proxy_batch(tmp_path):
    with pytest.raises(DataError, match=r"20 images, too few for 2 proxy batch\(es\) of 16.*naswot"):
        run_search(_cfg(batch_size=16, batches=2), tiny_set(), tmp_path / "s", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="at least 2 images"):
        run_search(_cfg(batch_size=1), tiny_set(), tmp_path / "t", device="cpu", progress=False)


def test_torchrun_search_refuses_a_training_free_method(tmp_path):
    from dfnas.distributed import DistContext

    with pytest.raises(DfnasError, match="'naswot' is training-free.*without torchrun"):
        run_search(_cfg(), tiny_set(), tmp_path / "s", device="cpu", progress=False,
                   dist=DistContext(rank=0, world_size=2))


def test_network_the_proxy_cannot_score():
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(DfnasError, match="'naswot' needs ReLU activations"):
        build_proxy("naswot").score(net, torch.randn(4, 4), torch.zeros(4))
    space = build_space("nb201", C=2, N=1, num_classes=4, input_size=8)
    with pytest.raises(DfnasError, match="not 'nb201'"):
        score_arch(space, build_space("darts", C=2, layers=3).sample(torch.Generator().manual_seed(0)),
                   ["naswot"], [(torch.zeros(2, 3, 8, 8), torch.zeros(2))], seed=0)


# --------------------------------------------------------------------------------------------------------
# the benchmark's training-free part (smoke budget)
# --------------------------------------------------------------------------------------------------------

def test_ranking_benchmark_zerocost_smoke_runs_and_resumes(tmp_path):
    import importlib
    import sys
    from pathlib import Path

    from dfnas.assets import asset_path, nb201_table_path

    if asset_path("cifar10", "jpeg", "train") is None or nb201_table_path() is None:
        pytest.skip("shared assets (CIFAR-10 JPEG, NAS-Bench-201 table) not found")
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    rc = importlib.import_module("ranking_consistency")
    args = ["--budget", "smoke", "--zerocost", "--sources", "noise", "--threads", "0", "--quiet",
            "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]
    assert rc.main(args) == 0
    summary = json.loads((tmp_path / "out" / "ranking_consistency_zerocost_smoke.json").read_text())
    assert set(summary["rank"]["noise"]) >= set(proxy_names())
    assert summary["search"] == {}  # the smoke budget searches on 'full' only
    cell = tmp_path / "w" / "smoke" / "ranking_consistency" / "cells" / "noise" / "zerocost" / "cell00.json"
    before = cell.stat().st_mtime_ns
    assert rc.main(args) == 0  # finished cells are read back, not recomputed
    assert cell.stat().st_mtime_ns == before
