"""Architecture files and NAS-Bench-201 ground truth: how a found architecture is written, read and looked up.

    DIR/arch.json   {"format": "dfnas-arch/1", "arch": Arch.to_json(), "space": Space.config(), "info"}
    DIR/arch.txt    the architecture string in the space's own format

``read_arch_file`` also accepts an export's ``arch.json``, a bare ``Arch.to_json`` object or a text file
holding an architecture string of any registered space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfnas.errors import ArchError, DfnasError
from dfnas.io import atomic_write_json, atomic_write_text, read_json
from dfnas.spaces.base import Arch, Space

ARCH_FORMAT = "dfnas-arch/1"


def write_arch_files(out_dir: Path, space: Space, arch: Arch, info: dict[str, Any] | None = None) -> None:
    """``arch.json`` ({"format", "arch": Arch.to_json(), "space": Space.config(), "info"}) and ``arch.txt``."""
    atomic_write_json(out_dir / "arch.json", {"format": ARCH_FORMAT, "arch": arch.to_json(), "space": space.config(),
                                              "info": info or {}})
    atomic_write_text(out_dir / "arch.txt", str(arch) + "\n")


def read_arch_file(path: str | Path) -> tuple[Arch, dict[str, Any] | None]:
    """(arch, space settings or None) from an ``arch.json`` written by search or export, a bare
    ``Arch.to_json`` object, or a text file holding an architecture string of a known space."""
    from dfnas.spaces import SPACES

    p = Path(path)
    if not p.is_file():
        raise DfnasError(f"architecture file {str(p)!r} does not exist")
    if p.suffix.lower() != ".json":
        return parse_arch_string(p.read_text()), None
    obj = read_json(p, what="architecture file")
    if isinstance(obj, dict) and isinstance(obj.get("arch"), dict):  # search / export layout
        space_cfg = obj.get("space") if isinstance(obj.get("space"), dict) else None
        return Arch.from_json(obj["arch"]), space_cfg
    if isinstance(obj, dict) and obj.get("space") in SPACES:
        return Arch.from_json(obj), None
    raise DfnasError(f"{str(p)!r} is not an architecture file: expected arch.json from `dfnas search` or "
                     "an object with 'space' and 'arch'")


def read_arch_or_string(arch: str | Path) -> tuple[Arch, dict[str, Any]]:
    """(arch, space settings) from an architecture file (``read_arch_file``) or, when no such file exists, an
    architecture string; the settings default to ``{"name": <the arch's space>}`` (the space's own defaults)."""
    p = Path(arch)
    a, space_cfg = read_arch_file(p) if p.exists() else (parse_arch_string(str(arch)), None)
    return a, dict(space_cfg or {"name": a.space})


def parse_arch_string(s: str, space: str | None = None) -> Arch:
    """Parse an architecture string of ``space``, or of whichever registered space accepts it.

    Without ``space`` the error names the space the string most resembles (``|`` -> nb201,
    ``Genotype(`` -> darts), else every space's complaint.
    """
    from dfnas.spaces import SPACES, get_space_cls

    if space is not None:
        return get_space_cls(space).parse(s)
    errors: dict[str, str] = {}
    for name in SPACES.names():
        try:
            return get_space_cls(name).parse(s)
        except ArchError as e:
            errors[name] = str(e)
    t = s.strip()
    likely = ("nb201" if t.startswith("|") else "darts" if t.startswith("Genotype")
              else "cifar_resnet" if t.lower().startswith("resnet") else None)
    if likely in errors:
        raise ArchError(errors[likely])
    raise ArchError(f"{t!r} is not an architecture string of any space ({'; '.join(errors.values())})")


def nb201_ground_truth(space: Space, arch: Arch, table_path: str | Path | None) -> tuple[dict | None, str | None]:
    """(NAS-Bench-201 lookup of ``arch``, None) or (None, why not): only nb201 archs, only with the table."""
    if space.name != "nb201":
        return None, f"no ground-truth table for space {space.name!r} (only nb201)"
    try:
        from dfnas.spaces.nb201_table import NB201Table

        return NB201Table.load(table_path).lookup(arch), None
    except DfnasError as e:
        return None, str(e)
