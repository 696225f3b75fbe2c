"""Search spaces: weight sharing (plain net == supernet path), strings, validation, costs, NB201 table, drawing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfnas.assets import nb201_table_path
from dfnas.errors import ArchError, DfnasError
from dfnas.spaces import (
    SPACES,
    Arch,
    build_space,
    choice_costs,
    cost_tables,
    count_macs,
    count_params,
    expected_macs,
    space_cost,
    subnet_state_dict,
)
from dfnas.spaces.darts import DartsSpace
from dfnas.spaces.draw import draw_arch
from dfnas.spaces.nb201 import NB201Space, _node_sum
from dfnas.spaces.nb201_table import NB201Table
from dfnas.spaces.proxyless import ProxylessSpace

# tiny settings: every space at 16 px with a handful of channels, so each forward takes milliseconds
TINY = {
    "nb201": {"C": 4, "N": 1, "input_size": 16},
    "darts": {"C": 4, "layers": 3, "input_size": 16},
    "proxyless": {"width_mult": 0.25, "layers_per_stage": [1, 2, 1, 1, 2], "input_size": 16},
    "spos": {"width_mult": 0.25, "layers": [2, 1, 1, 2], "input_size": 16},
}
ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def _perturb(model: nn.Module, g: torch.Generator) -> None:
    """Move every weight and BN statistic off its initial value, so a wrong mapping cannot match by chance."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.add_(0.2 * torch.randn(t.shape, generator=g))


def test_registry_has_every_space() -> None:
    assert {"nb201", "darts", "proxyless", "spos"} <= set(SPACES.names())
    with pytest.raises(ArchError, match="unknown option"):
        build_space("nb201", bogus=1)


@pytest.mark.parametrize("name", sorted(TINY))
def test_plain_network_equals_supernet_path(name: str) -> None:
    space = build_space(name, **TINY[name])
    g = torch.Generator().manual_seed(0)
    supernet = space.build_supernet()
    _perturb(supernet, g)
    supernet.eval()
    x = torch.randn(2, 3, space.input_size, space.input_size, generator=g)
    outs = []
    for _ in range(3):
        arch = space.sample(g)
        net = space.build_network(arch).eval()
        net.load_state_dict(subnet_state_dict(supernet, arch), strict=True)  # module paths must match exactly
        assert not any(type(m).__name__ == "Choice" for m in net.modules())
        supernet.set_path(arch)
        with torch.no_grad():
            y_plain, y_super = net(x), supernet(x)
        assert y_plain.shape == (2, space.num_classes)
        torch.testing.assert_close(y_plain, y_super, atol=1e-5, rtol=1e-5)
        outs.append(y_plain)
    assert not torch.allclose(outs[0], outs[1])  # different paths really compute different functions


@pytest.mark.parametrize("name", sorted(TINY))
def test_weighted_mode_gradients_reach_every_decision(name: str) -> None:
    space = build_space(name, **TINY[name])
    g = torch.Generator().manual_seed(1)
    supernet = space.build_supernet()
    alphas = {k: (1e-2 * torch.randn(len(v), generator=g)).requires_grad_() for k, v in space.decisions().items()}
    supernet.set_weights({k: torch.softmax(a, 0) for k, a in alphas.items()})
    out = supernet(torch.randn(2, 3, space.input_size, space.input_size, generator=g))
    (out ** 2).sum().backward()
    for k, a in alphas.items():
        assert a.grad is not None and torch.isfinite(a.grad).all(), k
        assert a.grad.abs().sum() > 0, k
    assert all(p.grad is not None for n, p in supernet.named_parameters() if ".candidates." in n and "weight" in n)


def test_nb201_node_sum_equals_stacked_sum_and_keeps_channels_last() -> None:
    g = torch.Generator().manual_seed(0)
    for n in (2, 3):
        terms = [(torch.randn(4, 8, 6, 6, generator=g) * 10.0 ** i).contiguous(memory_format=torch.channels_last)
                 for i in range(n)]
        out = _node_sum(terms)
        assert torch.equal(out, torch.stack(terms).sum(0))  # same order of additions, so the same bits
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(TINY))
def test_string_and_json_round_trip(name: str) -> None:
    space = build_space(name, **TINY[name])
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        arch = space.sample(g)
        space.check(arch)
        s = type(space).format(arch)
        assert type(space).parse(s) == arch
        assert type(space).format(type(space).parse(s)) == s
        assert Arch.from_json(arch.to_json()) == arch


