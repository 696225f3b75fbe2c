"""The cifar_resnet space: a fixed student family (ResNet-20/32/44/56) that trains like any found architecture."""

from __future__ import annotations

import pytest
import torch
from test_train import colour_set

from dfnas.errors import ArchError
from dfnas.search.api import make_space
from dfnas.spaces import build_space, space_cost
from dfnas.spaces.archfile import parse_arch_string
from dfnas.teachers.resnet_cifar import resnet20
from dfnas.train import evaluate, train_network


@pytest.mark.parametrize("depth", ["20", "32", "44", "56"])
def test_strings_round_trip_and_networks_match_the_teacher_builder(depth: str) -> None:
    space = build_space("cifar_resnet")
    arch = parse_arch_string(f"resnet{depth}")  # found among all spaces by its string
    assert arch.space == "cifar_resnet" and space.format(arch) == f"resnet{depth}" and str(arch) == f"resnet{depth}"
    assert space.parse(" ResNet" + depth + " ") == arch
    net = space.build_network(arch)
    blocks = sum(len(getattr(net, f"layer{i}")) for i in (1, 2, 3))
    assert 6 * blocks // 3 + 2 == int(depth)


def test_resnet20_has_the_published_size() -> None:
    cost = space_cost(build_space("cifar_resnet"), parse_arch_string("resnet20"))
    assert cost["params"] == sum(p.numel() for p in resnet20().parameters()) == 269_722  # the paper's 0.27M
    assert 40e6 < cost["macs"] < 42e6  # 41M multiply-adds on a 32 px image


def test_bad_input_names_what_was_expected() -> None:
    with pytest.raises(ArchError, match=r"expected a CIFAR ResNet name.*resnet20"):
        parse_arch_string("resnet18")
    with pytest.raises(ArchError, match="in_channels 3"):
        build_space("cifar_resnet", in_channels=1)
    with pytest.raises(ArchError, match="not a search space"):
        build_space("cifar_resnet").build_supernet()
    with pytest.raises(ArchError, match=r"not a search space: train one of its networks with `dfnas train"):
        make_space({"name": "cifar_resnet"})  # a search (and `dfnas run`'s early check) refuses it up front
    with pytest.raises(ArchError, match="not 'cifar_resnet'"):
        build_space("cifar_resnet").validate(build_space("nb201").sample(torch.Generator().manual_seed(0)))


def test_a_resnet_student_trains_saves_and_reloads(tmp_path) -> None:
    arch = parse_arch_string("resnet20")
    cfg = {"epochs": 4, "batch_size": 16, "lr": 0.1}
    res = train_network(cfg, arch, {"name": "cifar_resnet"}, colour_set(96, 0), tmp_path, device="cpu",
                        test_data=colour_set(64, 1), progress=False)
    assert res["test_top1"] >= 90.0 and res["arch_str"] == "resnet20"  # the colour task is easy: training works
    net = build_space("cifar_resnet", num_classes=2, input_size=8).build_network(arch)
    net.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    assert evaluate(net, colour_set(64, 1)) == res["test_top1"]
