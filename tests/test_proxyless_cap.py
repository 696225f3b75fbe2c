"""ProxylessNAS's cap on parameter-free options (``proxyless.max_param_free``) and its derivation on another run's
trained supernet (``proxyless.supernet_from``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_data import soft_image_set

from dfnas.errors import ConfigError
from dfnas.repro import make_generator
from dfnas.search import run_search
from dfnas.search.base import build_method
from dfnas.search.proxyless.derive import lowest_loss_choices
from dfnas.spaces import build_space

OPTS = ["none", "skip", "conv1", "conv3", "pool"]
FREE = {"skip", "pool"}
INF = math.inf


def _losses() -> dict[str, torch.Tensor]:
    return {
        "a": torch.tensor([INF, 1.0, 1.5, 1.2, 2.0]),  # skip; conv3 costs +0.2
        "b": torch.tensor([INF, 2.0, 1.9, 1.95, 1.0]),  # pool; conv1 costs +0.9
        "c": torch.tensor([INF, 1.0, 1.05, 2.0, 3.0]),  # skip; conv1 costs +0.05
        "d": torch.tensor([INF, 3.0, 1.0, 2.0, 3.0]),  # conv1
    }


def test_the_cap_replaces_the_parameter_free_choices_of_smallest_extra_loss_first():
    dec = {k: OPTS for k in "abcd"}
    every = list(dec)
    uncapped = {"a": "skip", "b": "pool", "c": "skip", "d": "conv1"}
    assert lowest_loss_choices(_losses(), dec) == uncapped
    assert lowest_loss_choices(_losses(), dec, None, FREE, every) == uncapped
    assert lowest_loss_choices(_losses(), dec, 3, FREE, every) == uncapped  # 3 free options: within the cap
    assert lowest_loss_choices(_losses(), dec, 2, FREE, every) == {**uncapped, "c": "conv1"}
    assert lowest_loss_choices(_losses(), dec, 1, FREE, every) == {**uncapped, "c": "conv1", "a": "conv3"}
    assert lowest_loss_choices(_losses(), dec, 0, FREE, every) == {"a": "conv3", "b": "conv1", "c": "conv1",
                                                                   "d": "conv1"}
    # only the counted decisions count and change: a stays a skip
    assert lowest_loss_choices(_losses(), dec, 0, FREE, ["b", "c", "d"]) == {**uncapped, "b": "conv1", "c": "conv1"}


def test_the_cap_keeps_a_choice_without_a_parametric_alternative_and_breaks_ties_by_order():
    dec = {"a": OPTS, "only_free": ["none", "skip"], "b": OPTS}
    losses = {"a": torch.tensor([INF, 1.0, 1.3, 2.0, 2.0]), "only_free": torch.tensor([INF, 5.0]),
              "b": torch.tensor([INF, 1.0, 1.3, 2.0, 2.0])}  # a and b: the same +0.3 to leave skip
    assert lowest_loss_choices(losses, dec, 0, FREE, list(dec)) == {"a": "conv1", "only_free": "skip", "b": "conv1"}
    assert lowest_loss_choices(losses, dec, 2, FREE, list(dec)) == {"a": "conv1", "only_free": "skip", "b": "skip"}


def _cfg(**proxyless) -> dict:
    return {"method": "proxyless", "space": {"name": "nb201", "options": {"C": 2}}, "epochs": 2, "batch_size": 5,
            "eval_max_batches": 1, "candidate_init": "identity", "seed": 3,
            "proxyless": {"sampling": "fair", "derive": "measured", "derive_paths": 2, "derive_weights": "both",
                          **proxyless}}


def test_a_capped_derivation_on_a_finished_supernet_equals_a_capped_search_and_trains_nothing(tmp_path):
    ds = soft_image_set()
    donor = run_search(_cfg(), ds, tmp_path / "donor", device="cpu", progress=False)
    scratch = run_search(_cfg(max_param_free=0), ds, tmp_path / "scratch", device="cpu", progress=False)
    reused = run_search(_cfg(max_param_free=0, supernet_from=str(tmp_path / "donor")), ds, tmp_path / "reused",
                        device="cpu", progress=False)

    assert reused.arch == scratch.arch
    for key in ("derive_losses", "derive_losses_final", "weight_steps"):
        assert reused.result[key] == scratch.result[key] == donor.result[key], key
    assert not any(o in {"skip_connect", "avg_pool_3x3"} for o in scratch.arch.as_dict().values())
    # the cap changed this run's cells: what the same losses give without it is recorded, and is the donor's
    uncapped = scratch.result["derive_uncapped"]
    assert uncapped and reused.result["derive_uncapped"] == uncapped
    assert str(donor.arch) in uncapped.values()
    log = [json.loads(line) for line in (tmp_path / "reused" / "log.jsonl").read_text().splitlines()]
    assert not [r for r in log if r.get("kind") in ("step", "epoch")]  # no weight step was taken
    assert reused.result["supernet_from"]["weight_steps"] == donor.result["weight_steps"]


def test_the_cap_and_the_reuse_refuse_what_they_cannot_do(tmp_path):
    ds = soft_image_set()
    run_search(_cfg(), ds, tmp_path / "donor", device="cpu", progress=False)
    reuse = {"max_param_free": 2, "supernet_from": str(tmp_path / "donor")}
    cases = [
        (_cfg(**reuse, arch_lr=0.5), "trained its supernet under another configuration .*arch_lr"),
        (_cfg(**reuse, derive_weights="final"), "another configuration .*derive_weights"),
        (_cfg(**{**reuse, "supernet_from": str(tmp_path / "nowhere")}),
         "proxyless.supernet_from .*nowhere.* is not a search run directory"),
    ]
    for i, (cfg, match) in enumerate(cases):
        with pytest.raises(ConfigError, match=match):
            run_search(cfg, ds, tmp_path / f"refused{i}", device="cpu", progress=False)
        assert not (tmp_path / f"refused{i}" / "checkpoint.pt").exists()

    def build(space: str, **opts):
        return build_method("proxyless", build_space(space), opts, make_generator(0, "m"), torch.device("cpu"))

    for bad, match in ((-1, "max_param_free must be an integer >= 0 or null, got -1"),
                       (1.5, "max_param_free: 1.5 does not match int"), (True, "max_param_free.*True")):
        with pytest.raises(ConfigError, match=match):
            build("nb201", derive="measured", max_param_free=bad)
    for key, value in (("max_param_free", 2), ("supernet_from", "somewhere")):
        with pytest.raises(ConfigError, match=f"proxyless.{key} applies to derive 'measured'"):
            build("nb201", **{key: value})
    with pytest.raises(ConfigError, match="max_param_free caps parameter-free options, but space 'proxyless' has"):
        build("proxyless", derive="measured", max_param_free=2)
