"""The one run-directory check of every resumable command (``dfnas search``, ``dfnas train``, ``dfnas run``).

A run directory is identified by a hash of everything that changes its results (``identity``). Rerunning
the same command in the same directory resumes; a different configuration is refused with the list of
settings that differ, and nothing is deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.config import describe_differences
from dfnas.errors import DfnasError
from dfnas.io import atomic_write_json, config_hash, ensure_writable_dir, environment_info, read_json

RESUME_HINT = "rerun with the same settings to resume it, or choose another --out"


def prepare_run_dir(out: str | Path, identity: dict[str, Any], record: dict[str, Any], *, kind: str | None = None,
                    write: bool = True, resume_hint: str = RESUME_HINT) -> tuple[Path, str]:
    """Create or reopen ``out`` for a run of ``identity``; return (directory, configuration hash).

    ``config.json`` = ``{"kind"?, **record, "identity", "config_hash", "environment"}``. An existing one with
    another hash is refused (DfnasError naming the keys that differ, then ``resume_hint``) unless the two
    identities differ only in the dataset's path (same fingerprint): then the recorded hash is returned, so the
    run's checkpoints stay valid.

    ``kind=None``: a stage's own directory (search, training), created and checked writable first. With a
    ``kind`` (``"dfnas-run"``) nothing is created before the checks: a config.json of another kind, or a
    non-empty directory without one, is refused; ``write=False`` only checks (ranks other than 0).
    """
    identity = json_default_free(identity)
    h = config_hash(identity)
    out_dir = ensure_writable_dir(out) if kind is None and write else Path(out)
    cfg_path = out_dir / "config.json"
    if cfg_path.is_file():
        old = read_json(cfg_path, what="run configuration")
        if kind is not None and (not isinstance(old, dict) or old.get("kind") != kind):
            raise DfnasError(f"{str(out_dir)!r} holds another kind of output (its config.json is not a `dfnas run` "
                             "configuration); choose another --out")
        if old.get("config_hash") != h and _same_data_elsewhere(old.get("identity", {}), identity):
            return out_dir, str(old["config_hash"])  # the recorded hash: its checkpoints stay valid
        if old.get("config_hash") != h:
            shown = describe_differences(old.get("identity", {}), identity)
            raise DfnasError(f"{str(out_dir)!r} holds a run with a different configuration ({shown}); {resume_hint}")
        return out_dir, h
    if kind is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise DfnasError(f"output directory {str(out_dir)!r} exists and is not a directory")
        leftovers = [p.name for p in out_dir.iterdir() if not p.name.startswith(".")] if out_dir.is_dir() else []
        if leftovers:
            raise DfnasError(f"output directory {str(out_dir)!r} is not empty and is not a `dfnas run` directory "
                             f"(found {sorted(leftovers)[:3]}); choose a new or empty --out (nothing was changed)")
    if write:
        ensure_writable_dir(out_dir)
        atomic_write_json(cfg_path, {**({"kind": kind} if kind is not None else {}), **record, "identity": identity,
                                     "config_hash": h, "environment": environment_info()})
    return out_dir, h


def _same_data_elsewhere(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two identities differ only in the dataset's path: its fingerprint (a hash of the images, targets
    and logits) is the same, so the data is too (a run started before paths inside a run directory were
    recorded relative to it, or data given by another path)."""
    if not isinstance(old.get("dataset"), dict) or not isinstance(new.get("dataset"), dict):
        return False
    if not old["dataset"].get("fingerprint") or old["dataset"].get("fingerprint") != new["dataset"].get("fingerprint"):
        return False

    def sourceless(ident: dict[str, Any]) -> dict[str, Any]:
        return {**ident, "dataset": {**ident["dataset"], "source": None}}

    return sourceless(old) == sourceless(new)


def json_default_free(obj: Any) -> Any:
    """Tuples -> lists recursively (so identities compare equal after a JSON round trip)."""
    if isinstance(obj, dict):
        return {str(k): json_default_free(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_default_free(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