@pytest.mark.parametrize("name", sorted(TINY))
def test_costs_tables_match_plain_networks(name: str) -> None:
    space = build_space(name, **TINY[name])
    base, costs = cost_tables(space)
    assert set(costs) == set(space.decisions())
    g = torch.Generator().manual_seed(3)
    dec = space.decisions()
    for _ in range(3):
        arch = space.sample(g)
        probs = {k: nn.functional.one_hot(torch.tensor(dec[k].index(v)), len(dec[k])).double()
                 for k, v in arch.as_dict().items()}
        cost = space_cost(space, arch)
        assert cost["flops"] == 2 * cost["macs"] > 0 and cost["params"] > 0
        assert float(expected_macs(base, costs, probs)) == cost["macs"]
    # the expected cost is differentiable in the distribution, and costlier options get larger gradients
    alphas = {k: torch.zeros(len(v), requires_grad=True) for k, v in dec.items()}
    expected_macs(base, costs, {k: torch.softmax(a, 0) for k, a in alphas.items()}).backward()
    k0 = next(k for k in dec if costs[k].max() > costs[k].min())
    assert int(alphas[k0].grad.argmax()) == int(costs[k0].argmax())


def test_count_macs_by_hand() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    assert count_macs(conv, 32) == 32 * 32 * 8 * 3 * 9
    dw = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8)
    assert count_macs(dw, 32, in_channels=8) == 16 * 16 * 8 * 25
    head = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    assert count_macs(head, 4) == 4 * 4 * 4 * 3 + 64 * 10
    assert count_params(head) == (3 * 4 + 4) + (64 * 10 + 10)
    head.train()
    count_macs(head, 4)
    assert head.training  # the counting pass restores the mode


def test_nb201_benchmark_network_cost() -> None:
    # NATS-Bench lists the all-3x3 cell on CIFAR-10 at 220.11 "MFLOPs" (MACs) and 1.53 M parameters
    space = NB201Space(C=16, N=5)
    cost = space_cost(space, NB201Space.parse(ALL_3X3))
    assert abs(cost["macs"] / 1e6 - 220.11) < 0.05
    assert abs(cost["params"] / 1e6 - 1.53) < 0.01
    # choice costs are per key summed over the 15 cells: one 3x3 conv edge at 16/32/64 channels costs 2.36 M each
    assert float(choice_costs(NB201Space(C=16, N=5))["1<-0"][3]) == 15 * 2_359_296


def test_darts_paper_genotype_size() -> None:
    # DARTS (2nd order) evaluated at C=36, 20 cells: 3.3 M parameters without the auxiliary head
    space = DartsSpace(C=36, layers=20, pool_bn=False)
    arch = DartsSpace.parse(DARTS_V2)
    assert space_cost(space, arch)["params"] == pytest.approx(3.35e6, rel=0.01)


def test_darts_genotype_format_parse_and_derive() -> None:
    arch = DartsSpace.parse(DARTS_V2)
    DartsSpace.validate(arch)
    s = DartsSpace.format(arch)
    assert s.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)")
    assert s.endswith("reduce_concat=[2, 3, 4, 5])")
    assert DartsSpace.parse(s) == arch
    assert DartsSpace.parse(DARTS_V2.replace("[2, 3, 4, 5]", "range(2, 6)")) == arch
    # derive: node 2 prefers input 1 (sep_conv_5x5), input 0 (max_pool); a huge 'none' weight never counts
    space = DartsSpace(C=4, layers=3)
    weights = {k: torch.zeros(8) for k in space.decisions()}
    weights["normal.e2_0"][1] = 2.0
    weights["normal.e2_1"][5] = 3.0
    weights["normal.e3_2"][0] = 50.0
    weights["normal.e3_2"][7] = 0.1
    d = space.derive(weights).as_dict()
    assert d["normal.e2_0"] == "max_pool_3x3" and d["normal.e2_1"] == "sep_conv_5x5"
    assert d["normal.e3_2"] == "none"  # its best real op is weak after the softmax
    DartsSpace.validate(space.derive(weights))
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        DartsSpace.validate(space.derive({k: torch.randn(8, generator=g) for k in space.decisions()}))


