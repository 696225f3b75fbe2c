"""Supervision losses shared by every search method and by training from scratch.

Which loss applies follows the dataset's ``label_mode`` (see ``ImageSet.supervision``):
- ``distill``: stored teacher logits (B, K); KL(teacher_T || student_T) * T^2 (Hinton et al. 2015), where
  ``_T`` is the softmax at temperature T; the T^2 keeps gradient magnitudes comparable across T;
- ``soft``: class probabilities (B, K); cross-entropy against them;
- ``hard``: class indices (B,); ordinary cross-entropy.
With an online ``Teacher`` the targets are recomputed on the very batch the student sees (after random
crop and flip), and the distillation loss is used whatever the label mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.data.imageset import LABEL_MODES
from dfnas.errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2, averaged over the batch. Both (B, K)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    # sum_k p_t (log p_t - log p_s), computed from log-probabilities so p_t = 0 entries give 0, not NaN
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return kl.mean() * (t * t)


def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """-sum_k probs_k log softmax(logits)_k, averaged over the batch. Both (B, K)."""
    return -(probs * F.log_softmax(logits, dim=1)).sum(1).mean()


class Criterion:
    """``criterion(logits, x, target) -> loss`` for a label mode, optionally with an online teacher.

    ``x`` (B, C, S, S) is the batch the student saw; it is only used by the online teacher.
    """

    def __init__(self, label_mode: str, temperature: float = 4.0, teacher: nn.Module | None = None) -> None:
        if label_mode not in LABEL_MODES:
            raise ConfigError(f"label_mode {label_mode!r} is not one of {list(LABEL_MODES)}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.label_mode = label_mode
        self.temperature = float(temperature)
        self.teacher = teacher

    def __call__(self, logits: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_on(logits, self.targets(x, target))

    def targets(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """What the loss compares the student with on batch ``x``: the online teacher's logits (B, K) when
        there is one, else the stored supervision ``target``."""
        if self.teacher is None:
            return target
        with torch.no_grad():
            label = getattr(self.teacher, "logits", self.teacher)  # a Teacher's compiled inference path
            return label(x)

    def loss_on(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss against ``targets(x, target)`` (computed once when several paths share a batch)."""
        if self.teacher is not None or self.label_mode == "distill":
            return kd_loss(logits, target, self.temperature)
        if self.label_mode == "soft":
            return soft_cross_entropy(logits, target)
        return F.cross_entropy(logits, target)

    def classes(self, target: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) of a supervision batch: hard labels, or argmax of teacher logits/probabilities."""
        return target if target.dim() == 1 else target.argmax(1)
