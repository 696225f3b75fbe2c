"""A tiny seeded teacher (2 conv + BN layers) for smoke runs and tests that must take milliseconds."""

from __future__ import annotations

import torch
from torch import nn

from dfnas.teachers.teacher import Teacher, TeacherSpec


class ToyNet(nn.Module):
    """conv-BN-ReLU x2, global average pool, linear head; ``forward_features`` gives the pooled features."""

    def __init__(self, num_classes: int = 4, width: int = 8, batchnorm: bool = True, in_channels: int = 3) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.BatchNorm2d(width) if batchnorm else nn.Identity()

        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), norm(), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), norm(), nn.ReLU())
        self.linear = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> pooled features (B, width)."""
        return self.body(x).mean((2, 3))  # (B, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, K)."""
        return self.linear(self.forward_features(x))


def toy_teacher(num_classes: int = 4, input_size: int = 8, seed: int = 0, batchnorm: bool = True,
                device: torch.device | str = "cpu") -> Teacher:
    """A frozen ``Teacher`` around a randomly initialized ToyNet whose BN running statistics are non-trivial.

    Weights come from ``seed`` only; the running statistics are those of a few batches of seeded random
    images (so the BatchNorm term has something to match).
    """
    gen = torch.Generator().manual_seed(seed)
    model = ToyNet(num_classes, batchnorm=batchnorm)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        model.linear.weight.mul_(4.0)  # a confident head: pixels in [0, 1] can reach every class
        model.train()
        for _ in range(4):
            # images with a per-image colour cast, so the statistics differ from those of plain noise
            x = torch.rand(16, 3, input_size, input_size, generator=gen) * 0.5  # (16, 3, S, S)
            x = x + torch.rand(16, 3, 1, 1, generator=gen) * 0.5  # per-image colour cast (16, 3, 1, 1)
            model(x)
    model.eval()
    spec = TeacherSpec(name=f"toy{num_classes}_s{seed}{'' if batchnorm else '_nobn'}", num_classes=num_classes,
                       input_size=input_size, class_names=[f"class{i}" for i in range(num_classes)])
    return Teacher(model, spec).to(device)
