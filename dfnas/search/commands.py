"""Library functions behind ``dfnas search`` and ``dfnas nb201 lookup`` (``dfnas train``: ``dfnas.train.commands``).

Each turns command-line style inputs (a YAML file, ``KEY=VALUE`` overrides, flags) into a typed config and
calls ``run_search`` / the NAS-Bench-201 table, so the CLI itself only parses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.config import build_config, load_yaml
from dfnas.distributed import process_group
from dfnas.errors import DfnasError
from dfnas.search.api import SearchConfig, SearchResult, run_search
from dfnas.spaces.archfile import parse_arch_string, read_arch_file


def online_teacher(data: str | Path, teacher: str | None, weights: str | None,
                   settings: list[str] | None) -> Any:
    """The online teacher the flags ask for (None without any): ``teacher``, ``weights`` and ``settings``
    (``teacher.KEY=VALUE`` declarations) as given, completed from the manifest of ``data`` when it records the
    same teacher (its weights, SHA-256 checked, and declared input). Loaded on the CPU; the run moves it."""
    if teacher is None and weights is None and not settings:
        return None
    from dfnas.teachers.recorded import teacher_for_dataset

    return teacher_for_dataset(data, teacher, weights, settings)


def search_config(*, method: str | None = None, space: str | None = None, epochs: int | None = None,
                  overrides: list[str] | None = None, config: str | Path | None = None, seed: int | None = None,
                  device: str | None = None) -> SearchConfig:
    """``dfnas search``'s configuration: config file < ``--set`` overrides < flags (``dfnas.config.merge_layers``).

    ``--set space.C=16`` is short for ``space.options.C=16``; ``--space`` naming another space than the config
    file drops the file's options of that space.
    """
    base: dict[str, Any] = load_yaml(config) if config else {}
    if space is not None and isinstance(base.get("space"), dict) and base["space"].get("name") not in (None, space):
        base["space"] = {}  # options of another space do not apply
    flags = {"method": method, "epochs": epochs, "seed": seed, "device": device, "space.name": space}
    return build_config(SearchConfig, base, overrides, flags, sections=("space",), where="search")


def search_command(out: str | Path, data: str | Path, *, method: str | None = None, space: str | None = None,
                   epochs: int | None = None, overrides: list[str] | None = None, config: str | Path | None = None,
                   seed: int | None = None, device: str | None = None, teacher: str | None = None,
                   table: str | Path | None = None, progress: bool = True, weights: str | None = None,
                   teacher_settings: list[str] | None = None) -> SearchResult:
    """``dfnas search``: ``search_config`` (config file < ``--set`` < flags), then ``run_search``.

    ``teacher`` (online distillation) is completed from the dataset's manifest; see ``online_teacher``. Under
    ``torchrun`` the process group is started here from the environment and every rank searches
    (``dfnas.search.distributed``); rank 0 writes ``out``.
    """
    cfg = search_config(method=method, space=space, epochs=epochs, overrides=overrides, config=config, seed=seed,
                        device=device)
    tch = online_teacher(data, teacher, weights, teacher_settings)
    with process_group(cfg.device) as (ctx, dev):
        return run_search(cfg, data, out, device=dev, progress=progress and ctx.is_main, table_path=table,
                          teacher=tch, dist=ctx)


def nb201_lookup(arch: str | Path, table: str | Path | None = None) -> dict[str, Any]:
    """NAS-Bench-201 ground truth of an architecture string, or of the arch in an arch.json/result.json."""
    from dfnas.spaces.nb201_table import NB201Table

    p = Path(str(arch))
    if p.suffix.lower() == ".json" and not p.is_file():
        raise DfnasError(f"architecture file {str(p)!r} does not exist")
    if p.suffix.lower() == ".json":
        from dfnas.io import read_json

        obj = read_json(p, what="architecture file")
        if isinstance(obj, dict) and "arch_str" in obj:  # result.json
            a = parse_arch_string(str(obj["arch_str"]))
        else:
            a, _ = read_arch_file(p)
    else:
        a = parse_arch_string(str(arch), "nb201")
    if a.space != "nb201":
        raise DfnasError(f"NAS-Bench-201 ground truth exists only for nb201 architectures, not {a.space!r}")
    return NB201Table.load(table).lookup(a)
