"""Start a SPOS search from the trained supernet of a finished SPOS run (``spos.supernet_from``).

SPOS decouples the two stages: the supernet's weights do not depend on the evolution (population,
generations, MACs constraint, how candidates are scored), so one trained supernet serves any number of
evolutions, e.g. one per deployment budget (the point of SPOS's design, Guo et al., ECCV 2020). A search with
``spos.supernet_from: <run directory>`` skips the weight training: its run directory starts with that run's
checkpoint at the end of training and goes straight to its own evolution.

The two runs must agree on everything that shapes the weights: the run identity (dataset, split, seed, space,
loop settings, labels, teacher, pre-filter) with the SPOS options narrowed to ``SUPERNET_OPTIONS``. Otherwise
the search is refused, naming the keys that differ: weights trained under another configuration would be
silently wrong. The new run records where its supernet came from and counts that run's training time in its
own search time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dfnas.config import describe_differences
from dfnas.errors import ConfigError, DfnasError
from dfnas.io import atomic_torch_save, read_jsonl
from dfnas.search.loop import load_checkpoint

# the SPOS options that change how the supernet trains; every other SPOS option only acts in the evolution
SUPERNET_OPTIONS = ("sampling",)


def supernet_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """A search's run identity less the SPOS options that only act after training."""
    opts = identity.get("method_options") or {}
    return {**identity, "method_options": {k: opts[k] for k in SUPERNET_OPTIONS if k in opts}}


def training_seconds(log_path: Path) -> float | None:
    """Seconds the run spent in its training epochs (the last record of each epoch, so resumes count once; a line
    cut short by a kill is skipped by ``read_jsonl``)."""
    if not log_path.is_file():
        return None
    per_epoch = {int(rec["epoch"]): float(rec["epoch_seconds"]) for rec in read_jsonl(log_path)
                 if isinstance(rec, dict) and rec.get("kind") == "epoch" and "epoch_seconds" in rec}
    return sum(per_epoch.values()) if per_epoch else None


def seed_from_supernet(donor: str | Path, out_dir: Path, config_hash: str, identity: dict[str, Any],
                       finalize_state: dict[str, Any]) -> None:
    """Write ``out_dir/checkpoint.pt``: the finished SPOS run ``donor``'s supernet, ready for a new evolution.

    ``identity`` and ``config_hash`` are the new search's; ``finalize_state`` is its method's state before
    anything after training ran (evolution, re-ranking), which replaces the donor's. Raises ``ConfigError``
    naming ``spos.supernet_from`` when ``donor`` is not a finished SPOS run of the same supernet configuration;
    writes nothing then.
    """
    d = Path(donor)
    what = f"spos.supernet_from {str(donor)!r}"
    record_path, ckpt_path = d / "config.json", d / "checkpoint.pt"
    if not record_path.is_file() or not ckpt_path.is_file():
        raise ConfigError(f"{what} is not a search run directory (expected config.json and checkpoint.pt in it)")
    try:
        record = json.loads(record_path.read_text())
        theirs, their_hash = record["identity"], record["config_hash"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{what}: its config.json is not a search run record ({e})") from None
    if theirs.get("method") != "spos":
        raise ConfigError(f"{what} is a {theirs.get('method')!r} run; only a SPOS run's supernet can be reused")
    if supernet_identity(theirs) != supernet_identity(identity):
        raise ConfigError(f"{what} trained its supernet under another configuration "
                          f"({describe_differences(supernet_identity(theirs), supernet_identity(identity))}); "
                          "its weights are not this search's")
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
        # the donor's evolution and re-ranking are not this search's: only its training state carries over
        "method": {**ck["method"], **finalize_state},
        "elapsed_s": seconds if seconds is not None else 0.0, "extra": {"supernet_from": origin},
    })
