"""Every method runs a few steps on tiny random data: weights and architecture parameters move, no NaN,
a valid architecture comes out; plus the gradient estimators of DARTS (2nd order) and ProxylessNAS."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from dfnas.config import from_dict
from dfnas.data import ImageSet
from dfnas.errors import ConfigError
from dfnas.repro import make_generator
from dfnas.search import Criterion, LoopConfig, build_method, get_method_cls, run_loop
from dfnas.search.proxyless import binary_gate_alpha_grad
from dfnas.search.weights_init import init_parameters
from dfnas.spaces import build_space


def tiny_set(n: int = 32, k: int = 4, canvas: int = 10, size: int = 8, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, canvas, canvas), generator=g, dtype=torch.uint8)
    logits = torch.randn(n, k, generator=g) * 3
    return ImageSet(images, torch.softmax(logits, 1), size, [str(i) for i in range(k)], logits, label_mode="distill")


SPOS_SMALL = {"population": 4, "top_k": 2, "generations": 2, "bn_batches": 1, "eval_batches": 1}
CASES = [
    ("darts", "nb201", {"C": 2}, {"arch_lr": 0.05}),
    ("darts", "nb201", {"C": 2}, {"arch_lr": 0.05, "order": "second"}),
    ("darts", "nb201", {"C": 2}, {"arch_lr": 0.05, "remedy": "beta"}),
    ("darts", "nb201", {"C": 2}, {"arch_lr": 0.05, "remedy": "sdarts_rs"}),
    ("darts", "nb201", {"C": 2}, {"arch_lr": 0.05, "remedy": "drnas"}),
    ("proxyless", "nb201", {"C": 2}, {"arch_lr": 0.05}),
    ("proxyless", "nb201", {"C": 2}, {"arch_lr": 0.05, "flops_loss": "mul", "target_macs": 2e4}),
    ("proxyless", "nb201", {"C": 2}, {"arch_lr": 0.05, "estimator": "loss_diff"}),
    ("proxyless", "nb201", {"C": 2}, {"arch_lr": 0.05, "sampling": "fair"}),
    ("spos", "nb201", {"C": 2}, SPOS_SMALL),
    ("darts", "darts", {"C": 2, "layers": 3}, {"arch_lr": 0.05}),
    ("proxyless", "proxyless", {"width_mult": 0.1, "layers_per_stage": [1, 2, 1, 1, 1]}, {"arch_lr": 0.05}),
    ("spos", "spos", {"width_mult": 0.25, "layers": [1, 1, 1, 1]}, SPOS_SMALL),
    ("spos", "nb201", {"C": 2}, {**SPOS_SMALL, "sampling": "fair"}),
]


@pytest.mark.parametrize("method,space_name,space_opts,opts", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'-'.join(f'{k}={v}' for k, v in c[3].items() if k != 'arch_lr')}"
                              for c in CASES])
def test_method_moves_weights_and_arch(tmp_path, method, space_name, space_opts, opts):
    ds = tiny_set()
    train, held = ds.split(0.5, torch.Generator().manual_seed(0))
    space = build_space(space_name, num_classes=4, input_size=8, **space_opts)
    m = build_method(method, space, from_dict(get_method_cls(method).config_cls, opts),
                     make_generator(0, "method"), torch.device("cpu"))
    alphas0 = {k: a.detach().clone() for k, a in getattr(m, "alphas", {}).items()}
    cfg = LoopConfig(epochs=2, batch_size=8, max_steps=3, eval_max_batches=1)
    out = run_loop(m, train, held, cfg, Criterion("distill", 4.0), tmp_path, torch.device("cpu"), "h", seed=0,
                   progress=False)
    init = init_parameters(m.build_model(), make_generator(0, "loop", "init")).state_dict()
    final = out.model.state_dict()
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    changed = [k for k, v in final.items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert len(changed) > 0.2 * len(final)  # shared parts (stem, head) and sampled options were trained
    if alphas0:
        assert all(torch.isfinite(a).all() for a in m.alphas.values())
        assert any(not torch.equal(alphas0[k], m.alphas[k].detach()) for k in alphas0)
    getattr(space, "check", space.validate)(out.arch)
    assert out.steps == 3
    # the loop trains in channels-last layout (the default recipe's speed on CPU rests on it)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in out.model.parameters() if p.dim() == 4)
    if method == "spos":
        assert out.extra["spos"]["evaluated"] >= 4


def test_drnas_dirichlet_weights_regularizer_and_eval():
    """DrNAS: reproducible Dirichlet draws from the method's generator (global RNG untouched), pathwise
    gradients to alpha, KL to Dirichlet(1) zero at alpha = 0 and equal to torch's closed form elsewhere,
    the Dirichlet mean at evaluation, and no second order."""
    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)

    def method(seed: int):
        return build_method("darts", space, {"remedy": "drnas", "drnas_reg": 0.5}, make_generator(seed, "m"),
                            torch.device("cpu"))

    torch.manual_seed(123)
    global_before = torch.get_rng_state()
    a, b = method(0), method(0)
    wa, wb = a._weights(grad=True), b._weights(grad=True)
    assert torch.equal(torch.get_rng_state(), global_before)
    for k in wa:
        assert torch.equal(wa[k], wb[k]) and torch.allclose(wa[k].sum(), torch.tensor(1.0))
    assert not all(torch.equal(wa[k], v) for k, v in a._weights(grad=True).items())  # fresh draw per call
    sum(v[0] for v in wa.values()).backward()
    assert all(a.alphas[k].grad is not None and a.alphas[k].grad.abs().sum() > 0 for k in wa)

    ctx = SimpleNamespace(step=0, total_steps=1)
    with torch.no_grad():
        for t in a.alphas.values():
            t.zero_()
    assert float(a._regularizer(ctx).detach()) == pytest.approx(0.0, abs=1e-6)  # elu(0) + 1 = 1: the anchor itself
    with torch.no_grad():
        for t in a.alphas.values():
            t.copy_(torch.tensor([2.0, -0.5, 0.0, 1.0, 0.3]))
    one = torch.distributions.kl_divergence(torch.distributions.Dirichlet(torch.tensor([3.0, 1 - 0.3935, 1.0, 2.0,
                                                                                          1.3])),
                                            torch.distributions.Dirichlet(torch.ones(5)))
    assert float(a._regularizer(ctx).detach()) == pytest.approx(0.5 * len(a.alphas) * float(one), rel=1e-3)

    class Probe:
        def set_weights(self, w):
            self.w = w
    probe = Probe()
    a.prepare_eval(SimpleNamespace(model=probe))
    c = torch.tensor([3.0, 1 - 0.3935, 1.0, 2.0, 1.3])
    assert all(torch.allclose(w, c / c.sum(), atol=1e-4) for w in probe.w.values())
    with pytest.raises(ConfigError, match="drnas"):
        from_dict(get_method_cls("darts").config_cls, {"remedy": "drnas", "order": "second"})
    with pytest.raises(ConfigError, match="drnas_reg must be a finite number >= 0"):
        from_dict(get_method_cls("darts").config_cls, {"remedy": "drnas", "drnas_reg": -1.0})


def test_binary_gate_estimator_is_exact_for_linear_losses():
    # L(g) = sum_j g_j c_j with g one-hot ~ p: E[L] = p . c, so dE/dalpha must equal the estimator
    alpha = torch.tensor([0.3, -0.2], requires_grad=True)
    c = torch.tensor([1.5, -0.7])
    (torch.softmax(alpha, 0) @ c).backward()
    est = binary_gate_alpha_grad(c, torch.softmax(alpha.detach(), 0))
    assert torch.allclose(est, alpha.grad, atol=1e-6)


def test_proxyless_arch_step_keeps_unsampled_probabilities():
    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)
    m = build_method("proxyless", space, {"arch_lr": 0.1}, make_generator(1, "m"), torch.device("cpu"))
    model = init_parameters(m.build_model(), make_generator(1, "init"))
    ctx = SimpleNamespace(model=model, criterion=Criterion("distill", 4.0), step=0, epoch=0)
    m.setup(ctx)
    before = {k: v.clone() for k, v in m.probs().items()}
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    m.arch_step(ctx, (x, torch.randn(4, 4, generator=torch.Generator().manual_seed(3))), (x, None))
    after = m.probs()
    for k in before:
        moved = (before[k] - after[k]).abs() > 1e-6
        assert 1 <= int(moved.sum()) <= 2  # exactly the sampled pair moves; the other 3 options keep p
        assert torch.allclose(after[k].sum(), torch.tensor(1.0))


def test_proxyless_loss_diff_uses_measured_pair_losses_and_leaves_bn_statistics_alone():
    """estimator=loss_diff: dL/dalpha over each pair is the Jacobian applied to the held-out losses measured with
    each option (others on their active one), recomputed here path by path; the extra passes leave BN running
    statistics as a single pass of the active path leaves them."""
    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)
    m = build_method("proxyless", space, {"arch_lr": 0.1, "estimator": "loss_diff"}, make_generator(1, "m"),
                     torch.device("cpu"))
    model = init_parameters(m.build_model(), make_generator(1, "init"))
    crit = Criterion("distill", 4.0)
    ctx = SimpleNamespace(model=model, criterion=crit, step=0, epoch=0)
    m.setup(ctx)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    gen_state = m.generator.get_state()
    seen: dict[str, torch.Tensor] = {}
    m._pair_losses = lambda c, h, pairs, actives, f=m._pair_losses: (seen.update(pairs=pairs, actives=actives)
                                                                      or f(c, h, pairs, actives))
    model.train()
    m.arch_step(ctx, (x, y), (x, None))
    pairs, actives = seen["pairs"], seen["actives"]
    dec = space.decisions()
    # brute force on a fresh copy of the starting state: BN stats after one pass of the active path only
    m2 = build_method("proxyless", space, {"arch_lr": 0.1, "estimator": "loss_diff"}, make_generator(1, "m"),
                      torch.device("cpu"))
    ref = init_parameters(m2.build_model(), make_generator(1, "init")).train()
    m2.generator.set_state(gen_state)

    def loss_of(choice: dict[str, int]) -> float:
        ref.set_path({k: dec[k][i] for k, i in choice.items()})
        with torch.no_grad():
            return float(crit(ref(x), x, y))

    loss_of(actives)
    bn_state = {n: t.clone() for n, t in ref.state_dict().items() if "running" in n}
    assert all(torch.equal(model.state_dict()[n], t) for n, t in bn_state.items())
    for k in m.keys:
        losses = torch.tensor([loss_of({**actives, k: int(i)}) for i in pairs[k]])
        p2 = torch.softmax(m2.alphas[k].detach()[pairs[k]], 0)
        expected = binary_gate_alpha_grad(losses, p2)
        got = m.diag[k]["alpha_grad"][pairs[k]].float()
        assert torch.allclose(got, expected, atol=1e-5), k
        assert float(losses[0]) != float(losses[1]) or dec[k][int(pairs[k][0])] == "none"
    with pytest.raises(ConfigError, match="proxyless.estimator.*'exact' is not one of"):
        build_method("proxyless", space, {"estimator": "exact"}, make_generator(0, "m"), torch.device("cpu"))


def test_darts_second_order_matches_exact_hypergradient():
    """The finite-difference Hessian-vector product equals double backprop through the unrolled step."""
    torch.set_default_dtype(torch.float64)  # finite differences need precision; restored below
    try:
        space = build_space("nb201", num_classes=3, input_size=8, C=2, N=1)
        # a small finite-difference step: in float64 the difference quotient is then accurate to ~1e-6 even
        # for this tiny network, whose BN over a few values makes the loss strongly curved at larger steps
        m = build_method("darts", space, {"order": "second", "hessian_r": 1e-4}, make_generator(3, "m"),
                         torch.device("cpu"))
        for k in m.alphas:
            m.alphas[k] = (m.alphas[k].detach().double() * 300).requires_grad_(True)  # away from uniform
        model = init_parameters(m.build_model(), make_generator(3, "init"))
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=3e-4)
        crit = Criterion("hard")
        ctx = SimpleNamespace(model=model, optimizer=opt, criterion=crit, lr=0.5, step=0, total_steps=1)
        g = torch.Generator().manual_seed(4)
        train = (torch.rand(6, 3, 8, 8, generator=g), torch.randint(3, (6,), generator=g))
        held = (torch.rand(6, 3, 8, 8, generator=g), torch.randint(3, (6,), generator=g))
        model.train()
        got, _ = m._second_order_grads(ctx, held, train)

        alphas = m.arch_parameters()
        w = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}

        def loss(params: dict, batch: tuple) -> torch.Tensor:
            model.set_weights({k: torch.softmax(a, 0) for k, a in m.alphas.items()})
            return crit(functional_call(model, params, (batch[0],)), batch[0], batch[1])

        gw = torch.autograd.grad(loss(w, train), list(w.values()), create_graph=True)  # depends on alpha
        w1 = {n: w[n] - 0.5 * (gi + 3e-4 * w[n]) for (n, gi) in zip(w, gw, strict=True)}
        exact = torch.autograd.grad(loss(w1, held), alphas)
        w1_const = {n: t.detach() for n, t in w1.items()}
        direct = torch.autograd.grad(loss(w1_const, held), alphas)
        implicit_exact = torch.cat([(e - d).flatten() for e, d in zip(exact, direct, strict=True)])
        implicit_got = torch.cat([(o - d).flatten() for o, d in zip(got, direct, strict=True)])
        assert implicit_exact.norm() > 1e-3 * torch.cat([d.flatten() for d in direct]).norm()  # not negligible
        assert torch.allclose(implicit_got, implicit_exact, rtol=1e-3, atol=1e-4 * implicit_exact.abs().max())
    finally:
        torch.set_default_dtype(torch.float32)


def test_proxyless_default_warmup_is_first_third_of_steps():
    """Paper ratio (40 of 120 epochs): no architecture step in the first third; explicit epochs override it."""
    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)
    m = build_method("proxyless", space, {}, make_generator(0, "m"), torch.device("cpu"))
    wants = [m.wants_arch_step(SimpleNamespace(step=s, epoch=s // 10, total_steps=30)) for s in range(30)]
    assert wants == [False] * 10 + [True] * 20
    m0 = build_method("proxyless", space, {"warmup_epochs": 0}, make_generator(0, "m"), torch.device("cpu"))
    assert m0.wants_arch_step(SimpleNamespace(step=0, epoch=0, total_steps=30))
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_method("proxyless", space, {"warmup_epochs": -1}, make_generator(0, "m"), torch.device("cpu"))


def test_proxyless_logs_path_counters_per_epoch(tmp_path):
    """The diagnostics of why ProxylessNAS moves: per epoch and decision, how often each option ran in a weight
    step, how often it was in the arch step's sampled pair, its mean dL/dg and summed dL/dalpha."""
    import json

    ds = tiny_set()
    train, held = ds.split(0.5, torch.Generator().manual_seed(0))
    space = build_space("nb201", num_classes=4, input_size=8, C=2)
    m = build_method("proxyless", space, {"arch_lr": 0.05, "warmup_epochs": 1}, make_generator(0, "m"),
                     torch.device("cpu"))
    cfg = LoopConfig(epochs=3, batch_size=8, eval_max_batches=1)  # 16 images / 8 = 2 weight steps per epoch
    run_loop(m, train, held, cfg, Criterion("distill", 4.0), tmp_path, torch.device("cpu"), "h", seed=0,
             progress=False)
    epochs = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert len(epochs) == 3
    for r in epochs:
        paths = r["paths"]
        assert set(paths) == set(space.decisions())
        arch_steps = 0 if r["epoch"] < 1 else 2  # warm-up epoch: weight steps only
        for d in paths.values():
            assert sum(d["sampled"]) == 2  # one option per decision per weight step
            assert sum(d["paired"]) == 2 * arch_steps  # two distinct options per arch step
            assert len(d["gate_grad_mean"]) == len(d["alpha_grad_sum"]) == 5
            if arch_steps == 0:
                assert d["alpha_grad_sum"] == [0.0] * 5
            else:
                assert d["gate_grad_mean"][0] == 0.0  # 'none' outputs zeros: dL/dg is exactly 0
                assert abs(sum(d["alpha_grad_sum"])) < 1e-6  # the estimator's gradient sums to 0 over options