@pytest.mark.parametrize(("space_cls", "bad", "match"), [
    (NB201Space, "|nor_conv_3x3~0|+|conv_7x7~0|none~1|+|none~0|none~1|none~2|", "unknown op"),
    (NB201Space, "|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "must have 2 inputs"),
    (NB201Space, "nor_conv_3x3", "expected a NAS-Bench-201 string"),
    (DartsSpace, DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 2), ('sep_conv_3x3', 3)"),
     "exactly 2 inputs"),
    (DartsSpace, DARTS_V2.replace("('dil_conv_3x3', 2)", "('none', 2)"), "unknown op"),
    (DartsSpace, DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 0)"), "twice"),
    (DartsSpace, DARTS_V2.replace("('sep_conv_3x3', 1)", "('sep_conv_3x3', 4)", 1), "inputs 0..1"),
    (DartsSpace, DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), "concat"),
    (DartsSpace, "__import__('os')", "expected Genotype"),
    (ProxylessSpace, "mb_k3_e3-mb_k9_e3", "unknown op 'mb_k9_e3' at layer 1"),
])
def test_bad_strings_raise_arch_error(space_cls: type, bad: str, match: str) -> None:
    with pytest.raises(ArchError, match=match):
        space_cls.parse(bad)


def test_bad_archs_raise_arch_error() -> None:
    nb = NB201Space(C=4, N=1)
    darts_arch = DartsSpace.parse(DARTS_V2)
    with pytest.raises(ArchError, match="of space 'darts', not 'nb201'"):
        nb.build_network(darts_arch)
    with pytest.raises(ArchError, match="unknown NAS-Bench-201 op|not allowed"):
        nb.build_network(Arch.of("nb201", {**NB201Space.parse(ALL_3X3).as_dict(), "1<-0": "conv_9x9"}))
    too_few = {**darts_arch.as_dict(), "normal.e5_2": "none"}
    with pytest.raises(ArchError, match="exactly 2 non-'none'"):
        DartsSpace(C=4, layers=3).build_network(Arch.of("darts", too_few))
    prox = build_space("proxyless", **TINY["proxyless"])
    n = len(prox.decisions())
    with pytest.raises(ArchError, match="'zero' is not allowed for decision 'layer0'"):
        prox.build_network(ProxylessSpace.parse("-".join(["zero"] + ["mb_k3_e3"] * (n - 1))))
    with pytest.raises(ArchError, match="must set decisions"):
        prox.build_network(ProxylessSpace.parse("-".join(["mb_k3_e3"] * (n + 1))))
    spos = build_space("spos", **TINY["spos"])
    with pytest.raises(ArchError, match="unknown op 'zero'"):
        spos.check(Arch.of("spos", {f"layer{i}": "zero" for i in range(len(spos.decisions()))}))


def test_proxyless_zero_layers_are_identity() -> None:
    space = build_space("proxyless", **TINY["proxyless"])
    opts = space.layer_options()
    starts = {0, 1, 3, 4, 5}  # first layer of each stage for depths [1, 2, 1, 1, 2]
    assert [("zero" in o) for o in opts] == [i not in starts for i in range(len(opts))]
    arch = Arch.of("proxyless", {f"layer{i}": ("zero" if "zero" in o else "mb_k3_e3") for i, o in enumerate(opts)})
    net = space.build_network(arch).eval()
    for i, o in enumerate(opts):
        if "zero" in o:
            x = torch.randn(1, space.plan[i][0], 4, 4)
            assert torch.equal(net.layers[i](x), x)


def test_darts_samples_are_valid_genotypes() -> None:
    space = DartsSpace(C=4, layers=3)
    g = torch.Generator().manual_seed(5)
    archs = {space.sample(g) for _ in range(30)}
    assert len(archs) == 30
    for a in archs:
        DartsSpace.validate(a)


@pytest.fixture(scope="module")
def table() -> NB201Table:
    if nb201_table_path() is None:
        pytest.skip("NAS-Bench-201 table not found (set DFNAS_NB201 or DFNAS_ASSETS)")
    return NB201Table.load()


