"""Tiny seeded datasets shared by tests (not a test module: pytest collects only ``test_*.py``)."""

from __future__ import annotations

import torch

from dfnas.data import ImageSet


def soft_image_set(n: int = 40, size: int = 10, k: int = 4, seed: int = 0) -> ImageSet:
    """``n`` random uint8 canvases (n, 3, size, size) cropped to 8 px inputs, with sharp random soft targets
    (n, k): the searches' tiny stand-in for a synthetic set (``label_mode="soft"``)."""
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.softmax(torch.randn(n, k, generator=g) * 3, 1), 8, [str(i) for i in range(k)],
                    label_mode="soft")
