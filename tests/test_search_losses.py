"""Supervision losses: the KD formula, soft/hard cross-entropy, online teacher, class targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfnas.errors import ConfigError
from dfnas.search.losses import Criterion, kd_loss, soft_cross_entropy


def _logits(seed: int, b: int = 6, k: int = 5) -> torch.Tensor:
    return torch.randn(b, k, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_equals_manual_formula(T):
    s, t = _logits(0), _logits(1)
    p_t = torch.softmax(t / T, 1)
    manual = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert torch.allclose(kd_loss(s, t, T), manual, atol=1e-6)
    # and torch's batchmean KL
    ref = F.kl_div(F.log_softmax(s / T, 1), p_t, reduction="batchmean") * T * T
    assert torch.allclose(kd_loss(s, t, T), ref, atol=1e-6)


def test_kd_zero_at_teacher_and_positive_elsewhere():
    t = _logits(2)
    assert float(kd_loss(t.clone(), t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(_logits(3), t, 4.0)) > 0.01


def test_kd_handles_saturated_teacher():
    t = torch.tensor([[200.0, -200.0, 0.0]])  # softmax underflows to exact zeros
    s = torch.tensor([[0.0, 1.0, 2.0]])
    assert torch.isfinite(kd_loss(s, t, 1.0))


def test_soft_ce_with_one_hot_is_hard_ce():
    s = _logits(4)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(soft_cross_entropy(s, F.one_hot(y, 5).float()), F.cross_entropy(s, y), atol=1e-6)


def test_criterion_modes_and_classes():
    s, t = _logits(5), _logits(6)
    y = t.argmax(1)
    x = torch.zeros(6, 3, 4, 4)
    assert torch.allclose(Criterion("distill", 2.0)(s, x, t), kd_loss(s, t, 2.0))
    probs = torch.softmax(t, 1)
    assert torch.allclose(Criterion("soft")(s, x, probs), soft_cross_entropy(s, probs))
    assert torch.allclose(Criterion("hard")(s, x, y), F.cross_entropy(s, y))
    assert torch.equal(Criterion("distill").classes(t), y)
    assert torch.equal(Criterion("hard").classes(y), y)


def test_online_teacher_uses_the_batch_the_student_saw():
    g = torch.Generator().manual_seed(7)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    for p in teacher.parameters():
        p.data.copy_(torch.randn(p.shape, generator=g))
    x = torch.rand(6, 3, 4, 4, generator=g)
    s = _logits(8)
    crit = Criterion("hard", 3.0, teacher=teacher)
    stale = torch.zeros(6, dtype=torch.long)  # ignored with an online teacher
    assert torch.allclose(crit(s, x, stale), kd_loss(s, teacher(x), 3.0), atol=1e-6)


def test_bad_criterion_settings():
    with pytest.raises(ConfigError):
        Criterion("labels")
    with pytest.raises(ConfigError):
        Criterion("distill", temperature=0.0)
