"""Start a search from the trained supernet of a finished run of the same method (``<method>.supernet_from``).

Where a method's last stage reads a trained supernet without changing how it trains, one trained supernet
serves any number of those stages:
- SPOS decouples the two (the point of its design, Guo et al., ECCV 2020): the weights do not depend on the
  evolution (population, generations, MACs constraint, how candidates are scored), so one supernet serves an
  evolution per deployment budget (``spos.supernet_from``);
- ProxylessNAS with ``derive: measured`` reads the cell off the trained supernet: its derivation options (draws,
  the cap on parameter-free options) change nothing before it (``proxyless.supernet_from``).
A search with ``supernet_from: <run directory>`` skips the weight training: its run directory starts with that
run's checkpoint at the end of training and goes straight to its own last stage.

The two runs must agree on everything that shapes the weights: the run identity (dataset, split, seed, space,
loop settings, labels, teacher, pre-filter) with the method's options narrowed by the method (``narrow``).
Otherwise the search is refused, naming the keys that differ: weights trained under another configuration
would be silently wrong. The new run records where its supernet came from and counts that run's training time
in its own search time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfnas.config import describe_differences
from dfnas.errors import ConfigError, DfnasError
from dfnas.io import atomic_torch_save, read_jsonl
from dfnas.search.loop import load_checkpoint

Narrow = Callable[[dict[str, Any]], dict[str, Any]]  # method options -> those that shape the trained supernet


def supernet_identity(identity: dict[str, Any], narrow: Narrow) -> dict[str, Any]:
    """A search's run identity with its method options narrowed to those that shape the trained supernet."""
    return {**identity, "method_options": narrow(identity.get("method_options") or {})}


def training_seconds(log_path: Path) -> float | None:
    """Seconds the run spent in its training epochs (the last record of each epoch, so resumes count once; a line
    cut short by a kill is skipped by ``read_jsonl``)."""
    if not log_path.is_file():
        return None
    per_epoch = {int(rec["epoch"]): float(rec["epoch_seconds"]) for rec in read_jsonl(log_path)
                 if isinstance(rec, dict) and rec.get("kind") == "epoch" and "epoch_seconds" in rec}
    return sum(per_epoch.values()) if per_epoch else None


def seed_from_supernet(donor: str | Path, out_dir: Path, config_hash: str, identity: dict[str, Any],
                       finalize_state: dict[str, Any], narrow: Narrow) -> None:
    """Write ``out_dir/checkpoint.pt``: the finished run ``donor``'s supernet, ready for this search's last stage.

    ``identity`` and ``config_hash`` are the new search's (its ``method`` names the method, which the donor's
    must match); ``finalize_state`` is its method's state before anything after training ran (SPOS: evolution,
    re-ranking), which replaces the donor's; ``narrow`` keeps the method options that shape the supernet.
    Raises ``ConfigError`` naming ``<method>.supernet_from`` when ``donor`` is not a finished run of the same
    method and supernet configuration; writes nothing then.
    """
    d = Path(donor)
    method = identity.get("method")
    what = f"{method}.supernet_from {str(donor)!r}"
    record_path, ckpt_path = d / "config.json", d / "checkpoint.pt"
    if not record_path.is_file() or not ckpt_path.is_file():
        raise ConfigError(f"{what} is not a search run directory (expected config.json and checkpoint.pt in it)")
    try:
        record = json.loads(record_path.read_text())
        theirs, their_hash = record["identity"], record["config_hash"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{what}: its config.json is not a search run record ({e})") from None
    if theirs.get("method") != method:
        raise ConfigError(f"{what} is a {theirs.get('method')!r} run; only a {method!r} run's supernet can be reused")
    mine, donors = supernet_identity(identity, narrow), supernet_identity(theirs, narrow)
    if donors != mine:
        raise ConfigError(f"{what} trained its supernet under another configuration "
                          f"({describe_differences(donors, mine)}); its weights are not this search's")
    try:
        ck = load_checkpoint(ckpt_path, their_hash)
    except DfnasError as e:
        raise ConfigError(f"{what}: {e}") from None
    if ck["phase"] == "train":
        raise ConfigError(f"{what} has not finished training its supernet (stopped after {ck['step']} steps); "
                          "rerun its search to the end first")
    seconds = training_seconds(d / "log.jsonl")
    origin = {"run": str(d.resolve()), "config_hash": their_hash, "weight_steps": ck["step"],
              "training_seconds": seconds}
    atomic_torch_save(out_dir / "checkpoint.pt", {
        **ck, "config_hash": config_hash, "phase": "finalize", "arch": None, "last_eval": {},
        # the donor's last stage (SPOS: evolution, re-ranking) is not this search's: its training state carries over
        "method": {**ck["method"], **finalize_state},
        "elapsed_s": seconds if seconds is not None else 0.0, "extra": {"supernet_from": origin},
    })
