"""BatchNorm recalibration: exact running statistics for one path of a weight-sharing supernet.

During supernet training BN running statistics mix every sampled path, so they are wrong for any single
one; SPOS (Guo et al., ECCV 2020) recomputes them per candidate before evaluating it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on ``batches`` of images (B, C, S, S).

    Uses ``momentum=None`` (cumulative average over the batches: every image counts equally), forwards in
    train mode without gradients, restores each BN's momentum and leaves the model in eval mode.
    Returns the number of images forwarded.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += len(x)
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()
    return n


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode passes inside normalize with batch statistics but leave the running ones as they were
    (``momentum = 0``; momentum ``None``, a cumulative average, is left alone), e.g. extra measuring passes."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
