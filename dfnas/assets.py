"""Where the shared assets live (teachers, NAS-Bench-201 table, real CIFAR-10), resolved by setting.

Order: an explicit argument, then the ``DFNAS_ASSETS`` environment variable, then ``../shared/assets``
relative to the current directory or to the installed source tree (the layout of a development checkout).
Nothing is ever copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DFNAS_ASSETS"


def assets_root(explicit: str | Path | None = None) -> Path | None:
    """Return the assets directory, or None when none can be found."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent  # source checkout root
    for base in (Path.cwd(), here):
        cand = base.parent / "shared" / "assets"
        if cand.is_dir():
            return cand
    return None


def asset_path(*parts: str, explicit: str | Path | None = None) -> Path | None:
    """Path of a file under the assets root, or None when the root or the file is missing."""
    root = assets_root(explicit)
    if root is None:
        return None
    p = root.joinpath(*parts)
    return p if p.exists() else None


def nb201_table_path(explicit: str | Path | None = None) -> Path | None:
    """NAS-Bench-201 ground-truth CSV: ``DFNAS_NB201`` env var, else ``<assets>/nb201/nats_bench.csv``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DFNAS_NB201")
    if env:
        return Path(env)
    return asset_path("nb201", "nats_bench.csv")
