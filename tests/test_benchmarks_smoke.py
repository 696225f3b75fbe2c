"""The evidence benchmarks (benchmarks/*.py): budgets, helpers, and one smoke cell end to end."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_budgets_define_smoke_and_cpu_and_share_datasets():
    common = _load("common")
    sq, rc, dt = _load("search_quality"), _load("ranking_consistency"), _load("datafree_training")
    for mod in (sq, rc, dt):
        assert {"smoke", "cpu"} <= set(mod.BUDGETS)
    assert len(sq.BUDGETS["cpu"].seeds) >= 3
    assert rc.BUDGETS["cpu"].n_cells >= 30
    # the benchmarks read shared cached datasets: one set for smoke, two image counts for cpu
    assert sq.BUDGETS["smoke"].data == rc.BUDGETS["smoke"].data == dt.BUDGETS["smoke"].data
    assert sq.BUDGETS["cpu"].data == common.DATA_BUDGETS["cpu"]
    assert rc.BUDGETS["cpu"].data == dt.BUDGETS["cpu"].data == common.DATA_BUDGETS["cpu_train"]
    # a longer-training budget reuses the 'cpu' images (same folder) but keeps its own cells (other hashes)
    work = Path("/w")
    assert rc.BUDGETS["cpu_long"].data.root(work / "cpu_long") == rc.BUDGETS["cpu"].data.root(work / "cpu")
    assert rc.trained_hash(rc.BUDGETS["cpu_long"]) != rc.trained_hash(rc.BUDGETS["cpu"])
    assert sq.BUDGETS["smoke"].data.root(work / "smoke") == work / "smoke" / "data" / "n40"
    # every source of the brief is there, real first
    assert list(common.SOURCES)[0] == "real"
    assert {"full", "no_recursion", "no_regional", "plain", "noise", "real_random"} <= set(common.SOURCES)
    assert {"darts_beta", "darts", "proxyless", "spos"} <= set(sq.METHODS)


def test_cell_store_roundtrip_and_refuses_other_settings(tmp_path):
    common = _load("common")
    store = common.CellStore(tmp_path)
    assert store.get("a", "b", cell_hash="h1") is None
    store.put({"x": 1.5}, "a", "b", cell_hash="h1")
    assert store.get("a", "b", cell_hash="h1")["x"] == 1.5
    assert store.get("a", "b", cell_hash="h2") is None  # other settings: stale, recomputed


def test_cell_store_lists_the_seeds_of_every_stored_cell(tmp_path):
    """A summary covers every finished seed, not only those of the command that writes it (a run of seeds 24-34
    once published a report of seeds 0-2 and 24-34 only)."""
    common = _load("common")
    store = common.CellStore(tmp_path)
    assert store.seeds() == set()
    for parts in (("full", "darts", "seed0"), ("real", "spos", "seed17"), ("noise", "darts", "seed3"),
                  ("full", "darts", "seedx"), ("full", "zerocost", "cell5")):
        store.put({"x": 1.0}, *parts, cell_hash="h")
    assert store.seeds() == {0, 3, 17}


def test_helpers():
    common = _load("common")
    reporting = _load("reporting")
    rc = _load("ranking_consistency")
    m, s = reporting.mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == 1.0
    assert reporting.mean_std([4.0]) == (4.0, 0.0)
    assert common.parse_seeds("0-2") == [0, 1, 2] and common.parse_seeds("3,5") == [3, 5]
    assert common.parse_subset("plain,real", list(common.SOURCES), "sources") == ["real", "plain"]
    with pytest.raises(SystemExit):
        common.parse_subset("nope", list(common.SOURCES), "sources")
    assert common.deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    c = rc.correlations([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    assert c["kendall_tau"] == pytest.approx(1.0) and c["spearman_rho"] == pytest.approx(1.0)
    assert math.isnan(rc.correlations([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])["kendall_tau"])
    assert "| a | b |" in reporting.md_table(["a", "b"], [[1, 2]])


@pytest.mark.integration
def test_search_quality_smoke_cell_runs_and_resumes(tmp_path):
    from dfnas.assets import asset_path, nb201_table_path

    if asset_path("cifar10", "jpeg", "train") is None or nb201_table_path() is None:
        pytest.skip("shared assets (CIFAR-10 JPEG, NAS-Bench-201 table) not found")
    import torch

    sq = _load("search_quality")
    args = ["--budget", "smoke", "--sources", "noise", "--methods", "spos", "--threads", "1",
            "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--quiet"]
    threads = torch.get_num_threads()
    try:
        _run_and_check(sq, args, tmp_path)
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide: do not leak it into later tests


def _run_and_check(sq: ModuleType, args: list[str], tmp_path: Path) -> None:
    assert sq.main(args) == 0
    summary = json.loads((tmp_path / "out" / "search_quality_smoke.json").read_text())
    (cell,) = summary["cells"]
    assert cell["source"] == "noise" and cell["method"] == "spos"
    assert 0.0 < cell["nb201_cifar10"] <= 100.0
    assert (tmp_path / "out" / "search_quality_smoke.png").is_file()
    cell_file = tmp_path / "w" / "smoke" / "search_quality" / "cells" / "noise" / "spos" / "seed0.json"
    before = cell_file.stat().st_mtime_ns
    assert sq.main(args) == 0  # the finished cell is skipped, not recomputed
    assert cell_file.stat().st_mtime_ns == before


@pytest.mark.integration
def test_datafree_wallclock_and_calibration_smoke(tmp_path, capsys):
    from dfnas.assets import asset_path

    if asset_path("cifar10", "jpeg", "train") is None:
        pytest.skip("shared assets (CIFAR-10 JPEG) not found")
    import torch

    wc, cal = _load("datafree_wallclock"), _load("calibration")
    common_args = ["--budget", "smoke", "--threads", "1", "--work", str(tmp_path / "w"), "--out",
                   str(tmp_path / "out"), "--quiet"]
    threads = torch.get_num_threads()
    try:
        # --estimate-only prints the estimate and stops before making data or training anything
        assert wc.main([*common_args, "--variants", "generator_online,real_hard", "--estimate-only"]) == 0
        assert not list((tmp_path / "w").rglob("*.npz")) and not (tmp_path / "out").exists()
        assert "estimate with the cores to itself: datasets" in capsys.readouterr().err
        assert wc.main([*common_args, "--variants", "generator_online,real_hard"]) == 0
        assert cal.main([*common_args, "--settings", "generator_T2"]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "out" / "datafree_wallclock_smoke.json").read_text())
    groups = summary["groups"]
    assert set(groups) == {"generator_online", "real_hard"}
    online = next(c for c in summary["cells"] if c["variant"] == "generator_online")
    assert online["images_made_online"] > 0 and online["make_seconds"] > 0 and online["curve"]
    assert "top1_at_real_wall" in groups["generator_online"]
    cal_sum = json.loads((tmp_path / "out" / "calibration_smoke.json").read_text())
    (cell,) = cal_sum["cells"]
    assert set(cell["per_round"]) == {"0", "1", "2"} and -1 <= cell["spearman_all"] <= 1
    assert (tmp_path / "out" / "calibration_smoke.png").is_file()
    assert (tmp_path / "out" / "datafree_wallclock_smoke.png").is_file()


def test_paired_difference_matches_a_hand_computed_example():
    reporting = _load("reporting")
    # differences 1, 2, 3: mean 2, sd 1; t(0.975, 2 dof) = 4.302653 -> CI 2 -/+ 4.302653 / sqrt(3)
    r = reporting.paired_difference({0: 11.0, 1: 12.0, 2: 13.0, 9: 5.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert r["seeds"] == [0, 1, 2] and r["n"] == 3 and r["diffs"] == [1.0, 2.0, 3.0]
    half = 4.302653 / math.sqrt(3)
    assert r["mean_diff"] == pytest.approx(2.0) and r["sd_diff"] == pytest.approx(1.0)
    assert r["ci"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    # t = 2 / (1 / sqrt 3) = 3.4641 on 2 dof: two-sided p = 0.07418
    assert r["p_t"] == pytest.approx(0.07418, abs=1e-4)
    # all differences positive: only the all-plus and all-minus sign patterns reach |sum| = 6 -> 2 / 8
    assert r["p_perm"] == pytest.approx(0.25) and r["verdict"] == "within noise"
    clear = reporting.paired_difference({k: 90.0 + k for k in range(5)},
                                        {k: 80.0 + k + 0.1 * (k % 2) for k in range(5)})
    assert clear["verdict"] == "a better" and clear["ci"][0] > 9
    assert reporting.paired_difference({0: 1.0}, {0: 2.0}) is None  # one shared seed: nothing to test


def test_calibration_summary_over_seeds_counts_rises_and_keeps_old_cells_in_place():
    cal = _load("calibration")
    common = _load("common")

    def cell(setting, seed, r0, r1, pooled):
        rec = {"agreement": 1.0, "mean_entropy": 0.1, "second_class_mass": 0.01}
        return {"setting": setting, "seed": seed, "spearman_all": pooled, "agreement": 1.0,
                "per_round": {"0": {**rec, "similarity_spearman": r0}, "1": {**rec, "similarity_spearman": r1}}}

    cells = [cell("full_T16_noregion", 0, 0.5, 0.6, 0.6), cell("full_T16_noregion", 1, 0.6, 0.5, 0.5),
             cell("full_default", 0, 0.4, 0.3, 0.35)]
    (a, b) = cal.over_seeds(cells)  # SETTINGS order: full_default before full_T16_noregion
    assert b["setting"] == "full_T16_noregion" and b["seeds"] == [0, 1] and b["rising"] == 1
    assert b["all"] == [0.6, 0.5] and b["per_round"]["1"] == [0.6, 0.5]
    assert a["setting"] == "full_default" and a["rising"] == 0
    refs = {"real_test_halves": 0.5, "real_train_exact_5085": 0.6, "real_test_jpeg_3000": 0.6}
    _, md = cal.summarize("cpu_full", cal.BUDGETS["cpu_full"], cells, refs)
    assert "0.550 ± 0.071" in md and "1 of 2" in md and "seed 1" in md
    # seed 0 keeps the storage place and hash the cells had before there were seeds; other seeds get their own
    budget = cal.BUDGETS["cpu"]
    assert cal.cell_parts("generator_T2", common.DATA_SEED) == ("generator_T2",)
    assert cal.cell_parts("generator_T2", 1) == ("generator_T2", "seed1")
    old = common.stable_hash({"budget": budget.n_images, "rounds": budget.rounds, "preset": budget.preset,
                              "extra": budget.extra, "setting": cal.SETTINGS["generator_T2"].overrides})
    assert cal.cell_hash("generator_T2", budget, common.DATA_SEED) == old
    assert cal.cell_hash("generator_T2", budget, 1) != old


def test_adopt_published_seeds_missing_cells_only_and_keeps_hash_checks(tmp_path):
    """A fresh clone's cell store is seeded from the published summary: missing cells are written, a cell
    computed here is never replaced, and a published cell whose settings hash no longer matches stays unused."""
    common = _load("common")
    store = common.CellStore(tmp_path / "cells")
    store.put({"source": "real", "method": "m", "seed": 0, "acc": 1.0}, "real", "m", "seed0", cell_hash="h0")
    published = tmp_path / "summary.json"
    published.write_text(json.dumps({
        "cells": [{"source": "real", "method": "m", "seed": 0, "acc": 9.0, "cell_hash": "h0"},
                  {"source": "real", "method": "m", "seed": 1, "acc": 2.0, "cell_hash": "h1"},
                  {"source": "noise", "method": "m", "seed": 0, "acc": 3.0, "cell_hash": "old"}],
        "sources": {"noise": {"label": "Gaussian noise", "n": 40, "make_seconds": 1.5}}}))
    parts = lambda c: (c["source"], c["method"], f"seed{c['seed']}")  # noqa: E731
    assert common.adopt_published(store, published, parts, tmp_path) == 2
    assert store.get("real", "m", "seed0", cell_hash="h0")["acc"] == 1.0  # computed here: kept
    assert store.get("real", "m", "seed1", cell_hash="h1")["acc"] == 2.0
    assert store.get("noise", "m", "seed0", cell_hash="new") is None  # settings changed since publication
    assert common.get_source_info(tmp_path, "noise") == {"n": 40, "make_seconds": 1.5}
    assert common.adopt_published(store, published, parts, tmp_path) == 0
    assert common.adopt_published(store, tmp_path / "missing.json", parts) == 0


def test_ranking_adopts_a_published_summary_of_its_own_settings_only(tmp_path):
    """ranking_consistency keeps scores per source, not per-cell hashes: its published summary is adopted (under
    this budget's hashes) only when it was made with this very budget and cell sample; local files are kept."""
    rc = _load("ranking_consistency")
    common = _load("common")
    budget = rc.BUDGETS["smoke"]
    archs = ["|a|", "|b|"]
    score = {"real_test": 10.0, "held_out": 20.0}
    summary = {"budget_settings": budget.as_dict(), "cells": [{"arch": a} for a in archs],
               "scores": {"full": {"trained": [score, score], "spos": [score, score]}},
               "sources": {"full": {"label": "full synthesis", "n": 40, "make_seconds": 2.0}}}
    published = tmp_path / "summary.json"
    published.write_text(json.dumps(summary))
    store = common.CellStore(tmp_path / "cells")
    store.put({"source": "full", "index": 0, "real_test": 1.0, "held_out": 2.0}, "full", "trained", "cell00",
              cell_hash=rc.trained_hash(budget))
    assert rc.adopt_published(store, published, budget, archs, tmp_path) == 2  # cell01 and the SPOS scores
    assert store.get("full", "trained", "cell00", cell_hash=rc.trained_hash(budget))["real_test"] == 1.0  # kept
    assert store.get("full", "trained", "cell01", cell_hash=rc.trained_hash(budget))["held_out"] == 20.0
    assert store.get("full", "spos", "scores", cell_hash=rc.spos_hash(budget))["scores"] == [score, score]
    assert common.get_source_info(tmp_path, "full") == {"n": 40, "make_seconds": 2.0}
    other = common.CellStore(tmp_path / "other")
    assert rc.adopt_published(other, published, rc.BUDGETS["cpu"], archs, tmp_path) == 0  # other settings
    assert rc.adopt_published(other, published, budget, ["|a|", "|c|"], tmp_path) == 0  # other cells
    assert rc.adopt_published(other, tmp_path / "missing.json", budget, archs, tmp_path) == 0


def test_datafree_training_trains_the_published_architecture_unless_told_otherwise(tmp_path, monkeypatch):
    """Without --arch, datafree_training keeps the architecture of its published report (whose cells a fresh
    clone adopts), not whichever cell search_quality's store now ranks best; --arch still wins."""
    import argparse

    dt, common = _load("datafree_training"), _load("common")
    from dfnas.spaces.nb201_table import NB201Table

    table = NB201Table.load()
    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    (tmp_path / "datafree_training_cpu.json").write_text(json.dumps({"arch": arch, "arch_choice": "as published"}))
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    args = argparse.Namespace(arch=None, budget="cpu", estimate_only=False)
    assert dt.pick_arch(args, tmp_path / "work", table) == (arch, "as published")
    best = table.best("cifar10")["arch"]
    assert dt.pick_arch(argparse.Namespace(arch=best, budget="cpu", estimate_only=False), tmp_path, table) == (
        best, "given with --arch")
    with pytest.raises(SystemExit, match="no search result"):
        dt.pick_arch(argparse.Namespace(arch=None, budget="cpu_5k", estimate_only=False), tmp_path / "work", table)


def test_prepared_device_run_smoke_on_cpu(tmp_path):
    """The GPU script (gpu_protocol.py) runs end to end at its smoke budget on the CPU, part by part, and
    keeps a finished part when the other runs later (the device run is made as two calls)."""
    gp = _load("gpu_protocol")
    h200 = gp.BUDGETS["h200"]
    assert h200.device == "cuda" and h200.a_teacher == "cifar10_resnet56"
    # the epochs that fit a time box: 240 s at 0.02 s per step and 78 steps per epoch is 153 whole epochs
    assert gp.fit_epochs(240.0, 0.02, 78, h200) == 153
    assert gp.fit_epochs(240.0, 10.0, 78, h200) == h200.min_epochs  # too slow: still one epoch
    assert gp.fit_epochs(240.0, 1e-9, 78, h200) == h200.max_epochs  # capped
    assert gp.main(["--budget", "smoke", "--out", str(tmp_path), "--parts", "a", "--quiet"]) == 0
    out = json.loads((tmp_path / "gpu_protocol_smoke.json").read_text())
    a = out["parts"]["a"]
    assert list(out["parts"]) == ["a"] and a["student"] == "resnet20" and a["teacher"] == "cifar10_resnet56"
    assert 85.0 < a["teacher_top1"] < 100.0 and 0.0 <= a["student_top1"] <= 100.0 and a["epochs"] >= 1
    assert gp.main(["--budget", "smoke", "--out", str(tmp_path), "--parts", "b", "--quiet"]) == 0
    out = json.loads((tmp_path / "gpu_protocol_smoke.json").read_text())
    assert out["parts"]["a"] == a  # kept, not rerun
    assert out["parts"]["b"]["genotype"].startswith("Genotype(") and out["parts"]["b"]["train"]["test_n"] == 1017
    assert "A. Data-free distillation" in (tmp_path / "gpu_protocol_smoke.md").read_text()
    assert (tmp_path / "gpu_protocol_smoke.png").stat().st_size > 0


def test_spos_ranking_route_rule_and_smoke_run_resumes(tmp_path, monkeypatch):
    """spos_ranking.py: the parameter-free-route test on cells whose answer is known by hand, then one smoke
    variant end to end; a second invocation reuses the stored cell instead of training again."""
    from dfnas.spaces.nb201 import NB201Space

    sr = _load("spos_ranking")
    route = NB201Space.parse("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|")
    assert sr.has_parameter_free_route(route)  # 0 -skip-> 1 -pool-> 2 -skip-> 3
    broken = NB201Space.parse("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|")
    assert not sr.has_parameter_free_route(broken)  # node 2 is reached through a convolution only
    direct = NB201Space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|none~2|")
    assert sr.has_parameter_free_route(direct)  # the input-to-output edge itself
    smoke = sr.variant_budget(sr.BUDGETS["smoke"], sr.VARIANTS["data5k"], "smoke")
    assert smoke.data == sr.BUDGETS["smoke"].data and smoke.spos_loop == sr.BUDGETS["smoke"].spos_loop
    cpu = sr.variant_budget(sr.BUDGETS["cpu"], sr.VARIANTS["data5k"], "cpu")
    assert cpu.data.n_images == 5000 and cpu.spos_loop["epochs"] == 48
    args = ["--budget", "smoke", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--quiet",
            "--variants", "c16", "--sources", "real"]
    assert sr.main(args) == 0
    summary = json.loads((tmp_path / "out" / "spos_ranking_smoke.json").read_text())
    [cell] = summary["cells"]
    assert (cell["variant"], cell["source"], cell["seed"]) == ("c16", "real", 0)
    assert len(cell["scores"]) == len(summary["archs"])
    assert set(summary["stats"]["c16"]["real/seed0"]) >= {"kendall_tau", "route_mean", "no_route_mean", "spread"}

    def no_training(*a, **k):
        raise AssertionError("a finished variant was trained again")

    assert sr.main([*args, "--seeds", "1"]) == 0  # another training seed: a second run beside the first
    monkeypatch.setattr(sr.rc, "spos_scores", no_training)
    assert sr.main(args) == 0  # both read back from the store; the summary keeps the seed not asked for
    cells = json.loads((tmp_path / "out" / "spos_ranking_smoke.json").read_text())["cells"]
    assert [c["seed"] for c in cells] == [0, 1] and cells[0] == cell


def test_proxyless_long_warmup_variant_fits_its_budget_and_its_estimate():
    """`proxyless_longwarm` leaves 20 of cpu_5k_xlong's 300 epochs to architecture steps, is refused where its
    warm-up would take every epoch, and its estimate counts the pair's extra paths only after the warm-up (and
    five paths per weight step with fair weight paths)."""
    from dfnas.config import from_dict
    from dfnas.errors import ConfigError
    from dfnas.search import SearchConfig

    sq, costs = _load("search_quality"), _load("costs")
    xlong = sq.BUDGETS["cpu_5k_xlong"]
    cfg = from_dict(SearchConfig, sq.search_config(xlong, "proxyless_longwarm", 0), "search")
    cfg.check()
    assert cfg.resolved_epochs() - cfg.proxyless.warmup_epochs == 20
    with pytest.raises(ConfigError, match="no architecture step"):
        from_dict(SearchConfig, sq.search_config(sq.BUDGETS["cpu"], "proxyless_longwarm", 0), "search").check()
    # unit costs of 1 s: weight steps cost one path per image, architecture steps two more, evaluations one
    cal = costs.Calibration(supernet_step=1.0, path_step=1.0, path_eval=0.0, teacher_step=1.0, teacher_eval=1.0)
    steps, bs = 300 * 78, 32  # 2,500 training images / 32 = 78 steps per epoch
    assert sq.cell_estimate(xlong, "proxyless_longwarm", cal) == (steps + 2 * 20 * 78) * bs
    assert sq.cell_estimate(xlong, "proxyless", cal) == (steps + 2 * (steps - 100 * 78)) * bs  # a third warm
    # fair weight paths: every weight step runs all five options of each edge
    cpu_steps = 30 * 7  # 250 training images / 32 = 7 steps per epoch; a third warm-up (70 steps)
    assert sq.cell_estimate(sq.BUDGETS["cpu"], "proxyless_identity_fair", cal) == (5 * cpu_steps + 2 * 140) * 32
    assert sq.cell_estimate(sq.BUDGETS["cpu"], "proxyless_identity", cal) == (cpu_steps + 2 * 140) * 32


def test_a_cell_on_another_cells_supernet_is_keyed_and_costed_by_that_cell(monkeypatch):
    """`spos_big_eval` reuses the `spos` cell's supernet: its hash follows that cell's configuration (a changed
    supernet makes it stale), and its estimate is its evolution alone (the training is the other cell's)."""
    sq, costs = _load("search_quality"), _load("costs")
    for name, m in sq.METHODS.items():
        if m.supernet_of is not None:  # reuse only from a cell of the same method that trains its own supernet
            donor = sq.METHODS[m.supernet_of]
            assert m.config["method"] in ("spos", "proxyless"), name
            assert donor.config["method"] == m.config["method"] and donor.supernet_of is None, name
    xlong = sq.BUDGETS["cpu_5k_xlong"]
    before = sq.cell_hash(xlong, "spos_big_eval", 0)
    assert before != sq.cell_hash(xlong, "spos_big_eval", 1)
    # the donor trained otherwise, its own options unchanged: the reusing cell is another cell
    monkeypatch.setitem(sq.METHODS, "spos", _load("search_quality_grid").Method(
        "SPOS", {"method": "spos", "spos": {"sampling": "fair"}}))
    assert sq.cell_hash(xlong, "spos_big_eval", 0) != before
    monkeypatch.undo()
    assert "supernet_from" not in sq.search_config(xlong, "spos_big_eval", 0)["spos"]  # set per run directory
    cal = costs.Calibration(supernet_step=1.0, path_step=1.0, path_eval=1.0, teacher_step=1.0, teacher_eval=1.0)
    # a ProxylessNAS derivation on the `both` cell's supernet: its estimate is that derivation alone
    cap, donor = "proxyless_identity_fair_measured_both_cap2", "proxyless_identity_fair_measured_both"
    derive_only = 2 * (6 * 5 * 10 * 250) + 2 * 250  # twice every option of every edge on 10 draws, then two cells
    assert sq.cell_estimate(sq.BUDGETS["cpu"], cap, cal) == derive_only
    assert sq.cell_estimate(sq.BUDGETS["cpu"], donor, cal) > derive_only
    # 96 candidates at most, each: 16 BN batches of 32 + the 2,500 held-out images
    assert sq.cell_estimate(xlong, "spos_big_eval", cal) == 16 * 6 * (16 * 32 + 2500)
    assert sq.cell_estimate(xlong, "spos", cal) == 300 * 78 * 32 + 16 * 6 * (4 * 32 + 1024)
    # re-ranking adds, per fine-tuned leader, 300 weight steps of 32 images and every held-out image
    assert sq.cell_estimate(xlong, "spos_rerank", cal) == 16 * 6 * (4 * 32 + 1024) + 8 * (300 * 32 + 2500)


def test_same_supernet_comparison_pairs_a_reusing_method_with_its_donor_per_source():
    """`spos_rerank` against `spos` on the same seeds of each source (a - b per seed); sources or seeds the two do
    not share are left out, and a method without a donor is not compared."""
    report = _load("search_quality_report")
    acc = {("full", "spos"): [92.0, 93.0, 91.0], ("full", "spos_rerank"): [93.0, 93.5, 92.0],
           ("real", "spos"): [90.0], ("real", "spos_rerank"): [89.0]}
    cells = [{"source": s, "method": m, "seed": i, "nb201_cifar10": a}
             for (s, m), accs in acc.items() for i, a in enumerate(accs)]
    out = report.same_supernet_comparisons(cells, ["full", "real"], ["spos", "spos_rerank", "darts_beta"])
    assert [(c["method"], c["donor"], c["source"], c["n"]) for c in out] == [("spos_rerank", "spos", "full", 3)]
    assert out[0]["mean_diff"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert report.same_supernet_comparisons(cells, ["full"], ["spos_rerank"]) == []  # donor not in the report


def test_proxyless_diagnosis_measures_the_supernet_without_the_estimator(tmp_path, monkeypatch, capsys):
    """proxyless_diagnosis.py --variants identity at the smoke budget: the cell records, per edge, the held-out
    loss of every op over the same random paths, and the lowest-loss cell is each edge's argmin with its ground
    truth; a rerun reads the stored cell; an unknown variant is refused by name."""
    from dfnas.spaces.nb201 import NB201Space
    from dfnas.spaces.nb201_table import NB201Table

    pd = _load("proxyless_diagnosis")
    args = ["--budget", "smoke", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--quiet",
            "--variants", "identity"]
    assert pd.main(args) == 0
    cells = json.loads((tmp_path / "out" / "proxyless_diagnosis_smoke.json").read_text())["cells"]
    assert sorted(c["source"] for c in cells) == ["full", "real"] and {c["variant"] for c in cells} == {"identity"}
    table = NB201Table.load()
    for c in cells:
        edges = c["exact_edges"]
        assert set(edges) == set(NB201Space.decisions()) and c["exact_paths"] == pd.EXACT_PATHS
        lowest = {}
        for k, e in edges.items():
            assert e["options"] == NB201Space.decisions()[k] and len(e["mean_loss"]) == len(e["options"])
            assert all(math.isfinite(v) and v > 0 for v in e["mean_loss"]) and len(set(e["mean_loss"])) > 1
            lowest[k] = e["options"][e["mean_loss"].index(min(e["mean_loss"]))]
        cell = NB201Space.parse(c["exact_cell"])
        assert cell.as_dict() == lowest
        assert c["exact_cell_nb201"] == table.lookup(cell)["cifar10"]
        # the BatchNorm statistics of the found cell's path: running against batch statistics
        assert c["bn_layers"] > 0 and c["bn_mean_shift"] >= 0 and c["bn_log_var_ratio"] >= 0
        assert math.isfinite(c["held_out_loss_running_stats"]) and c["held_out_loss_batch_stats"] > 0

    # a cell stored before the BatchNorm measurement gets it from its finished run, to the same numbers
    bn_keys = ("bn_layers", "bn_mean_shift", "bn_log_var_ratio", "held_out_loss_running_stats",
               "held_out_loss_batch_stats")
    stored = tmp_path / "w" / "smoke" / "proxyless_diagnosis" / "cells" / "full" / "identity" / "seed0.json"
    rec = json.loads(stored.read_text())
    stored.write_text(json.dumps({k: v for k, v in rec.items() if k not in bn_keys}))
    assert pd.main(args) == 0
    again = json.loads(stored.read_text())
    assert {k: again[k] for k in bn_keys} == {k: rec[k] for k in bn_keys}

    def no_search(*a, **k):
        raise AssertionError("a stored cell was searched again")

    monkeypatch.setattr("dfnas.search.run_search", no_search)
    assert pd.main(args) == 0
    with pytest.raises(SystemExit):
        pd.main([*args[:-1], "identity,bogus"])
    assert "bogus" in capsys.readouterr().err


def test_stream_source_draws_its_images_from_one_longer_run(tmp_path, monkeypatch):
    from dfnas.assets import asset_path

    if asset_path("cifar10", "jpeg", "train") is None:
        pytest.skip("shared assets (CIFAR-10 JPEG) not found")
    import torch

    common = _load("common")
    idx = common.stream_draw(50, 10)
    assert torch.equal(idx, common.stream_draw(50, 10))  # seeded: the same draw every time
    assert len(set(idx.tolist())) == 10 and idx.tolist() == sorted(idx.tolist()) and 0 <= int(idx.min())
    assert int(idx.max()) < 50
    # both draws from the generator's 50,000-image run read the one run
    assert common.SOURCES["generator_stream_agreed"].folder == common.SOURCES["generator_stream"].folder
    # a stream of 40 noise images; the budget asks for 10 of them
    monkeypatch.setitem(common.SOURCES, "noise_stream", common.Source("noise_stream", "noise, drawn", "synthesis",
                                                                      {"method": "noise"}, stream=40))
    budget = common.DataBudget(10, "tiny")
    ds, info = common.prepare_source("noise_stream", budget, tmp_path, progress=False)
    from dfnas.data import open_dataset

    run = open_dataset(tmp_path / "data" / "n40" / "noise_stream")
    assert len(run) == 40 and len(ds) == 10 and info["n"] == 10 and info["stream_images"] == 40
    assert torch.equal(ds.images, run.images[common.stream_draw(40, 10)])
    assert torch.equal(ds.targets, run.targets[common.stream_draw(40, 10)])
    with pytest.raises(common.DfnasError, match="draws 50 images from a 40-image run"):
        common.prepare_source("noise_stream", common.DataBudget(50, "tiny"), tmp_path, progress=False)


def test_wallclock_cells_share_their_variants_make_time():
    wc = _load("datafree_wallclock")
    cells = [{"variant": "full_kd", "source": "full", "seed": 0, "make_seconds": 600.0},
             {"variant": "full_kd", "source": "full", "seed": 1, "make_seconds": 0.0},  # trained on the cached copy
             {"variant": "real_hard", "source": "real", "seed": 0, "make_seconds": 0.0},
             {"variant": "generator_kd", "source": "generator", "seed": 0, "make_seconds": 0.0}]
    out = wc.with_make_seconds(cells)
    assert [c["make_seconds"] for c in out] == [600.0, 600.0, 0.0, 0.0]  # real costs nothing; no time, none made up
    assert cells[1]["make_seconds"] == 0.0  # the stored cells are not changed



def _exact_sign_flip(d):
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # (2^n, n): every pattern, by hand
    return float(np.mean(np.abs(flips @ np.abs(d)) >= abs(d.sum()) - 1e-12))


def test_sign_flip_p_is_exact_up_to_16_seeds_and_a_seeded_estimate_beyond():
    """Up to 16 seeds every sign pattern is enumerated; beyond, the (2^n, n) table would outgrow memory (30 seeds:
    8 GiB, which killed a 30-seed benchmark summary), so seeded random patterns estimate it, close to exact."""
    reporting = _load("reporting")
    d = np.linspace(-0.5, 2.0, 18)  # 18 differences, mostly positive
    assert reporting.sign_flip_p(d[:16]) == (pytest.approx(_exact_sign_flip(d[:16])), True)
    p, is_exact = reporting.sign_flip_p(d)
    assert not is_exact and p == pytest.approx(_exact_sign_flip(d), abs=0.003)
    assert reporting.sign_flip_p(d) == (p, False)
    r = reporting.paired_difference({k: 93.0 + 0.01 * k for k in range(30)}, {k: 92.0 for k in range(30)})
    assert r["n"] == 30 and r["p_perm"] == pytest.approx(1 / 200_001) and r["p_perm_draws"] == 200_000


def test_datafree_gap_smoke_measures_both_diagnostics_and_resumes(tmp_path):
    from dfnas.assets import asset_path

    if asset_path("cifar10", "jpeg", "train") is None:
        pytest.skip("shared assets (CIFAR-10 JPEG) not found")
    import torch

    gap = _load("datafree_gap")
    args = ["--budget", "smoke", "--threads", "1", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out"),
            "--quiet", "--variants", "generator,real"]
    threads = torch.get_num_threads()
    try:
        assert gap.main(args) == 0
        first = json.loads((tmp_path / "out" / "datafree_gap_smoke.json").read_text())
        assert gap.main(args) == 0  # every cell stored: nothing trains again, the same cells are summarized
    finally:
        torch.set_num_threads(threads)
    again = json.loads((tmp_path / "out" / "datafree_gap_smoke.json").read_text())
    assert again["cells"] == first["cells"]
    assert {c["setting"] for c in first["cells"]} == {"generator", "real"}
    for c in first["cells"]:
        assert all(0.0 <= c[m] <= 100.0 for m in ("test_top1", "bn_real", "bn_own", "agree_own", "agree_real"))
    # on real images the "own" images are the real training images: both re-estimations see the same batches
    (real,) = [c for c in first["cells"] if c["setting"] == "real"]
    assert real["bn_real"] == real["bn_own"]
    assert "real - generator" in first["comparisons"] and first["comparisons"]["real - generator"] is None  # 1 seed
    assert (tmp_path / "out" / "datafree_gap_smoke.png").is_file()