def test_nb201_every_table_row_round_trips(table: NB201Table) -> None:
    assert len(table) == 15_625
    seen = set()
    for i, s in enumerate(table.strings):
        arch = NB201Space.parse(s)
        assert NB201Space.format(arch) == s, i
        seen.add(arch)
    assert len(seen) == 15_625


def test_nb201_table_lookup(table: NB201Table) -> None:
    best = table.best()
    assert best["index"] == 6111 and best["cifar10"] == pytest.approx(94.37, abs=0.01) and best["percentile"] == 100
    skip = table.lookup(NB201Space.parse(ALL_3X3.replace("nor_conv_3x3", "skip_connect")))
    assert skip["cifar10"] == pytest.approx(54.30, abs=0.01) and 0 < skip["percentile"] < 5
    conv = table.lookup(" " + ALL_3X3)
    assert conv["cifar10"] == pytest.approx(93.76, abs=0.01) and set(conv) >= {"cifar100", "imagenet16", "index"}
    assert (table.accuracies() >= 93.5).sum() == 411
    with pytest.raises(ArchError):
        table.lookup(DartsSpace.parse(DARTS_V2))
    picks = table.sample_stratified(25, torch.Generator().manual_seed(0))
    accs = [table.lookup(a)["cifar10"] for a in picks]
    assert len(set(picks)) == 25 and accs == sorted(accs)
    assert accs[0] < 80 and accs[-1] > 93  # spans the whole ranking, tail included
    assert picks == table.sample_stratified(25, torch.Generator().manual_seed(0))


def test_nb201_table_missing_file_names_the_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DFNAS_NB201", str(tmp_path / "absent.csv"))
    with pytest.raises(DfnasError, match="DFNAS_NB201.*DFNAS_ASSETS"):
        NB201Table.load()


@pytest.mark.parametrize("name", sorted(TINY))
def test_draw_arch_writes_png(name: str, tmp_path) -> None:
    space = build_space(name, **TINY[name])
    arch = space.sample(torch.Generator().manual_seed(6))
    path = draw_arch(space, arch, tmp_path / f"{name}.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.mark.parametrize("name", ["nb201", "darts"])
def test_edge_labels_lie_outside_the_node_boxes(name: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dfnas.spaces.draw import LABEL_GID, NODE_GID, arch_figure

    space = build_space(name, **TINY[name])
    archs = [space.sample(torch.Generator().manual_seed(s)) for s in range(4)]
    if name == "nb201":  # every edge labelled, the widest op names on the shortest hops
        archs.append(space.parse("|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|"
                                 "nor_conv_3x3~1|avg_pool_3x3~2|"))
    for arch in archs:
        fig = arch_figure(space, arch)
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        nodes = [p.get_window_extent(renderer) for ax in fig.axes for p in ax.patches if p.get_gid() == NODE_GID]
        labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == LABEL_GID]
        assert nodes and labels
        for text in labels:
            box = text.get_window_extent(renderer)
            assert not any(box.overlaps(n) for n in nodes), f"{text.get_text()!r} of {arch} lies on a node box"


@pytest.mark.parametrize("name", sorted(TINY))
def test_no_strided_pointwise_convolution_in_any_supernet_or_network(name: str) -> None:
    # oneDNN's weight gradient of a strided 1x1 conv on channels-last input with fewer input channels than its
    # block (8 with AVX2) writes past its workspace and aborts the process at random: no space may build one
    space = build_space(name, **TINY[name])
    models = [space.build_supernet(), space.build_network(space.sample(torch.Generator().manual_seed(0)))]
    strided = [n for m in models for n, c in m.named_modules()
               if isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.stride != (1, 1)]
    assert not strided, strided


def test_factorized_reduce_equals_two_strided_pointwise_convolutions_on_offset_grids() -> None:
    from dfnas.spaces.darts import FactorizedReduce

    torch.manual_seed(0)
    op = FactorizedReduce(3, 5).eval()
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    r = torch.relu(x)
    ref = op.bn(torch.cat([nn.functional.conv2d(r, op.conv_1.weight, stride=2),
                           nn.functional.conv2d(r[:, :, 1:, 1:], op.conv_2.weight, stride=2)], dim=1))
    out = op(x)
    assert out.shape == (2, 5, 4, 4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)  # kernels may differ with the thread count
