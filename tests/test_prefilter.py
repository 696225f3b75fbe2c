"""The zero-cost pre-filter of the supernet searches: the restricted space, the options it keeps (checked
against the proxy scores recomputed independently), the search on it, its identity and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from test_zerocost import tiny_set

from dfnas.config import from_dict
from dfnas.errors import ArchError, ConfigError, DataError
from dfnas.repro import make_generator
from dfnas.search import SearchConfig, run_search
from dfnas.search.zerocost import candidate_archs, combined_scores, proxy_batches, score_arch
from dfnas.search.zerocost.prefilter import PrefilterConfig, prefilter_space
from dfnas.spaces import build_space
from dfnas.spaces.base import restrict_space

ALLOWED = {"1<-0": ["nor_conv_3x3", "skip_connect"], "2<-0": ["nor_conv_1x1"], "2<-1": ["avg_pool_3x3", "none"],
           "3<-0": ["skip_connect"], "3<-1": ["nor_conv_3x3", "nor_conv_1x1"], "3<-2": ["nor_conv_3x3"]}


def test_restricted_space_offers_only_the_allowed_options():
    space = build_space("nb201", C=2, N=1)
    r = restrict_space(space, ALLOWED)
    dec = r.decisions()
    assert dec["1<-0"] == ["skip_connect", "nor_conv_3x3"]  # the space's own order, not the caller's
    assert {k: sorted(v) for k, v in dec.items()} == {k: sorted(v) for k, v in ALLOWED.items()}
    assert space.decisions()["1<-0"] == ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = r.sample(g)
        assert all(a[k] in ALLOWED[k] for k in ALLOWED) and r.name == "nb201"
        assert r.parse(r.format(a)) == a
    net = r.build_supernet()
    for _, c in net.choices():
        assert c.options == dec[c.key] and sorted(c.candidates) == sorted(dec[c.key])
    outside = space.parse("|none~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    with pytest.raises(ArchError, match="1<-0"):
        r.check(outside)
    space.check(outside)  # the full space is unchanged
    assert r.config() == space.config()


def test_restrict_space_rejects_bad_allowed_options():
    space = build_space("nb201", C=2, N=1)
    with pytest.raises(ArchError, match="every decision"):
        restrict_space(space, {"1<-0": ["skip_connect"]})
    with pytest.raises(ArchError, match="'2<-0'"):
        restrict_space(space, {**ALLOWED, "2<-0": ["conv_7x7"]})
    with pytest.raises(ArchError, match="'3<-0'"):
        restrict_space(space, {**ALLOWED, "3<-0": []})


def test_prefilter_keeps_the_options_whose_candidates_rank_best():
    space, ds = build_space("nb201", C=2, N=1), tiny_set()
    cfg = PrefilterConfig(proxy="naswot+synflow", candidates=12, keep=2, batch_size=8)
    restricted, rec = prefilter_space(space, ds, cfg, seed=3, device=torch.device("cpu"), progress=False)
    # recompute independently: the same candidates and batches as the training-free search, mean rank per option
    archs = candidate_archs(space, 12, make_generator(3, "zerocost", "candidates"))
    batches = proxy_batches(ds, 8, 1, make_generator(3, "zerocost", "batches"), "cpu", ["naswot", "synflow"])
    scores = [score_arch(space, a, ["naswot", "synflow"], batches, 3, "cpu") for a in archs]
    comb = combined_scores(scores, ["naswot", "synflow"])
    order = sorted(range(len(archs)), key=lambda i: comb[i])
    rank = {i: float(r) for r, i in enumerate(order)}  # no ties expected among 12 scored cells
    for k, opts in space.decisions().items():
        mean = {o: sum(rank[i] for i, a in enumerate(archs) if a[k] == o) /
                max(1, sum(a[k] == o for a in archs)) if any(a[k] == o for a in archs) else -1.0 for o in opts}
        want = sorted(opts, key=lambda o: -mean[o])[:2]
        assert sorted(rec["allowed"][k]) == sorted(want), k
        assert sorted(restricted.decisions()[k]) == sorted(want)
    assert rec["best_candidate"] == str(archs[max(range(len(archs)), key=lambda i: (comb[i], -i))])


def _cfg(method: str, **extra) -> dict:
    return {"method": method, "space": {"name": "nb201", "options": {"C": 2}}, "batch_size": 8, "epochs": 1,
            "max_steps": 3, "eval_max_batches": 1,
            "prefilter": {"proxy": "naswot+synflow", "candidates": 8, "batch_size": 8}, **extra}


@pytest.mark.parametrize("method", ["proxyless", "darts", "spos"])
def test_search_on_the_prefiltered_space(tmp_path, method):
    extra = {"spos": {"population": 4, "top_k": 2, "generations": 1, "bn_batches": 1, "eval_batches": 1}}
    res = run_search(_cfg(method, **(extra if method == "spos" else {})), tiny_set(), tmp_path / "s",
                     device="cpu", progress=False)
    pf = res.result["prefilter"]
    assert all(res.arch[k] in pf["allowed"][k] and len(pf["allowed"][k]) == 2 for k in pf["allowed"])
    assert pf["best_candidate_nb201"]["cifar10"] > 0  # the pre-filter's own pick, looked up beside the search's
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["identity"]["prefilter"]["proxy"] == "naswot+synflow"
    # the same command resumes (finished: same result) with the pre-filter recomputed identically
    again = run_search(_cfg(method, **(extra if method == "spos" else {})), tiny_set(), tmp_path / "s",
                       device="cpu", progress=False)
    assert again.arch == res.arch and again.result["prefilter"]["allowed"] == pf["allowed"]


def test_searches_without_the_prefilter_keep_their_identity():
    cfg = from_dict(SearchConfig, {"method": "proxyless"}, "search")
    assert "prefilter" not in cfg.resolved(only_active_method=True)
    on = from_dict(SearchConfig, {"method": "proxyless", "prefilter": {"proxy": "synflow"}}, "search")
    assert on.resolved(only_active_method=True)["prefilter"]["proxy"] == "synflow"


def test_prefilter_bad_input():
    with pytest.raises(ConfigError, match="training-free"):
        from_dict(SearchConfig, {"method": "naswot", "prefilter": {"proxy": "synflow"}}, "search").check()
    with pytest.raises(ConfigError, match="naswot"):  # an unknown proxy lists the valid ones
        PrefilterConfig(proxy="nawsot")
    with pytest.raises(ConfigError, match="prefilter.keep"):
        PrefilterConfig(proxy="synflow", keep=0)
    with pytest.raises(DataError, match="prefilter.batch_size"):  # names the block the sizes come from
        prefilter_space(build_space("nb201", C=2, N=1), tiny_set(n=20), PrefilterConfig(proxy="synflow"),
                        0, torch.device("cpu"), progress=False)
    with pytest.raises(ConfigError, match="keeps every option"):
        prefilter_space(build_space("nb201", C=2, N=1), tiny_set(), PrefilterConfig(proxy="synflow", keep=5),
                        0, torch.device("cpu"), progress=False)


def test_restricted_darts_space_keeps_none_and_samples_and_derives_within_it():
    space = build_space("darts", C=2, layers=3)
    allowed = {k: ["sep_conv_3x3", "skip_connect"] for k in space.decisions()}
    r = restrict_space(space, allowed)
    assert all(v == ["none", "skip_connect", "sep_conv_3x3"] for v in r.decisions().values())  # 'none' kept
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        a = r.sample(g)
        r.check(a)  # 2 non-'none' inputs per node, every op among the kept ones
    # derive reads the weights by the restricted options: index 2 is sep_conv_3x3 here (in the full space: the
    # pooling), and 'none' is never picked however large its weight
    w = {k: torch.tensor([9.0, 0.0, 1.0]) for k in r.decisions()}
    assert set(r.derive(w).as_dict().values()) == {"none", "sep_conv_3x3"}
    with pytest.raises(ArchError, match="must keep one or more"):
        restrict_space(space, {**allowed, next(iter(allowed)): ["none"]})


@pytest.mark.parametrize("space", ["darts", "proxyless", "spos"])
def test_prefiltered_search_on_every_space(tmp_path, space):
    from test_zerocost import SPACES, _npz, _run_cli

    for method in ("darts", "proxyless", "spos"):
        out = tmp_path / method
        opts = ["prefilter.proxy=synflow", "prefilter.candidates=6", "prefilter.batch_size=6", "batch_size=6",
                "max_steps=2", "epochs=1", "eval_max_batches=1", "spos.population=4", "spos.top_k=2",
                "spos.generations=1", "spos.bn_batches=1", "spos.eval_batches=1", *SPACES[space]]
        code = _run_cli(["search", "--data", _npz(tmp_path / "d.npz"), "--out", str(out), "--method", method,
                         "--space", space, "--quiet", *[x for o in opts for x in ("--set", o)],
                         "--nb201-table", str(tmp_path / "missing.csv")])
        result = json.loads((out / "result.json").read_text())
        kept = result["prefilter"]["allowed"]
        assert code == 0 and all(result["arch"]["choices"][k] in kept[k] for k in kept), (space, method)
