"""Loss terms, their gradients, the regional update geometry and the regional Adam."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dfnas.synthesis.losses import (
    BNStatsLoss,
    LossWeights,
    inversion_loss,
    l2_prior,
    soft_cross_entropy,
    tv_l1,
    tv_l2,
)
from dfnas.synthesis.optimize import RegionalAdam, crop_region, lr_at, optimize_batch
from dfnas.synthesis.toy import toy_teacher


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_soft_cross_entropy_matches_hard_and_has_softmax_gradient() -> None:
    logits = torch.randn(5, 4, generator=_gen(), dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 2, 3])
    onehot = F.one_hot(labels, 4).double()
    assert torch.allclose(soft_cross_entropy(logits, onehot), F.cross_entropy(logits, labels))
    p = torch.softmax(torch.randn(5, 4, generator=_gen(1), dtype=torch.float64), 1)
    t = 3.0
    (g,) = torch.autograd.grad(soft_cross_entropy(logits, p, t), logits)
    # d/dz of -sum p log softmax(z/T), averaged over the batch: (softmax(z/T) - p) / (T B)
    assert torch.allclose(g, (torch.softmax(logits.detach() / t, 1) - p) / (t * 5))


def test_soft_cross_entropy_cap_drops_only_images_at_or_above_the_cap() -> None:
    # image 0: p(target 0) = 0.9 (at the cap 0.8 -> dropped); image 1: p(target 1) = 0.1 (kept)
    logits = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.45, 0.1, 0.45]], dtype=torch.float64))
    logits.requires_grad_(True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    loss = soft_cross_entropy(logits, targets, cap=0.8)
    assert loss.item() == pytest.approx(-math.log(0.1) / 2)  # the mean stays over both images
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.equal(g[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(g[1], (torch.tensor([0.45, 0.1, 0.45], dtype=torch.float64) - targets[1]) / 2)
    # the cap reads the teacher at T = 1 even when the loss is at another temperature, and 1 never drops
    assert soft_cross_entropy(logits, targets, 2.0, cap=0.8).item() == pytest.approx(
        soft_cross_entropy(logits[1:], targets[1:], 2.0).item() / 2)
    assert soft_cross_entropy(logits, targets, cap=1.0).item() == pytest.approx(
        soft_cross_entropy(logits, targets).item())


def test_tv_terms_values_and_gradients() -> None:
    x = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]], dtype=torch.float64)
    # vertical diffs: 3, 0 ; horizontal diffs: 1, -2
    assert tv_l1(x).item() == pytest.approx((3 + 0) / 2 + (1 + 2) / 2)
    assert tv_l2(x).item() == pytest.approx((9 + 0) / 2 + (1 + 4) / 2)
    assert tv_l1(torch.full((2, 3, 5, 5), 0.3)).item() == 0.0
    y = torch.rand(2, 3, 5, 6, generator=_gen(), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tv_l2, (y,))
    assert torch.autograd.gradcheck(tv_l1, (y,))  # random pixels: no ties, |.| is differentiable
    assert torch.autograd.gradcheck(l2_prior, (y,))
    assert l2_prior(torch.full((1, 3, 2, 2), 2.0)).item() == pytest.approx(4.0)


def test_bn_stats_loss_matches_manual_statistics_and_gradcheck() -> None:
    teacher = toy_teacher(seed=3)
    teacher.double()
    bns = teacher.batchnorms()
    x = torch.rand(6, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    inputs: list[torch.Tensor] = []
    handles = [bn.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for bn in bns]
    with torch.no_grad():
        teacher(x)
    for h in handles:
        h.remove()
    expected = 0.0
    for i, (bn, a) in enumerate(zip(bns, inputs, strict=True)):
        mean = a.mean((0, 2, 3))
        var = ((a - mean[None, :, None, None]) ** 2).mean((0, 2, 3))
        d = (mean - bn.running_mean).norm() + (var - bn.running_var).norm()
        expected += float(d) * (7.0 if i == 0 else 1.0)
    with BNStatsLoss(bns, first_multiplier=7.0) as loss, torch.no_grad():
        teacher(x)
        got = loss.pop()
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert len(bns[0]._forward_hooks) == 0  # hooks removed on exit

    def f(z: torch.Tensor) -> torch.Tensor:
        with BNStatsLoss(bns, 7.0) as bl:
            teacher(z)
            return bl.pop()

    assert torch.autograd.gradcheck(f, (x[:3].clone().requires_grad_(True),))


def test_inversion_loss_switches_terms_by_weight() -> None:
    teacher = toy_teacher()
    x = torch.rand(4, 3, 8, 8, generator=_gen()).requires_grad_(True)
    targets = F.one_hot(torch.arange(4) % 4, 4).float()
    w = LossWeights(ce=1.0, bn=0.5, tv_l1=0.1, tv_l2=0.2, l2=0.3)
    with BNStatsLoss(teacher.batchnorms(), 2.0) as bl:
        total, terms, logits = inversion_loss(teacher, x, targets, 1.0, w, bl)
    assert set(terms) == {"ce", "bn", "tv_l1", "tv_l2", "l2"}
    assert total.item() == pytest.approx(sum(getattr(w, k) * v.item() for k, v in terms.items()), rel=1e-5)
    assert logits.shape == (4, 4)
    total, terms, _ = inversion_loss(teacher, x, targets, 1.0, LossWeights(ce=0.0, tv_l2=1.0), None)
    assert set(terms) == {"tv_l2"}
    (g,) = torch.autograd.grad(total, x)
    assert torch.allclose(g, torch.autograd.grad(tv_l2(x), x)[0])
    with pytest.raises(ValueError, match="every loss weight is 0"):
        inversion_loss(teacher, x, targets, 1.0, LossWeights(ce=0.0), None)


def test_teacher_gets_no_parameter_gradients() -> None:
    teacher = toy_teacher()
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 8, 8, generator=_gen()).requires_grad_(True)
    teacher(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_crop_region_geometry_and_gradient_support() -> None:
    canvas = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    tops, lefts = torch.tensor([0, 2]), torch.tensor([1, 0])
    out = crop_region(canvas, tops, lefts, 8)
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out[0], canvas[0, :, 0:8, 1:9])
    assert torch.equal(out[1], canvas[1, :, 2:10, 0:8])
    c = canvas.clone().requires_grad_(True)
    crop_region(c, tops, lefts, 8).sum().backward()
    assert c.grad is not None
    mask = torch.zeros(2, 1, 10, 10)
    mask[0, :, 0:8, 1:9] = 1
    mask[1, :, 2:10, 0:8] = 1
    assert torch.equal(c.grad, mask.expand(2, 3, 10, 10))


def test_regional_adam_equals_torch_adam_on_whole_canvas() -> None:
    p0 = torch.rand(3, 2, 6, 6, generator=_gen())
    ours, ref = p0.clone(), p0.clone().requires_grad_(True)
    opt_ref = torch.optim.Adam([ref], lr=0.01, betas=(0.5, 0.9))
    opt = RegionalAdam(ours, (0.5, 0.9))
    zero = torch.zeros(3, dtype=torch.long)
    for i in range(5):
        g = torch.randn(3, 2, 6, 6, generator=_gen(10 + i)) * 0.1
        ref.grad = g.clone()
        opt_ref.step()
        with torch.no_grad():
            ref.clamp_(0, 1)
        opt.step(g, zero, zero, 0.01)
    assert torch.allclose(ours, ref.detach(), atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_regional_adam_leaves_outside_pixels_untouched(per_image: bool) -> None:
    p = torch.rand(2, 3, 10, 10, generator=_gen())
    before = p.clone()
    opt = RegionalAdam(p, (0.5, 0.9))
    tops = torch.tensor([0, 2]) if per_image else torch.tensor([1, 1])
    lefts = torch.tensor([2, 0]) if per_image else torch.tensor([0, 0])
    # two steps at one region, then one step elsewhere: momentum must not leak outside the new region
    opt.step(torch.ones(2, 3, 8, 8), tops, lefts, 0.1)
    opt.step(torch.ones(2, 3, 8, 8), tops, lefts, 0.1)
    inside = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    for b in range(2):
        inside[b, :, tops[b]:tops[b] + 8, lefts[b]:lefts[b] + 8] = True
    changed = (p != before).any(1, keepdim=True)
    assert not (changed & ~inside).any()
    assert changed[inside].float().mean() > 0.9  # pixels already at 0 can stay (clamp)
    snap = p.clone()
    opt.step(torch.ones(2, 3, 8, 8), torch.tensor([2, 2]), torch.tensor([2, 2]), 0.1)
    moved = (p != snap).any(1)
    assert not moved[:, :2, :].any() and not moved[:, :, :2].any()
    assert float(opt.count.max()) == 3.0 and float(opt.count.min()) == 0.0


def test_lr_schedule_warmup_then_cosine() -> None:
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lr_at(50, 100, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def _optimize(teacher, steps: int, **kw):
    args = dict(input_size=8, canvas_size=10, steps=steps, lr=0.1, betas=(0.5, 0.9), warmup_fraction=0.0,
                lowres_fraction=0.0, jitter=1, flip=True, per_image_regions=False, init_std=0.2, temperature=1.0,
                weights=LossWeights(ce=1.0, bn=0.01, tv_l2=0.1), first_bn_multiplier=2.0,
                init_gen=_gen(1), geom_gen=_gen(2))
    args.update(kw)
    return optimize_batch(teacher, F.one_hot(torch.arange(4) % 4, 4).float(), **args)


def test_optimize_batch_learns_targets_and_stays_in_range() -> None:
    teacher = toy_teacher(seed=1)
    targets = F.one_hot(torch.arange(4) % 4, 4).float()
    canvas = _optimize(teacher, 40)
    assert canvas.shape == (4, 3, 10, 10) and canvas.min() >= 0 and canvas.max() <= 1
    with torch.no_grad():
        acc = (teacher(canvas[:, :, 1:9, 1:9]).argmax(1) == targets.argmax(1)).float().mean()
    assert acc == 1.0
    # same generators -> same result; different geometry generator -> different result
    assert torch.equal(canvas, _optimize(teacher, 40))
    assert not torch.equal(canvas, _optimize(teacher, 40, geom_gen=_gen(3)))


def test_optimize_batch_lowres_phase_and_nan_error() -> None:
    teacher = toy_teacher(seed=1)
    canvas = _optimize(teacher, 6, lowres_fraction=0.5)
    assert canvas.shape == (4, 3, 10, 10)
    low_only = _optimize(teacher, 2, lowres_fraction=0.9)  # every step at half resolution, upsampled at the end
    assert low_only.shape == (4, 3, 10, 10)
    from dfnas.synthesis.optimize import NonFiniteLossError

    broken = toy_teacher(seed=1)
    broken.batchnorms()[1].running_var.fill_(-1.0)  # sqrt of a negative variance: NaN logits
    with pytest.raises(NonFiniteLossError, match=r"'ce' became nan at step 0"):
        _optimize(broken, 3)
