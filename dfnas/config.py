"""Typed configs: dataclasses built from dicts/YAML that reject unknown keys, plus dotted overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dfnas.errors import ConfigError

C = TypeVar("C")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to annotation ``tp`` (dataclasses, Optional, list/tuple, primitives)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_t = args[0] if args else Any
        items = [_coerce(v, item_t, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError naming the nearest key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        import difflib

        hints_txt = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=1)
            hints_txt.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints_txt)}; known keys: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return obj


def _default(f: dataclasses.Field) -> Any:
    """A field's default value, also for fields with a ``default_factory`` (e.g. a nested options block)."""
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(v: Any, skip_later: bool) -> Any:
    """Dataclasses, tuples and paths -> JSON-able values; ``skip_later`` drops ``ADDED_LATER`` fields at their
    defaults."""
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name), skip_later) for f in dataclasses.fields(v)
                if not (skip_later and f.metadata.get("added_later") and getattr(v, f.name) == _default(f))}
    if isinstance(v, (list, tuple)):
        return [_plain(x, skip_later) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x, skip_later) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    return _plain(cfg, skip_later=False)


# field metadata of settings added after run directories existed: at their default they reproduce the earlier
# behaviour, so identities leave them out there and older runs keep their hashes
ADDED_LATER = {"added_later": True}


def identity_dict(cfg: Any) -> dict[str, Any]:
    """``to_dict`` for resume identities and cache keys: fields marked ``ADDED_LATER`` are left out while they
    hold their default."""
    return _plain(cfg, skip_later=True)


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": value}`` (used to name the keys in which two configs differ)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten_dict(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def describe_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``"a.b: old -> new, c: ..."``: the dotted keys whose values differ between two nested configs, sorted,
    at most ``limit`` of them (then ``...``); used whenever a resume is refused for another configuration."""
    a, b = flatten_dict(old), flatten_dict(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:limit])
    return shown + (", ..." if len(diff) > limit else "")


def _dataclass_in(tp: Any) -> Any:
    """The dataclass ``tp`` stands for (itself, or the dataclass of an Optional/Union), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def config_keys(cls: Any, prefix: str = "") -> list[str]:
    """Every dotted key of dataclass ``cls``: sections and the settings inside them."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            out.extend(config_keys(sub, key + "."))
    return out


def check_override_keys(cls: Any, overrides: list[str], flag: str = "--set",
                        shown: list[str] | None = None) -> None:
    """Raise ConfigError naming the ``flag KEY=VALUE`` argument whose key is not a key of dataclass ``cls``
    (mappings such as space options accept any key below them), with the closest valid keys.

    ``shown``: the arguments as the user wrote them, when ``overrides`` were rewritten (shorthands).
    """
    import difflib

    for i, ov in enumerate(overrides):
        key = ov.split("=", 1)[0].strip()
        tp: Any = cls
        for depth, part in enumerate(key.split(".")):
            dc = _dataclass_in(tp)
            if dc is None:  # below a mapping or a plain value: from_dict checks what it gets
                break
            names = [f.name for f in dataclasses.fields(dc)]
            if part in names:
                tp = typing.get_type_hints(dc)[part]
                continue
            section = ".".join(key.split(".")[:depth])
            parts = difflib.get_close_matches(part, names, n=3)
            near = [f"{section}.{n}" if section else n for n in parts]
            near += [k for k in difflib.get_close_matches(key, config_keys(cls), n=3) if k not in near]
            where = f"in section {section!r}" if section else "at the top level"
            arg = shown[i] if shown is not None else ov
            raise ConfigError(f"{flag} {arg}: unknown key {part!r} {where}"
                              + (f" (did you mean {parts[0]!r}?)" if parts else "")
                              + (f"; close valid keys: {', '.join(near[:4])}" if near else
                                 f"; valid keys there: {', '.join(sorted(names))}"))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, returning a new dict."""
    import copy

    out = copy.deepcopy(data)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected KEY=VALUE, e.g. search.epochs=10")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a clear error for missing files or bad syntax."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping at top level")
    return data


def expand_shorthands(overrides: list[str], sections: tuple[str, ...] = ()) -> list[str]:
    """``SECTION.KEY=V`` -> ``SECTION.options.KEY=V`` for each of ``sections`` (space settings: ``space.C=16``
    or ``search.space.C=16``), unless KEY is ``name`` or ``options`` itself; other overrides unchanged."""
    out = []
    for ov in overrides:
        key, sep, val = ov.partition("=")
        key = key.strip()
        for section in sections:
            rest = key[len(section) + 1:] if key.startswith(section + ".") else ""
            if rest and rest.split(".", 1)[0] not in ("name", "options"):
                key = f"{section}.options.{rest}"
                break
        out.append(f"{key}{sep}{val}")
    return out


def set_values(data: dict[str, Any], values: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """A copy of ``data`` with dotted ``values`` (key -> value, taken as is, not parsed) set; None values are
    skipped (a command-line flag left unset keeps the lower layers' value)."""
    import copy

    out = copy.deepcopy(data)
    for key, value in values.items():
        if value is None:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {part!r} must be a mapping to set {key}")
        node[parts[-1]] = value
    return out


def merge_layers(cls: Any, base: Mapping[str, Any] | None = None, overrides: list[str] | None = None,
                 flags: Mapping[str, Any] | None = None, *, sections: tuple[str, ...] = (),
                 where: str = "config") -> dict[str, Any]:
    """The configuration layers of every command, in the one order of precedence:

        preset < config file  (``base``: the caller merges the two, a file's keys over the preset's)
               < ``--set KEY=VALUE`` overrides (values parsed as YAML; ``sections`` take the space shorthand)
               < explicit flags (``flags``: dotted key -> value, taken as is; None = flag not given)

    The override keys are checked against dataclass ``cls`` (a typo names its ``--set`` argument); the result
    is the merged mapping, for ``from_dict(cls, ...)``.
    """
    given = list(overrides or [])
    expanded = expand_shorthands(given, sections)
    check_override_keys(cls, expanded, shown=given)
    return set_values(apply_overrides(dict(base or {}), expanded), dict(flags or {}), where)


def build_config(cls: type[C], base: Mapping[str, Any] | None = None, overrides: list[str] | None = None,
                 flags: Mapping[str, Any] | None = None, *, sections: tuple[str, ...] = (),
                 where: str = "config") -> C:
    """``from_dict(cls, merge_layers(...))``: a typed config from preset/file < ``--set`` < flags."""
    return from_dict(cls, merge_layers(cls, base, overrides, flags, sections=sections, where=where), where)