def test_spos_fair_sampling_runs_every_option_of_every_decision_once_per_step():
    space = build_space("nb201", num_classes=4, input_size=8, C=2)
    m = build_method("spos", space, {**SPOS_SMALL, "sampling": "fair"}, make_generator(0, "m"), torch.device("cpu"))
    paths = m.weight_paths(None)
    dec = space.decisions()
    assert len(paths) == 5
    for k, opts in dec.items():
        assert sorted(p.as_dict()[k] for p in paths) == sorted(opts)  # each option exactly once
    again = m.weight_paths(None)
    assert [str(p) for p in again] != [str(p) for p in paths]  # a fresh permutation every step
    uniform = build_method("spos", space, SPOS_SMALL, make_generator(0, "m"), torch.device("cpu"))
    assert uniform.weight_paths(None) is None  # the paper's single path (set by before_weight_step)
    with pytest.raises(ConfigError, match="spos.sampling 'strict' is not one of"):
        build_method("spos", space, {"sampling": "strict"}, make_generator(0, "m"), torch.device("cpu"))


def test_spos_loss_score_is_minus_the_held_out_loss_of_the_returned_cell(tmp_path):
    import itertools

    from dfnas.data.imageset import iterate_batches
    from dfnas.search.bn import recalibrate_bn

    ds = tiny_set()
    train, held = ds.split(0.5, torch.Generator().manual_seed(0))
    space = build_space("nb201", num_classes=4, input_size=8, C=2)
    opts = {**SPOS_SMALL, "score": "loss", "bn_batches": 2, "eval_batches": None}
    m = build_method("spos", space, opts, make_generator(0, "method"), torch.device("cpu"))
    crit = Criterion("distill", 4.0)
    cfg = LoopConfig(epochs=2, batch_size=8, max_steps=3, eval_max_batches=1)
    out = run_loop(m, train, held, cfg, crit, tmp_path, torch.device("cpu"), "h", seed=0, progress=False)
    # recompute independently: the same BN batches, then the mean KD loss over every held-out image
    bn = [x for x, _ in itertools.islice(iterate_batches(train, 8, make_generator(0, "spos", "bn-batches"),
                                                         augment=False, device=torch.device("cpu")), 2)]
    model = out.model
    model.set_path(out.arch)
    recalibrate_bn(model, bn)
    with torch.no_grad():
        x, y = next(iterate_batches(held, len(held), None, augment=False, device=torch.device("cpu")))
        expected = -float(crit(model(x), x, y))
    assert out.extra["spos"]["best_score"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert expected < 0
    with pytest.raises(ConfigError, match="spos.score 'top5' is not one of"):
        build_method("spos", space, {"score": "top5"}, make_generator(0, "m"), torch.device("cpu"))


def test_new_darts_options_keep_earlier_search_identities():
    """Options added after searches existed are left out of resume and cache identities at their defaults, so
    earlier run directories resume and cached benchmark cells stay valid."""
    from dfnas.config import identity_dict

    cls = get_method_cls("darts").config_cls
    assert "drnas_reg" not in identity_dict(from_dict(cls, {"remedy": "beta"}))
    assert "max_skip" not in identity_dict(from_dict(cls, {"remedy": "beta"}))
    assert identity_dict(from_dict(cls, {"remedy": "beta", "max_skip": 1}))["max_skip"] == 1
    assert identity_dict(from_dict(cls, {"remedy": "drnas", "drnas_reg": 0.01}))["drnas_reg"] == 0.01


def _darts_with_alphas(space, probs: dict[str, list[float]], **opts):
    m = build_method("darts", space, opts, make_generator(0, "m"), torch.device("cpu"))
    with torch.no_grad():
        for k, a in m.alphas.items():
            a.copy_(torch.tensor(probs[k]).log())
    return m


def test_darts_max_skip_replaces_the_weakest_skips_by_their_next_best_op():
    """P-DARTS's cap: with three skips chosen and max_skip=1, the two with the lowest skip weight fall back to
    their second-best op and the strongest skip stays; without the cap the argmax is unchanged."""
    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)
    ops = space.decisions()[next(iter(space.decisions()))]
    assert ops == ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    keys = list(space.decisions())
    probs = {k: [0.1, 0.2, 0.2, 0.4, 0.1] for k in keys}  # conv 3x3 everywhere by default
    probs[keys[0]] = [0.1, 0.35, 0.3, 0.15, 0.1]  # skip 0.35, then conv 1x1
    probs[keys[1]] = [0.1, 0.4, 0.1, 0.1, 0.3]  # skip 0.40, then avg pool
    probs[keys[3]] = [0.1, 0.5, 0.1, 0.2, 0.1]  # skip 0.50: the one kept
    plain = _darts_with_alphas(space, probs, remedy="beta").current_arch().as_dict()
    assert [plain[k] for k in keys] == ["skip_connect", "skip_connect", "nor_conv_3x3", "skip_connect",
                                        "nor_conv_3x3", "nor_conv_3x3"]
    capped = _darts_with_alphas(space, probs, remedy="beta", max_skip=1).current_arch().as_dict()
    assert [capped[k] for k in keys] == ["nor_conv_1x1", "avg_pool_3x3", "nor_conv_3x3", "skip_connect",
                                         "nor_conv_3x3", "nor_conv_3x3"]
    two = _darts_with_alphas(space, probs, max_skip=2).current_arch().as_dict()
    assert [two[k] for k in keys][:2] == ["nor_conv_1x1", "skip_connect"]
    zero = _darts_with_alphas(space, probs, max_skip=0).current_arch().as_dict()
    assert "skip_connect" not in zero.values()


