"""What ``run_search`` and ``train_network`` record about their data and teacher (part of a run's identity).

The identity check itself (resume or refuse) is ``dfnas.rundir.prepare_run_dir``, shared with ``dfnas run``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfnas.data.imageset import ImageSet
from dfnas.errors import DataError


def fingerprint(ds: ImageSet) -> str:
    """SHA-256 (16 hex digits) of the images, targets and stored logits: identifies the data exactly."""
    h = hashlib.sha256()
    for t in (ds.images, ds.targets, ds.logits):
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:16]


def dataset_info(ds: ImageSet) -> dict[str, Any]:
    """What a run records about its dataset, including the teacher that labelled synthetic data.

    The source is the path as given, or ``info["recorded_source"]`` when set (see ``within_run``).
    """
    return {
        "source": ds.info.get("recorded_source", ds.info.get("source")), "kind": ds.info.get("kind"), "n": len(ds),
        "num_classes": ds.num_classes, "input_size": ds.input_size, "image_shape": list(ds.images.shape[1:]),
        "label_mode": ds.label_mode, "teacher": ds.info.get("teacher"),
        "dataset_config_hash": ds.info.get("config_hash"),
        "fingerprint": fingerprint(ds),
    }


def within_run(ds: ImageSet, run_dir: str | Path) -> ImageSet:
    """``ds`` recording its source relative to ``run_dir`` when it lies inside it (e.g. ``data`` for the
    dataset of a ``dfnas run`` directory), so that the identity of a search or training run on it, and its
    hash, do not depend on how the run directory was spelled or where it has been moved."""
    src = ds.info.get("source")
    if not src:
        return ds
    try:
        rel = Path(src).resolve().relative_to(Path(run_dir).resolve())
    except ValueError:  # outside the run directory: recorded as given
        return ds
    return dataclasses.replace(ds, info={**ds.info, "recorded_source": rel.as_posix()})


def with_label_mode(ds: ImageSet, label_mode: str | None) -> ImageSet:
    """``ds`` supervised by ``label_mode`` (None keeps the dataset's own); DataError if impossible."""
    if label_mode is None or label_mode == ds.label_mode:
        return ds
    return dataclasses.replace(ds, label_mode=label_mode)  # re-validates: 'distill' needs stored logits


def resolve_teacher(teacher: Any, device: torch.device, ds: ImageSet) -> Any:
    """None, a loaded ``Teacher``, or a teacher name/file loaded with ``load_teacher``; checked against ``ds``."""
    if teacher is None:
        return None
    if isinstance(teacher, str):
        from dfnas.teachers import load_teacher

        teacher = load_teacher(teacher, device=device)
    else:
        teacher = teacher.to(device)
    k = getattr(teacher, "num_classes", None)
    if k is not None and k != ds.num_classes:
        raise DataError(f"online teacher has {k} classes but the dataset has {ds.num_classes}")
    return teacher


def teacher_identity(teacher: Any) -> dict[str, Any] | None:
    spec = getattr(teacher, "spec", None)
    if teacher is None:
        return None
    return spec.identity() if spec is not None else {"class": type(teacher).__name__}
