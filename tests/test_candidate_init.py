"""Identity start of supernet candidates (``candidate_init: identity``) and ProxylessNAS's fair weight paths."""

from __future__ import annotations

import pytest
import torch
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