def test_darts_max_skip_on_the_darts_space_and_bad_values():
    """In the DARTS space a ruled-out skip may drop its edge from the node's top 2; the cap holds over the normal
    cell, as in P-DARTS, and leaves the reduction cell alone. Bad values and a space without skip connections
    are refused with the setting's name."""
    space = build_space("darts", num_classes=4, input_size=8, C=2, layers=3)
    m = build_method("darts", space, {"max_skip": 1}, make_generator(0, "m"), torch.device("cpu"))
    skip = space.decisions()[m.keys[0]].index("skip_connect")
    with torch.no_grad():
        for a in m.alphas.values():
            a[skip] = 3.0  # skip leads on every edge
    def skips(arch, cell: str) -> int:
        return sum(op == "skip_connect" for k, op in arch.as_dict().items() if k.startswith(cell + "."))

    plain = m.space.derive({k: a.detach() for k, a in m.alphas.items()})
    assert skips(plain, "normal") == skips(plain, "reduce") == 8  # 2 inputs x 4 nodes, all skips
    capped = m.current_arch()
    assert skips(capped, "normal") == 1 and skips(capped, "reduce") == 8
    assert space.skip_cap_decisions() == [k for k in space.decisions() if k.startswith("normal.")]
    cls = get_method_cls("darts").config_cls
    with pytest.raises(ConfigError, match="darts.max_skip must be an integer >= 0"):
        from_dict(cls, {"max_skip": -1})
    for bad in (1.5, True):
        with pytest.raises(ConfigError, match="max_skip"):
            from_dict(cls, {"max_skip": bad})
    prox = build_space("proxyless", num_classes=4, input_size=8, width_mult=0.1, layers_per_stage=[1, 2, 1, 1, 1])
    with pytest.raises(ConfigError, match="darts.max_skip caps 'skip_connect' options, but space 'proxyless'"):
        build_method("darts", prox, {"max_skip": 1}, make_generator(0, "m"), torch.device("cpu"))


