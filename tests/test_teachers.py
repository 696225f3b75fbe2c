"""Teacher loading: every bad input gives a clear TeacherError; a loaded teacher is frozen."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dfnas.assets import asset_path
from dfnas.errors import TeacherError
from dfnas.teachers import TeacherConfig, load_teacher
from dfnas.teachers.hub import load_state_dict_file

FACTORIES = '''
import torch
from torch import nn
from dfnas.synthesis.toy import ToyNet

def toy():
    return ToyNet(num_classes=4)

def toy_nobn():
    return ToyNet(num_classes=4, batchnorm=False)

def not_image():
    return nn.Linear(5, 3)  # fails on (B, 3, 32, 32) inputs

def segmenter():
    return nn.Conv2d(3, 4, 1)  # 4-D output: not a classifier

def not_module():
    return 42
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("teachers") / "models.py"
    p.write_text(FACTORIES)
    return p


def _toy_state(num_classes: int = 4) -> dict[str, torch.Tensor]:
    from dfnas.synthesis.toy import toy_teacher

    return toy_teacher(num_classes=num_classes, input_size=32).model.state_dict()


def test_factory_with_weights_loads_frozen(factories: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "toy.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _toy_state().items()}}, ckpt)
    t = load_teacher(TeacherConfig(name=f"{factories}:toy", weights=str(ckpt), num_classes=4))
    assert t.num_classes == 4 and t.spec.sha256 and len(t.batchnorms()) == 2
    assert all(not p.requires_grad for p in t.parameters())
    assert torch.equal(t.model.linear.weight, _toy_state()["linear.weight"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in t.parameters())


def test_missing_checkpoint(factories: Path, tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="do not exist"):
        load_teacher(TeacherConfig(name="cifar10_resnet20", weights=str(tmp_path / "nope.th"), download=False))
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(TeacherConfig(name=f"{factories}:toy", weights=str(tmp_path / "nope.pt")))
    with pytest.raises(TeacherError, match="teacher module"):
        load_teacher(TeacherConfig(name=f"{tmp_path / 'missing.py'}:toy"))


def test_corrupt_checkpoint(factories: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(TeacherError, match="cannot be read"):
        load_teacher(TeacherConfig(name=f"{factories}:toy", weights=str(bad)))
    # a named teacher whose file is not the published one (SHA-256 prefix check)
    fake = tmp_path / "resnet20-12fca82f.th"
    from dfnas.teachers.resnet_cifar import resnet20

    torch.save({"state_dict": resnet20().state_dict()}, fake)
    with pytest.raises(TeacherError, match="SHA-256"):
        load_teacher(TeacherConfig(name="cifar10_resnet20", weights=str(fake), download=False))
    notdict = tmp_path / "list.pt"
    torch.save([1, 2, 3], notdict)
    with pytest.raises(TeacherError, match="state dict"):
        load_state_dict_file(notdict)


def test_mismatched_state_dict(factories: Path, tmp_path: Path) -> None:
    state = _toy_state(num_classes=7)  # head of the wrong shape
    ckpt = tmp_path / "other.pt"
    torch.save(state, ckpt)
    with pytest.raises(TeacherError, match="shape mismatches.*linear.weight"):
        load_teacher(TeacherConfig(name=f"{factories}:toy", weights=str(ckpt)))
    del state["linear.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, ckpt)
    with pytest.raises(TeacherError, match=r"missing keys \['linear.bias'\].*unexpected keys \['extra.weight'\]"):
        load_teacher(TeacherConfig(name=f"{factories}:toy", weights=str(ckpt)))


def test_wrong_class_count_and_non_image_models(factories: Path) -> None:
    def own(factory: str, num_classes: int | None = None) -> TeacherConfig:  # as if they loaded their own weights
        return TeacherConfig(name=f"{factories}:{factory}", num_classes=num_classes, factory_loads_weights=True)

    with pytest.raises(TeacherError, match="outputs 4 classes but 10 were declared"):
        load_teacher(own("toy", num_classes=10))
    with pytest.raises(TeacherError, match="not an image classifier.*declare them with --in-channels"):
        load_teacher(own("not_image"))
    with pytest.raises(TeacherError, match="not an image classifier"):
        load_teacher(own("segmenter"))
    with pytest.raises(TeacherError, match="expected a torch.nn.Module"):
        load_teacher(own("not_module"))
    with pytest.raises(TeacherError, match="unknown teacher"):
        load_teacher(TeacherConfig(name="resnet9000"))


def test_teacher_without_batchnorm_needs_permission(factories: Path) -> None:
    with pytest.raises(TeacherError, match="--allow-no-batchnorm"):
        load_teacher(TeacherConfig(name=f"{factories}:toy_nobn", factory_loads_weights=True))
    t = load_teacher(TeacherConfig(name=f"{factories}:toy_nobn", allow_no_batchnorm=True, factory_loads_weights=True))
    assert t.batchnorms() == []


RESNET20 = asset_path("teachers", "resnet20-12fca82f.th")
EXACT_TEST = asset_path("cifar10", "exact_test_1017.npz")


@pytest.mark.integration
@pytest.mark.skipif(RESNET20 is None or EXACT_TEST is None,
                    reason="shared assets not found (set DFNAS_ASSETS to the assets directory)")
def test_eval_teacher_resnet20_on_exact_test_set() -> None:
    from dfnas.synthesis.inspect import evaluate_teacher

    res = evaluate_teacher(TeacherConfig(name="cifar10_resnet20", download=False), EXACT_TEST)
    assert res["images"] == 1017
    assert res["top1"] == pytest.approx(0.9164, abs=5e-4)  # 932 / 1017, the published measurement


class _Branchy(torch.nn.Module):
    """Python control flow on tensor values: a trace would keep only the branch of its example."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y if x.mean() > 0 else -y


def test_compiled_inference_matches_forward_and_stays_out_of_the_module_tree() -> None:
    from dfnas.teachers.teacher import compile_for_inference

    t = load_teacher("cifar10_resnet20")
    names = [n for n, _ in t.named_modules()]
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fast = t.logits(x)
    assert not fast.requires_grad
    torch.testing.assert_close(fast, t(x).detach(), atol=1e-4, rtol=1e-4)
    assert t._compiled["cpu"] is not None  # ResNet-20 traces; the compiled copy is reused per device
    torch.testing.assert_close(t.logits(x[:2]), t(x[:2]).detach(), atol=1e-4, rtol=1e-4)  # other batch size
    assert [n for n, _ in t.named_modules()] == names and len(t.batchnorms()) == 19
    assert not any("_compiled" in k for k in t.state_dict())
    twin = copy.deepcopy(t)  # copies compile their own
    assert len(twin._compiled) == 0
    torch.testing.assert_close(twin.logits(x), fast)
    # a data-dependent branch is refused (the trace would be wrong for inputs taking the other branch)
    assert compile_for_inference(_Branchy(), torch.rand(2, 3, 8, 8)) is None
