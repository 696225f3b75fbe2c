"""``spos.rerank_top``: the evolution's best candidates fine-tuned alone and re-scored; the pick is the best of
them by the chosen score, the supernet's weights are left as trained, and a kill mid-way resumes exactly."""

from __future__ import annotations

import pytest
import torch
from test_search_resume import _assert_same, _cfg, tiny_set

from dfnas.errors import ConfigError, DfnasError
from dfnas.search import LoopInterrupted, run_search
from dfnas.search.api import make_space
from dfnas.search.loop import LoopConfig, evaluate_loss_acc, finetune
from dfnas.search.losses import Criterion
from dfnas.search.spos import rerank as rerank_mod
from dfnas.search.weights_init import init_parameters
from dfnas.spaces.base import Arch

SPOS = {"population": 4, "top_k": 2, "generations": 3, "bn_batches": 1, "eval_batches": 1}
RERANK = {**SPOS, "rerank_top": 3, "rerank_steps": 4, "rerank_lr": 0.05}


def _spos(opts: dict, **kw) -> dict:
    return {**_cfg("spos", **kw), "spos": opts}


def _ranked(run_dir):
    """The evolution's scored candidates of a finished run (one per function), best first; ties by string."""
    evo = torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"]["evolution"]
    scores = {str(Arch.of("nb201", d)): v for d, v in evo["scores"]}
    return [a for a, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


@pytest.mark.parametrize("score", ["loss", "accuracy"])
def test_rerank_picks_the_best_fine_tuned_leader_and_keeps_the_supernet(tmp_path, score):
    ds = tiny_set()
    plain = run_search(_spos(SPOS), ds, tmp_path / "plain", device="cpu", progress=False)
    rer = run_search(_spos({**RERANK, "rerank_score": score}), ds, tmp_path / "rerank", device="cpu",
                     progress=False)
    records = rer.result["spos"]["rerank"]
    leaders = _ranked(tmp_path / "plain")[:3]
    assert [r["arch"] for r in records] == leaders  # the same evolution, its 3 best in order
    assert _ranked(tmp_path / "rerank") == _ranked(tmp_path / "plain")
    value = [r["held_out_acc"] if score == "accuracy" else -r["held_out_loss"] for r in records]
    best = max(range(3), key=lambda i: (value[i], -i))  # ties: the evolution's order
    assert str(rer.arch) == leaders[best]
    assert all(r["held_out_loss"] > 0 and 0 <= r["held_out_acc"] <= 100 for r in records)
    # fine-tuning worked on copies: the checkpoint holds the supernet exactly as trained
    ck_plain = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["model"]
    ck_rer = torch.load(tmp_path / "rerank" / "checkpoint.pt", weights_only=True)["model"]
    for k, v in ck_plain.items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):  # BN: last candidate's
            assert torch.equal(ck_rer[k], v), k
    assert plain.result["spos"]["best_score"] == rer.result["spos"]["best_score"]


def _kill_during_rerank(ds, out, monkeypatch):
    """Run a re-ranking search into ``out`` and kill it while fine-tuning its second candidate (the first is
    scored and checkpointed)."""
    real = rerank_mod.finetune
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise LoopInterrupted("killed during re-ranking")
        return real(*args, **kw)

    monkeypatch.setattr(rerank_mod, "finetune", flaky)
    with pytest.raises(LoopInterrupted):
        run_search(_spos(RERANK), ds, out, device="cpu", progress=False)
    monkeypatch.setattr(rerank_mod, "finetune", real)


def test_kill_during_rerank_resumes_at_the_next_candidate(tmp_path, monkeypatch):
    ds = tiny_set()
    ref = run_search(_spos(RERANK), ds, tmp_path / "ref", device="cpu", progress=False)
    _kill_during_rerank(ds, tmp_path / "run", monkeypatch)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["phase"] == "finalize" and len(ck["method"]["rerank"]) == 1
    res = run_search(_spos(RERANK), ds, tmp_path / "run", device="cpu", progress=False)
    assert res.arch == ref.arch
    _assert_same(res.result["spos"], ref.result["spos"], "spos")  # the same records, to the bit
    _assert_same(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"],
                 torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)["model"], "model")


def test_a_checkpoint_whose_reranked_candidates_are_not_the_leaders_is_refused(tmp_path, monkeypatch):
    ds = tiny_set()
    _kill_during_rerank(ds, tmp_path / "run", monkeypatch)
    path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    ck["method"]["rerank"][0]["arch"] = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|" \
                                        "skip_connect~1|skip_connect~2|"
    torch.save(ck, path)
    with pytest.raises(DfnasError, match="re-ranked candidates are not this evolution's best"):
        run_search(_spos(RERANK), ds, tmp_path / "run", device="cpu", progress=False)


def test_a_search_on_a_reranked_runs_supernet_reranks_afresh(tmp_path):
    """`spos.supernet_from` a run that re-ranked: only the weights carry over, not that run's re-ranked records
    (made with other settings), so the result equals reusing a plain run's identical supernet."""
    ds = tiny_set()
    run_search(_spos(SPOS), ds, tmp_path / "plain", device="cpu", progress=False)
    run_search(_spos(RERANK), ds, tmp_path / "reranked", device="cpu", progress=False)
    other = {**RERANK, "rerank_steps": 6}
    a = run_search(_spos({**other, "supernet_from": str(tmp_path / "plain")}), ds, tmp_path / "a", device="cpu",
                   progress=False)
    b = run_search(_spos({**other, "supernet_from": str(tmp_path / "reranked")}), ds, tmp_path / "b", device="cpu",
                   progress=False)
    assert a.arch == b.arch
    _assert_same(b.result["spos"]["rerank"], a.result["spos"]["rerank"], "rerank")


def test_finetune_trains_only_the_chosen_path_and_lowers_the_loss():
    ds = tiny_set()
    space = make_space({"name": "nb201", "options": {"C": 2}}, ds)
    model = init_parameters(space.build_supernet(), torch.Generator().manual_seed(0))
    model.set_path(space.sample(torch.Generator().manual_seed(3)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    crit = Criterion("distill", 4.0)
    cpu = torch.device("cpu")
    start = evaluate_loss_acc(model, ds, crit, cpu)["loss"]
    finetune(model, ds, LoopConfig(batch_size=8), crit, cpu, torch.Generator().manual_seed(0), steps=30, lr=0.05)
    assert evaluate_loss_acc(model, ds, crit, cpu)["loss"] < start
    # the last step's gradients mark the path: its parameters moved, every other option's did not
    on_path = {n for n, p in model.named_parameters() if p.grad is not None}
    off_path = set(before) - on_path
    assert on_path and off_path
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in off_path)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in on_path)


@pytest.mark.parametrize("bad, match", [
    ({"rerank_top": -1}, "rerank_top must be >= 0"),
    ({"rerank_steps": 0}, "rerank_steps >= 1"),
    ({"rerank_lr": 0.0}, "rerank_lr > 0"),
    ({"rerank_score": "top5"}, r"spos.rerank_score 'top5' is not one of \['accuracy', 'loss'\]"),
])
def test_bad_rerank_settings_are_refused_before_any_work(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        run_search(_spos({**RERANK, **bad}), tiny_set(), tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
