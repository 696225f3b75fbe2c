"""The CIFAR ResNet family (He et al. 2016; ResNet-20/32/44/56) as a space with one decision, its depth.

Not a search space (it has no supernet): it lets a fixed student network go through everything that takes an
architecture (``dfnas train``, export, reports), e.g. the data-free distillation protocol of the field,
ResNet-56 teacher -> ResNet-20 student trained on synthetic data only. String: ``resnet20``.
The networks are the teachers' own builder (``dfnas.teachers.resnet_cifar``), trained from scratch here.
"""

from __future__ import annotations

from torch import nn

from dfnas.errors import ArchError
from dfnas.spaces.base import Arch, Space, Supernet, register_space

DEPTHS = ["20", "32", "44", "56"]


@register_space
class CifarResNetSpace(Space):
    """ResNet-(6n+2) for CIFAR-sized images: 3 stages of 16/32/64 channels; the decision is the depth."""

    name = "cifar_resnet"
    not_searchable = ("space 'cifar_resnet' is a fixed network family, not a search space: train one of its "
                      "networks with `dfnas train --arch resnet20`, or search nb201, darts, proxyless or spos")

    def __init__(self, num_classes: int = 10, input_size: int = 32, in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        if in_channels != 3:
            raise ArchError(f"space 'cifar_resnet' takes RGB images (in_channels 3), got in_channels={in_channels}")

    @classmethod
    def decisions(cls) -> dict[str, list[str]]:
        return {"depth": list(DEPTHS)}

    @classmethod
    def format(cls, arch: Arch) -> str:
        return f"resnet{arch['depth']}"

    @classmethod
    def parse(cls, s: str) -> Arch:
        t = s.strip().lower()
        depth = t[len("resnet"):] if t.startswith("resnet") else ""
        if depth not in DEPTHS:
            raise ArchError(f"architecture {s.strip()!r}: expected a CIFAR ResNet name, one of "
                            f"{['resnet' + d for d in DEPTHS]}")
        return Arch.of(cls.name, {"depth": depth})

    def build_supernet(self) -> Supernet:
        raise ArchError(self.not_searchable)

    def build_network(self, arch: Arch) -> nn.Module:
        from dfnas.teachers.resnet_cifar import CifarResNet

        self.validate(arch)
        return CifarResNet(int(arch["depth"]), self.num_classes)
