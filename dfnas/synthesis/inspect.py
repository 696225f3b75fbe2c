"""How teacher-like is a dataset? ``inspect_dataset`` (synthetic or real, side by side) and
``evaluate_teacher`` (top-1 on real data, for ``dfnas eval-teacher``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from dfnas.data import open_dataset
from dfnas.data.imageset import ImageSet
from dfnas.errors import DataError
from dfnas.teachers.loader import TeacherConfig, load_teacher
from dfnas.teachers.teacher import Teacher


class _BNMoments:
    """Accumulates per-channel sums of each BatchNorm's input over a whole dataset (several batches)."""

    def __init__(self, teacher: Teacher) -> None:
        self.bns = teacher.batchnorms()
        self.count = [0] * len(self.bns)
        self.s1: list[torch.Tensor | None] = [None] * len(self.bns)
        self.s2: list[torch.Tensor | None] = [None] * len(self.bns)
        self.active = True  # off while a second pass over the same batch runs
        self.handles = [bn.register_forward_hook(self._hook(i)) for i, bn in enumerate(self.bns)]

    def _hook(self, i: int):
        def hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _o: object) -> None:
            if not self.active:
                return
            x = inputs[0].double()
            dims = [0] + list(range(2, x.dim()))  # (B, C, H, W) -> per channel (C,)
            s1, s2 = x.sum(dims), x.pow(2).sum(dims)
            self.count[i] += x.numel() // x.shape[1]
            self.s1[i] = s1 if self.s1[i] is None else self.s1[i] + s1
            self.s2[i] = s2 if self.s2[i] is None else self.s2[i] + s2

        return hook

    def distance(self) -> float:
        """Sum over layers of ||mean - running_mean||_2 + ||var - running_var||_2 (dataset statistics)."""
        total = 0.0
        for i, bn in enumerate(self.bns):
            s1, s2 = self.s1[i], self.s2[i]
            if s1 is None or s2 is None or bn.running_mean is None or bn.running_var is None:
                continue
            mean = s1 / self.count[i]
            var = s2 / self.count[i] - mean.pow(2)
            total += float(torch.linalg.vector_norm(mean - bn.running_mean.double())
                           + torch.linalg.vector_norm(var - bn.running_var.double()))
        return total

    def close(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


@torch.no_grad()
def dataset_metrics(ds: ImageSet, teacher: Teacher, batch_size: int = 250) -> dict[str, Any]:
    """Teacher agreement with the targets, entropy, class counts, BN distance and feature diversity.

    Everything is measured on the centre crops (what evaluation and the stored logits see).
    """
    spec = teacher.spec
    if ds.num_classes != teacher.num_classes:
        raise DataError(f"dataset has {ds.num_classes} classes but teacher {spec.name!r} has {teacher.num_classes}")
    if ds.images.shape[1] != spec.in_channels or ds.input_size != spec.input_size:
        raise DataError(f"dataset images are {ds.images.shape[1]}-channel {ds.input_size}px but teacher "
                        f"{spec.name!r} takes {spec.in_channels}-channel {spec.input_size}px inputs")
    device = teacher.mean.device
    moments = _BNMoments(teacher)
    agree, entropy, feat_sum, feat_n = 0, 0.0, None, 0
    try:
        for i in range(0, len(ds), batch_size):
            imgs = ds.images[i:i + batch_size]
            h, w = imgs.shape[-2:]
            top, left = (h - ds.input_size) // 2, (w - ds.input_size) // 2
            x = imgs[..., top:top + ds.input_size, left:left + ds.input_size].float().div(255.0).to(device)
            feats = teacher.features(x)  # (B, D); BN hooks fire here
            moments.active = False
            logits = teacher(x)  # (B, K)
            moments.active = True
            p = torch.softmax(logits.double(), 1)
            entropy += float(-(p * p.clamp_min(1e-30).log()).sum(1).sum())
            agree += int((logits.argmax(1).cpu() == ds.targets[i:i + batch_size].argmax(1)).sum())
            # diversity via sum of unit vectors: sum_{i != j} cos_ij = ||sum_i u_i||^2 - N, O(N D) not O(N^2)
            u = torch.nn.functional.normalize(feats.double(), dim=1)
            feat_sum = u.sum(0) if feat_sum is None else feat_sum + u.sum(0)
            feat_n += len(u)
    finally:
        moments.close()
    n = len(ds)
    mean_cos = (float(feat_sum.pow(2).sum()) - n) / (n * (n - 1)) if feat_sum is not None and n > 1 else math.nan
    counts = ds.hard_labels.bincount(minlength=ds.num_classes).tolist()
    out: dict[str, Any] = {
        "images": n,
        "agreement": agree / n if n else math.nan,
        "mean_entropy": entropy / n if n else math.nan,
        "class_counts": counts,
        "bn_distance": moments.distance(),
        "diversity": 1.0 - mean_cos,
    }
    if ds.rounds is not None and int(ds.rounds.max()) > 0:
        per_round = {}
        for r in sorted(set(ds.rounds.tolist())):
            per_round[str(r)] = int((ds.rounds == r).sum())
        out["images_per_round"] = per_round
    return out


def inspect_dataset(path: str | Path, teacher: Teacher | TeacherConfig | str | None = None,
                    real: str | Path | None = None, device: str | torch.device = "cpu",
                    batch_size: int = 250) -> dict[str, Any]:
    """Metrics of the dataset at ``path`` (and of the real dataset ``real``, side by side when given).

    ``teacher`` defaults to the teacher named in a synthetic dataset's manifest.
    """
    ds = open_dataset(path)
    if teacher is None or isinstance(teacher, (str, TeacherConfig)):
        name = teacher if teacher is not None else ds.info.get("teacher", {}).get("name")
        if not name:
            raise DataError(f"{str(path)!r} names no teacher (not a synthesized dataset); pass --teacher")
        teacher = load_teacher(name, device)
    report: dict[str, Any] = {"teacher": teacher.spec.name, "dataset": str(path),
                              "kind": ds.info.get("kind", "synthetic"),
                              "metrics": dataset_metrics(ds, teacher, batch_size)}
    if real is not None:
        report["real"] = str(real)
        report["real_metrics"] = dataset_metrics(open_dataset(real), teacher, batch_size)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A printable table of ``inspect_dataset``'s report (one column per dataset)."""
    cols = [("dataset", report["metrics"])]
    if "real_metrics" in report:
        cols.append(("real", report["real_metrics"]))
    rows = [("images", "images", "{:d}"), ("teacher agreement", "agreement", "{:.2%}"),
            ("mean teacher entropy (nats)", "mean_entropy", "{:.3f}"),
            ("BN-statistics distance", "bn_distance", "{:.3f}"),
            ("diversity (1 - mean cos)", "diversity", "{:.3f}")]
    lines = [f"teacher: {report['teacher']}", f"dataset: {report['dataset']}"]
    if "real" in report:
        lines.append(f"real:    {report['real']}")
    head = f"{'metric':30s}" + "".join(f"{name:>14s}" for name, _ in cols)
    lines += [head, "-" * len(head)]
    for label, key, fmt in rows:
        lines.append(f"{label:30s}" + "".join(f"{fmt.format(m[key]):>14s}" for _, m in cols))
    for _, m in cols[:1]:
        lines.append(f"{'class counts (dataset)':30s}  {m['class_counts']}")
    if len(cols) > 1:
        lines.append(f"{'class counts (real)':30s}  {cols[1][1]['class_counts']}")
    return "\n".join(lines)


@torch.no_grad()
def evaluate_teacher(teacher: Teacher | TeacherConfig | str, data: str | Path, device: str | torch.device = "cpu",
                     batch_size: int = 500) -> dict[str, Any]:
    """Top-1 accuracy (and per-class accuracy) of ``teacher`` on the real dataset at ``data`` (centre crops)."""
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(teacher, device)
    ds = open_dataset(data)
    if ds.num_classes != teacher.num_classes:
        raise DataError(f"dataset {str(data)!r} has {ds.num_classes} classes but teacher {teacher.spec.name!r} "
                        f"has {teacher.num_classes}")
    h, w = ds.images.shape[-2:]
    s = teacher.spec.input_size
    if min(h, w) < s:
        raise DataError(f"dataset {str(data)!r} has {h}x{w} images, smaller than the teacher's {s}px input")
    top, left = (h - s) // 2, (w - s) // 2
    x = ds.images[..., top:top + s, left:left + s].float().div(255.0).to(teacher.mean.device)
    pred = teacher.predict(x, batch_size).argmax(1).cpu()
    labels = ds.hard_labels
    correct = pred == labels
    per_class = [float(correct[labels == c].float().mean()) if bool((labels == c).any()) else math.nan
                 for c in range(ds.num_classes)]
    return {"teacher": teacher.spec.name, "data": str(data), "images": len(ds), "top1": float(correct.float().mean()),
            "per_class_top1": per_class, "class_names": list(ds.class_names)}
