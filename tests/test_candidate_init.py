"""Identity start of supernet candidates (``candidate_init: identity``) and ProxylessNAS's fair weight paths."""

from __future__ import annotations

import pytest
import torch
from tiny_data import soft_image_set
from torch import nn

from dfnas.errors import ConfigError
from dfnas.repro import make_generator
from dfnas.search import SearchConfig
from dfnas.search.base import build_method
from dfnas.search.loop import LoopConfig
from dfnas.search.weights_init import identity_init_candidates, init_parameters
from dfnas.spaces import build_space
from dfnas.spaces.base import Choice
from dfnas.spaces.nb201 import ReLUConvBN


def _supernet(seed: int = 0, **opts):
    space = build_space("nb201", num_classes=4, input_size=8, **{"C": 4, "N": 1, **opts})
    return space, init_parameters(space.build_supernet(), torch.Generator().manual_seed(seed))


def test_identity_init_adds_the_dirac_kernel_to_shape_keeping_candidate_convs_only():
    _, net = _supernet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert identity_init_candidates(net) == 3 * 6 * 2  # 3 cells x 6 edges x (1x1, 3x3 convolution)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # exactly the convolution weights of the cells' 1x1 and 3x3 candidates; stem, reductions, BN, head untouched
    assert changed and all(".edges." in k and k.endswith(".1.weight") for k in changed)
    assert len(changed) == 36
    for k in changed:
        delta = after[k] - before[k]  # (C, C, k, k)
        c, _, kh, kw = delta.shape
        expect = torch.zeros_like(delta)
        expect[torch.arange(c), torch.arange(c), kh // 2, kw // 2] = 1.0
        assert torch.allclose(delta, expect, atol=1e-6), k  # (w + 1) - w: exact up to rounding


def test_an_identity_started_candidate_without_its_random_draw_passes_its_input():
    """With the random part zeroed, ReLU -> conv -> BN is BN(ReLU(x)): the candidate starts as a (normalized) skip."""
    _, net = _supernet()
    for m in net.modules():
        if isinstance(m, ReLUConvBN):
            nn.init.zeros_(m[1].weight)
    identity_init_candidates(net)
    choice = next(m for m in net.modules() if isinstance(m, Choice))
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for op in ("nor_conv_1x1", "nor_conv_3x3"):
        cand = choice.candidates[op].eval()
        assert torch.allclose(cand(x), cand[2](torch.relu(x)), atol=1e-6)


def test_candidates_that_change_shape_keep_their_draw():
    """ProxylessNAS's MBConv candidates expand channels: none of them is changed."""
    space = build_space("proxyless", num_classes=4, input_size=8, width_mult=0.1, layers_per_stage=[1, 2, 1, 1, 1])
    net = init_parameters(space.build_supernet(), torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert identity_init_candidates(net) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_plain_network_is_unchanged():
    space = build_space("nb201", num_classes=4, input_size=8, C=4, N=1)
    net = init_parameters(space.build_network(space.parse(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")),
        torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert identity_init_candidates(net) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_candidate_init_reaches_the_loop_and_bad_values_are_refused():
    assert SearchConfig(candidate_init="identity").loop().candidate_init == "identity"
    # a setting added later stays out of the resume identity (and benchmark cell hashes) at its default
    assert "candidate_init" not in SearchConfig().resolved(only_active_method=True)
    assert SearchConfig(candidate_init="identity").resolved(only_active_method=True)["candidate_init"] == "identity"
    with pytest.raises(ConfigError, match="candidate_init 'dirac' is not one of \\['default', 'identity'\\]"):
        LoopConfig(candidate_init="dirac").check()


def test_proxyless_fair_sampling_trains_every_option_once_per_step():
    space, _ = _supernet()
    m = build_method("proxyless", space, {"sampling": "fair"}, make_generator(0, "m"), torch.device("cpu"))
    paths = m.weight_paths(None)  # type: ignore[arg-type]
    dec = space.decisions()
    assert len(paths) == 5
    for k, opts in dec.items():
        assert sorted(p.as_dict()[k] for p in paths) == sorted(opts)
        assert m.diag[k]["sampled"].tolist() == [1.0] * 5
    alpha = build_method("proxyless", space, {}, make_generator(0, "m"), torch.device("cpu"))
    assert alpha.weight_paths(None) is None  # type: ignore[arg-type]  # the paper's single sampled path
    with pytest.raises(ConfigError, match="proxyless.sampling: 'uniform' is not one of \\['alpha', 'fair'\\]"):
        build_method("proxyless", space, {"sampling": "uniform"}, make_generator(0, "m"), torch.device("cpu"))


def _derive_ctx(seed: int = 0):
    """A trained-looking supernet context for ProxylessNAS's finalize: a C=4 N=1 supernet with random weights,
    12 held-out images with soft targets, the loop's held-out evaluation settings."""
    from types import SimpleNamespace

    from dfnas.data import ImageSet
    from dfnas.search.losses import Criterion

    space, model = _supernet(seed)
    g = torch.Generator().manual_seed(seed + 1)
    held = ImageSet(torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.softmax(torch.randn(12, 4, generator=g), 1), 8, [str(i) for i in range(4)], label_mode="soft")
    ctx = SimpleNamespace(model=model, criterion=Criterion("soft", 4.0), held_out=held, device=torch.device("cpu"),
                          cfg=LoopConfig(eval_batch_size=5, eval_max_batches=None), seed=seed, extra={})
    return space, ctx


def test_proxyless_measured_derivation_takes_each_decisions_lowest_measured_loss():
    """derive=measured: per decision the held-out loss of each option but `none`, averaged over draws of the other
    decisions from softmax(alpha) without `none` (uniform with fair weight paths), recomputed here path by path
    from the same draws; the cell is each decision's argmin; the same seed measures the same; the default (alpha)
    keeps the argmax of alpha; bad values are refused."""
    from dfnas.data.imageset import iterate_batches
    from dfnas.search.bn import frozen_running_stats
    from dfnas.spaces.base import Arch

    space, ctx = _derive_ctx()
    m = build_method("proxyless", space, {"derive": "measured", "derive_paths": 3}, make_generator(0, "m"),
                     torch.device("cpu"))
    with torch.no_grad():  # a non-uniform alpha, so the draws of the other decisions follow it
        for a in m.alphas.values():
            a.copy_(torch.randn(len(a), generator=torch.Generator().manual_seed(7)))
    bn_before = {k: v.clone() for k, v in ctx.model.state_dict().items() if "running" in k}
    arch = m.finalize(ctx)
    losses = ctx.extra["derive_losses"]
    dec = space.decisions()
    assert all(v[dec[k].index("none")] is None for k, v in losses.items())  # `none` is never derived
    assert arch.as_dict() == {k: dec[k][min((i for i in range(5) if losses[k][i] is not None),
                                            key=losses[k].__getitem__)] for k in dec}
    assert all(len({x for x in v if x is not None}) == 4 for v in losses.values())  # the options measure apart
    assert all(torch.equal(ctx.model.state_dict()[k], v) for k, v in bn_before.items())  # running stats untouched
    # by hand: the same generator stream, one draw of the other decisions per path, every option on that path
    gen = make_generator(0, "proxyless", "derive")
    batches = list(iterate_batches(ctx.held_out, 5, None, augment=False))
    ctx.model.train()
    first = list(dec)[0]
    want = torch.zeros(5, dtype=torch.float64)
    with torch.no_grad(), frozen_running_stats(ctx.model):
        for _ in range(3):
            rest = {}
            for q in dec:
                p = torch.softmax(m.alphas[q].detach().double(), 0)
                p[dec[q].index("none")] = 0.0
                rest[q] = dec[q][int(torch.multinomial(p, 1, generator=gen))]
                assert rest[q] != "none"
            for j, o in enumerate(dec[first]):
                ctx.model.set_path(Arch.of(space.name, {**rest, first: o}))
                want[j] += sum(float(ctx.criterion(ctx.model(x), x, y)) * len(x) for x, y in batches) / 12
    got = [v for v in losses[first] if v is not None]
    want = [float(w) / 3 for j, w in enumerate(want) if dec[first][j] != "none"]
    assert got == pytest.approx(want, abs=1e-5)
    again = _derive_ctx()[1]
    assert m.finalize(again) == arch and again.extra["derive_losses"] == losses
    fair = build_method("proxyless", space, {"derive": "measured", "derive_paths": 3, "sampling": "fair"},
                        make_generator(0, "m"), torch.device("cpu"))
    fair.alphas = m.alphas  # the same alpha: with fair weight paths the draws are uniform and ignore it
    fair_ctx = _derive_ctx()[1]
    fair.finalize(fair_ctx)
    assert fair_ctx.extra["derive_losses"] != losses
    plain = build_method("proxyless", space, {}, make_generator(0, "m"), torch.device("cpu"))
    assert plain.finalize(_derive_ctx()[1]) == plain.current_arch()
    with pytest.raises(ConfigError, match="proxyless.derive: 'best' is not one of \\['alpha', 'measured'\\]"):
        build_method("proxyless", space, {"derive": "best"}, make_generator(0, "m"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="derive_paths must be >= 1"):
        build_method("proxyless", space, {"derive_paths": 0}, make_generator(0, "m"), torch.device("cpu"))


def test_proxyless_averaged_weights_are_the_mean_of_the_counted_steps_and_only_enter_the_derivation(tmp_path):
    """derive_weights=averaged: the method keeps the mean of the trained weights after each weight step past
    average_from of the search (computed here from snapshots), measures the derivation's losses on them, and
    leaves the training and the final weights exactly as without it; bad values are refused."""
    from dfnas.search import run_search

    ds = soft_image_set()
    proxyless = {"sampling": "fair", "derive": "measured", "derive_paths": 2, "average_from": 0.5}
    cfg = {"method": "proxyless", "space": {"name": "nb201", "options": {"C": 2}}, "epochs": 2, "batch_size": 5,
           "eval_max_batches": 1, "candidate_init": "identity", "seed": 3}
    snaps: list[list[torch.Tensor]] = []

    def keep(ctx):  # the trained weights after each weight step
        snaps.append([p.detach().clone() for p in ctx.model.parameters() if p.requires_grad])

    avg = run_search({**cfg, "proxyless": {**proxyless, "derive_weights": "averaged"}}, ds, tmp_path / "avg",
                     device="cpu", progress=False, on_step=keep)
    final = run_search({**cfg, "proxyless": proxyless}, ds, tmp_path / "final", device="cpu", progress=False)
    ck_avg = torch.load(avg.out_dir / "checkpoint.pt", weights_only=True)
    ck_final = torch.load(final.out_dir / "checkpoint.pt", weights_only=True)
    assert len(snaps) == 8 and avg.result["derive_averaged_steps"] == 4  # 20 training images, batch 5, 2 epochs
    want = [torch.stack([s[i] for s in snaps[4:]]).mean(0) for i in range(len(snaps[0]))]
    assert all(torch.allclose(a, w, atol=1e-6) for a, w in zip(ck_avg["method"]["weight_avg"], want, strict=True))
    assert all(torch.equal(ck_avg["model"][k], v) for k, v in ck_final["model"].items())  # training untouched
    assert avg.result["derive_losses"] != final.result["derive_losses"]  # measured on other weights
    with pytest.raises(ConfigError, match="derive_weights 'averaged' applies to derive 'measured'"):
        build_method("proxyless", build_space("nb201", C=2), {"derive_weights": "averaged"}, make_generator(0, "m"),
                     torch.device("cpu"))
    with pytest.raises(ConfigError, match="average_from must lie in"):
        build_method("proxyless", build_space("nb201", C=2), {"derive": "measured", "average_from": -0.1},
                     make_generator(0, "m"), torch.device("cpu"))


def test_proxyless_both_weights_keep_the_better_whole_cell_on_the_averaged_weights():
    """derive_weights=both: the derivation on the last and on the averaged weights (each exactly as derive_weights
    final / averaged gives it); where the two cells differ, the one whose whole path has the lower held-out loss
    on the averaged weights (recomputed here by hand), the trained weights restored after; where they agree, that
    cell and no comparison; refused without derive=measured."""
    from dfnas.data.imageset import iterate_batches
    from dfnas.search.bn import frozen_running_stats

    def method(weights: str, ctx, avg_seed: int, scale: float):
        m = build_method("proxyless", space, {"derive": "measured", "derive_paths": 2, "sampling": "fair",
                                              "derive_weights": weights}, make_generator(0, "m"), torch.device("cpu"))
        g = torch.Generator().manual_seed(avg_seed)  # stand-in averaged weights: the trained ones, perturbed
        m.weight_avg = [p.detach() + scale * torch.randn(p.shape, generator=g)
                        for p in ctx.model.parameters() if p.requires_grad]
        return m

    space, _ = _derive_ctx()
    ran = {}
    for avg_seed, scale in ((0, 0.0), (0, 0.5), (3, 0.5)):
        ctxs = {w: _derive_ctx()[1] for w in ("final", "averaged", "both")}
        cells = {w: method(w, c, avg_seed, scale).finalize(c) for w, c in ctxs.items()}
        both = ctxs["both"]
        assert both.extra["derive_losses_final"] == ctxs["final"].extra["derive_losses"]
        assert both.extra["derive_losses"] == ctxs["averaged"].extra["derive_losses"]
        trained = [p.detach().clone() for p in both.model.parameters()]
        if cells["final"] == cells["averaged"]:
            assert cells["both"] == cells["final"] and "derive_cells" not in both.extra
            ran["same"] = True
            continue
        # by hand: each cell's whole path on the perturbed weights, the derivation's batches and BatchNorm mode
        m = method("both", both, avg_seed, scale)
        batches = list(iterate_batches(both.held_out, 5, None, augment=False))
        whole = {}
        with torch.no_grad(), m._averaged_weights(both.model), frozen_running_stats(both.model):
            both.model.train()
            for w in ("final", "averaged"):
                both.model.set_path(cells[w])
                whole[w] = sum(float(both.criterion(both.model(x), x, y)) * len(x) for x, y in batches) / 12
        assert cells["both"] == cells[min(whole, key=whole.get)]
        assert {w: d["held_out_loss_averaged"] for w, d in both.extra["derive_cells"].items()} == pytest.approx(whole)
        assert all(torch.equal(p, q) for p, q in zip(both.model.parameters(), trained, strict=True))  # restored
        ran[min(whole, key=whole.get)] = True
    assert set(ran) == {"same", "final", "averaged"}, ran  # every branch taken on these seeds
    with pytest.raises(ConfigError, match="derive_weights 'both' applies to derive 'measured'"):
        build_method("proxyless", space, {"derive_weights": "both"}, make_generator(0, "m"), torch.device("cpu"))
