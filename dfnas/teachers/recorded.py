"""The teacher of a command that acts on a dataset: what the flags give, completed from the dataset's manifest.

A synthesized dataset records its teacher: the reference, the weights file (absolute path) with its SHA-256,
and the declared input (channels, size, class count, normalization). ``inspect``, ``search`` and ``train``
reuse it when no teacher is named or the same one is, so a ``file.py:factory`` teacher keeps its weights and
a teacher normalized with its own mean/std keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dfnas.data.shards import MANIFEST, read_manifest
from dfnas.errors import TeacherError
from dfnas.teachers.hub import TEACHERS
from dfnas.teachers.loader import is_factory_reference, load_teacher, teacher_config
from dfnas.teachers.teacher import Teacher

_DECLARED = ("input_size", "in_channels", "num_classes", "mean", "std")  # taken from the recorded identity
_OPTIONS = ("download", "allow_no_batchnorm", "factory_loads_weights")  # taken from the recorded config


def _locate(recorded: str, root: Path) -> str:
    """A recorded file path: absolute as it is; a relative one (older manifests) from the working directory
    when it exists there, else from the dataset directory ``root`` when it exists there."""
    p = Path(recorded)
    if p.is_absolute() or p.exists() or not (root / p).exists():
        return recorded
    return str(root / p)


def _file_of(ref: str) -> tuple[Path, str]:
    """(file, factory) of a file reference: ``a.py:f`` -> (a.py, f); a TorchScript file -> (file, '')."""
    if is_factory_reference(ref):
        path, _, fn = ref.rpartition(":")
        return Path(path), fn
    return Path(ref), ""


def _same_teacher(given: str, recorded: dict[str, Any], source: str) -> bool:
    """Whether the reference ``given`` on the command line names the recorded teacher (paths compared resolved;
    a TorchScript file also matches the recorded absolute ``source``)."""
    name = str(recorded["name"])
    if given == name or given in TEACHERS or name in TEACHERS:
        return given == name
    (g_file, g_fn), (r_file, r_fn) = _file_of(given), _file_of(name)
    if g_fn != r_fn:
        return False
    return g_file.resolve() == r_file.resolve() or (not g_fn and bool(source) and g_file.resolve() == Path(source))


def recorded_teacher(dataset: str | Path) -> tuple[dict[str, Any], str, str] | None:
    """The teacher in the manifest of the synthesized dataset ``dataset``: (TeacherConfig fields, the recorded
    SHA-256 of its weights file ('' when none), the recorded source file); None without a manifest or teacher.

    The weights path is the recorded absolute one; a relative path of an older manifest is looked up from the
    working directory, then from the dataset directory.
    """
    root = Path(dataset)
    if not (root / MANIFEST).is_file():
        return None
    man = read_manifest(root)
    ident = man.get("teacher") or {}
    saved = (man.get("config") or {}).get("teacher") or {}
    name = ident.get("name") or saved.get("name")
    if not name:
        return None
    fields: dict[str, Any] = {k: ident[k] for k in _DECLARED if ident.get(k) is not None}
    fields.update({k: saved[k] for k in _OPTIONS if k in saved})
    fields["name"] = str(name)
    weights = _locate(str(saved["weights"]), root) if saved.get("weights") else None
    source, sha = str(ident.get("source") or ""), str(ident.get("sha256") or "")
    if sha and source:  # ``source`` is the file that was hashed: the checkpoint, or the TorchScript model
        source = _locate(source, root)
        if is_factory_reference(fields["name"]) or (fields["name"] in TEACHERS and Path(source).is_file()):
            weights = source
        elif fields["name"] not in TEACHERS and not Path(fields["name"]).is_file():
            fields["name"] = source  # a TorchScript file named relative to another working directory
    fields["weights"] = weights
    return fields, sha, source


def teacher_for_dataset(dataset: str | Path | None, name: str | None = None, weights: str | None = None,
                        settings: list[str] | None = None, device: torch.device | str = "cpu") -> Teacher | None:
    """The teacher for a command acting on ``dataset``: ``name``, ``weights`` and ``settings``
    (``teacher.KEY=VALUE`` declarations of the teacher flags) when given, the rest from the dataset's manifest
    when it records the same teacher (or ``name`` is None).

    Weights taken from the manifest must still have the recorded SHA-256 (TeacherError otherwise); explicit
    ``weights`` are not checked. Returns None when no teacher is named and the dataset records none.
    """
    recorded = recorded_teacher(dataset) if dataset is not None else None
    if recorded is None or (name is not None and not _same_teacher(name, recorded[0], recorded[2])):
        if name is None:
            if weights or settings:
                raise TeacherError(f"teacher weights or settings were given but no --teacher, and {str(dataset)!r} "
                                   "records no teacher: pass --teacher")
            return None
        return load_teacher(teacher_config(name, weights, settings), device)
    fields, sha, _source = recorded
    fields = dict(fields)
    ref, saved_weights = fields.pop("name"), fields.pop("weights")
    cfg = teacher_config(name or ref, saved_weights if weights is None else weights, settings, **fields)
    where = f"the teacher recorded in the manifest of {str(dataset)!r}"
    try:
        teacher = load_teacher(cfg, device)
    except TeacherError as e:
        raise TeacherError(f"{e} ({where}; pass --teacher and --weights to give it explicitly)") from None
    if weights is None and sha and teacher.spec.sha256 != sha:
        raise TeacherError(f"teacher weights {teacher.spec.source!r} have SHA-256 {teacher.spec.sha256[:16]}..., but "
                           f"the manifest of {str(dataset)!r} records {sha[:16]}... for the teacher that made the "
                           "dataset: the file was changed or replaced. Restore it, or pass --weights to use a "
                           "weights file explicitly")
    return teacher
