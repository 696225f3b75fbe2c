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


def class_similarity(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """S (K, K): S[i, j] = mean probability of class j over the images whose class is i.

    ``probs`` (N, K) are teacher probabilities, ``labels`` (N,) the images' classes (the target class of a
    synthetic image, the true class of a real one). Rows of absent classes are NaN.
    """
    s = torch.full((num_classes, num_classes), float("nan"), dtype=torch.float64)
    for i in range(num_classes):
        mask = labels == i
        if bool(mask.any()):
            s[i] = probs[mask].double().mean(0)
    return s


def similarity_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of the off-diagonal entries of two (K, K) class-similarity matrices
    (entries that are NaN in either are left out; NaN when fewer than 3 remain)."""
    from scipy.stats import spearmanr

    k = a.shape[0]
    off = ~torch.eye(k, dtype=torch.bool)
    x, y = a[off], b[off]
    keep = torch.isfinite(x) & torch.isfinite(y)
    if int(keep.sum()) < 3:
        return math.nan
    rho = spearmanr(x[keep].numpy(), y[keep].numpy()).statistic
    return float(rho)


class _BNMoments:
    """Accumulates per-channel sums of each BatchNorm's input over a whole dataset (several batches)."""

    def __init__(self, teacher: Teacher) -> None:
        # hooks cannot read a TorchScript model's BatchNorm inputs: its distance is not measurable (NaN)
        self.measurable = not any(isinstance(m, torch.jit.ScriptModule) for m in teacher.batchnorms())
        self.bns = teacher.batchnorms() if self.measurable else []
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
        """Sum over layers of ||mean - running_mean||_2 + ||var - running_var||_2 (dataset statistics); NaN
        for a TorchScript teacher."""
        if not self.measurable:
            return math.nan
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
def dataset_metrics(ds: ImageSet, teacher: Teacher, batch_size: int = 250,
                    reference_similarity: torch.Tensor | None = None) -> dict[str, Any]:
    """Teacher agreement with the targets, entropy, class counts, BN distance and feature diversity, plus the
    class-similarity matrix (``class_similarity`` of the teacher's probabilities by target class) and, per
    recursion round, entropy, second-class mass and the Spearman correlation of its similarity matrix with
    ``reference_similarity`` (e.g. a real set's) when given.

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
    probs: list[torch.Tensor] = []
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
            probs.append(p.cpu())
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
    p_all = torch.cat(probs) if probs else torch.empty(0, ds.num_classes, dtype=torch.float64)
    labels = ds.hard_labels
    sim = class_similarity(p_all, labels, ds.num_classes)
    out["class_similarity"] = [[round(float(v), 6) for v in row] for row in sim]
    if reference_similarity is not None:
        out["similarity_spearman"] = similarity_spearman(sim, reference_similarity)
    rounds = ds.rounds if ds.rounds is not None else torch.zeros(n, dtype=torch.long)
    per_round: dict[str, dict[str, Any]] = {}
    for r in sorted(set(rounds.tolist())):
        m = rounds == r
        p = p_all[m]
        top2 = p.topk(min(2, p.shape[1]), dim=1).values
        rec: dict[str, Any] = {"images": int(m.sum()),
                               "agreement": float((p.argmax(1) == labels[m]).double().mean()),
                               "mean_entropy": float(-(p * p.clamp_min(1e-30).log()).sum(1).mean()),
                               "second_class_mass": float(top2[:, -1].mean())}
        if reference_similarity is not None:
            rec["similarity_spearman"] = similarity_spearman(class_similarity(p, labels[m], ds.num_classes),
                                                             reference_similarity)
        per_round[str(r)] = rec
    out["per_round"] = per_round
    return out


def inspect_dataset(path: str | Path, teacher: Teacher | TeacherConfig | str | None = None,
                    real: str | Path | None = None, device: str | torch.device = "cpu",
                    batch_size: int = 250, weights: str | None = None,
                    teacher_settings: list[str] | None = None) -> dict[str, Any]:
    """Metrics of the dataset at ``path`` (and of the real dataset ``real``, side by side when given).

    ``teacher`` (a reference, with ``weights`` and ``teacher_settings`` -- ``teacher.KEY=VALUE`` declarations --
    when given) is completed from a synthetic dataset's manifest, and defaults to the teacher recorded there
    (its weights, SHA-256 checked, and declared input; see ``teacher_for_dataset``).
    """
    ds = open_dataset(path)  # a damaged dataset is reported before any teacher is loaded
    if teacher is None or isinstance(teacher, str):
        from dfnas.teachers.recorded import teacher_for_dataset

        found = teacher_for_dataset(path, teacher, weights, teacher_settings, device)
        if found is None:
            raise DataError(f"{str(path)!r} names no teacher (not a synthesized dataset); pass --teacher")
        teacher = found
    elif isinstance(teacher, TeacherConfig):
        teacher = load_teacher(teacher, device)
    real_metrics, reference = None, None
    if real is not None:
        real_metrics = dataset_metrics(open_dataset(real), teacher, batch_size)
        reference = torch.tensor(real_metrics["class_similarity"], dtype=torch.float64)
    report: dict[str, Any] = {"teacher": teacher.spec.name, "dataset": str(path),
                              "kind": ds.info.get("kind", "synthetic"),
                              "metrics": dataset_metrics(ds, teacher, batch_size, reference)}
    if real_metrics is not None:
        report["real"] = str(real)
        report["real_metrics"] = real_metrics
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
    m = report["metrics"]
    if "similarity_spearman" in m:
        lines.append(f"{'class-similarity Spearman':30s}{m['similarity_spearman']:>14.3f}   (vs the real set, T=1)")
    lines.append("per recursion round:")
    head = ("round", 5), ("images", 7), ("agreement", 10), ("entropy", 9), ("2nd-class", 10), ("Spearman", 9)
    lines.append("  " + " ".join(f"{name:>{width}s}" for name, width in head))
    for r, rec in m.get("per_round", {}).items():
        rho = rec.get("similarity_spearman")
        lines.append(f"  {r:>5s} {rec['images']:>7d} {rec['agreement']:>10.2%} {rec['mean_entropy']:>9.3f} "
                     f"{rec['second_class_mass']:>10.3f} {'-' if rho is None else f'{rho:.3f}':>9s}")
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
