"""Loss terms of model inversion: target cross-entropy, BatchNorm feature statistics, and image priors.

All terms are means over the batch so their weights do not depend on the batch size. Images ``x`` are
(B, C, H, W) pixels in [0, 1]; the teacher normalizes internally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import TeacherError
from dfnas.teachers.teacher import Teacher


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                       cap: float = 1.0) -> torch.Tensor:
    """Cross-entropy of target distributions ``targets`` (B, K) to ``softmax(logits / T)`` (B, K).

    With one-hot targets and T = 1 this is the ordinary hard-label cross-entropy. ``cap`` < 1 leaves out
    (zero loss and gradient) each image whose teacher probability (T = 1) of its top target class is already
    at least ``cap``; the mean stays over all B images, so the term shrinks as images reach the cap.
    """
    logp = F.log_softmax(logits / temperature, dim=1)
    per_image = -(targets * logp).sum(1)  # (B,)
    if cap < 1.0:
        with torch.no_grad():
            top = targets.argmax(1, keepdim=True)  # (B, 1)
            below = torch.softmax(logits, 1).gather(1, top).squeeze(1) < cap  # (B,)
        per_image = per_image * below
    return per_image.mean()


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean |difference| of vertical plus horizontal neighbours."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation: mean squared difference of vertical plus horizontal neighbours."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def l2_prior(z: torch.Tensor) -> torch.Tensor:
    """Mean squared value of the teacher-normalized image ``z``: pulls pixels towards the data mean."""
    return z.pow(2).mean()


class BNStatsLoss:
    """Forward hooks on each BatchNorm's *input* comparing batch statistics with the running statistics.

    Per layer l: ``||mean_l - running_mean_l||_2 + ||var_l - running_var_l||_2`` (biased batch variance over
    batch and space), summed over layers with the first layer's term multiplied by ``first_multiplier``.
    Use as a context manager; ``pop()`` returns the summed loss of the last forward pass.

    With ``momentum`` m > 0 and ``ema`` (per-layer (mean, var) of earlier batches), the compared statistics
    are ``m * ema + (1 - m) * batch``: a batch is asked to bring the running average, not itself, to the
    teacher's statistics (``mixed_stats()`` returns that average after a forward pass).
    """

    def __init__(self, bns: list[nn.modules.batchnorm._BatchNorm], first_multiplier: float = 1.0,
                 momentum: float = 0.0, ema: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.bns = bns
        self.first_multiplier = first_multiplier
        self.momentum = momentum
        self.ema = ema if momentum > 0 else None
        self._stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._terms: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, index: int):
        def hook(module: nn.modules.batchnorm._BatchNorm, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
            x = inputs[0]  # (B, C, *spatial)
            spatial = list(range(2, x.dim()))
            n = x.numel() // x.shape[1]
            # sums over the contiguous spatial dims first, (B, C, H, W) -> (B, C), then over the batch in
            # float64: several times faster on CPU than var_mean over (0, 2, 3), and E[x^2] - E[x]^2 keeps
            # full precision because the small (B, C) partial sums are added in double
            s1 = (x.sum(spatial) if spatial else x).double().sum(0)  # (C,)
            s2 = ((x * x).sum(spatial) if spatial else x * x).double().sum(0)  # (C,)
            mean = s1 / n
            var = s2 / n - mean * mean  # biased batch variance
            if self.ema is not None:
                ema_mean, ema_var = self.ema[index]
                mean = self.momentum * ema_mean.double() + (1 - self.momentum) * mean
                var = self.momentum * ema_var.double() + (1 - self.momentum) * var
            self._stats[index] = (mean.detach().float(), var.detach().float())
            assert module.running_mean is not None and module.running_var is not None
            d = torch.linalg.vector_norm(mean - module.running_mean.double()) + \
                torch.linalg.vector_norm(var - module.running_var.double())
            d = d.to(x.dtype)
            self._terms.append(d * self.first_multiplier if index == 0 else d)

        return hook

    def __enter__(self) -> BNStatsLoss:
        if any(isinstance(bn, torch.jit.ScriptModule) for bn in self.bns):
            # a scripted module refuses forward hooks and a traced one never calls them
            raise TeacherError("the teacher is a TorchScript model: forward hooks cannot observe the inputs of its "
                               "BatchNorm layers, so the feature-statistics term cannot be computed (set bn_weight=0)")
        for i, bn in enumerate(self.bns):
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(f"BatchNorm layer {i} tracks no running statistics; the feature-statistics "
                                 "term needs them (set bn_weight=0)")
            self._handles.append(bn.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._terms.clear()

    def mixed_stats(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (mean, var) compared in the last forward pass (after mixing with ``ema``), detached."""
        if len(self._stats) != len(self.bns):
            raise RuntimeError("no complete forward pass ran inside the hooks")
        return [self._stats[i] for i in range(len(self.bns))]

    def pop(self) -> torch.Tensor:
        """Sum of the layer terms collected since the last ``pop`` (a scalar tensor)."""
        if not self._terms:
            raise RuntimeError("no BatchNorm statistics were collected; did the forward pass run inside the hooks?")
        out = torch.stack(self._terms).sum()
        self._terms.clear()
        return out


@dataclass
class LossWeights:
    """Weight of each term; 0 switches the term off (it is then not computed at all)."""

    ce: float = 1.0
    bn: float = 0.0
    # not a weight: the confidence at which an image's cross-entropy term switches off (soft_cross_entropy)
    ce_cap: float = 1.0
    tv_l1: float = 0.0
    tv_l2: float = 0.0
    l2: float = 0.0


def inversion_loss(teacher: Teacher, x: torch.Tensor, targets: torch.Tensor, temperature: float,
                   weights: LossWeights, bn_loss: BNStatsLoss | None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Weighted total of the active terms for pixels ``x`` (B, C, S, S) and target distributions (B, K).

    Returns (total scalar, unweighted terms by name, teacher logits (B, K)). ``bn_loss`` must be entered
    (hooks registered) when ``weights.bn > 0``.
    """
    logits = teacher(x)
    terms: dict[str, torch.Tensor] = {}
    if weights.ce > 0:
        terms["ce"] = soft_cross_entropy(logits, targets, temperature, weights.ce_cap)
    if weights.bn > 0:
        if bn_loss is None:
            raise ValueError("bn weight > 0 needs a BNStatsLoss")
        terms["bn"] = bn_loss.pop()
    if weights.tv_l1 > 0:
        terms["tv_l1"] = tv_l1(x)
    if weights.tv_l2 > 0:
        terms["tv_l2"] = tv_l2(x)
    if weights.l2 > 0:
        terms["l2"] = l2_prior(teacher.normalize(x))
    if not terms:
        raise ValueError("every loss weight is 0; at least one term must be on")
    total = torch.stack([getattr(weights, k) * v for k, v in terms.items()]).sum()
    return total, terms, logits