def test_darts_max_skip_changes_only_the_derivation(tmp_path):
    """The cap acts at derivation only: searches with and without it train the same weights and alpha, and
    the capped one records the uncapped cell of the same alpha."""
    ds = tiny_set()
    train, held = ds.split(0.5, torch.Generator().manual_seed(0))
    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)
    outs = []
    for i, opts in enumerate(({"arch_lr": 0.05, "remedy": "beta"}, {"arch_lr": 0.05, "remedy": "beta",
                                                                    "max_skip": 0})):
        m = build_method("darts", space, opts, make_generator(0, "method"), torch.device("cpu"))
        cfg = LoopConfig(epochs=2, batch_size=8, max_steps=3, eval_max_batches=1)
        out = run_loop(m, train, held, cfg, Criterion("distill", 4.0), tmp_path / str(i), torch.device("cpu"),
                       "h", seed=0, progress=False)
        outs.append((m, out))
    (plain, plain_out), (capped, capped_out) = outs
    assert all(torch.equal(plain.alphas[k], capped.alphas[k]) for k in plain.keys)
    ref = plain_out.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in capped_out.model.state_dict().items())
    assert "darts" not in plain_out.extra
    assert capped_out.extra["darts"]["arch_uncapped"] == str(plain_out.arch)
    assert "skip_connect" not in capped_out.arch.as_dict().values()
