"""Reading a cell off measured losses: per decision the option of lowest loss, optionally with at most M
parameter-free options (``proxyless.max_param_free``).

The cap is P-DARTS's prior (Chen et al., ICCV 2019, at most M = 2 skip connections in the DARTS normal cell)
widened to every option that learns no transformation of its input (the space's ``parameter_free``: skip and
pooling on NAS-Bench-201): after a few hundred weight steps a supernet still fits its held-out batches more
cheaply through those options than through its half-trained convolutions, and cells of three or more of them
are the searches' worst (benchmarks/results/search_quality_cpu.md). While the cell holds more than M of them
on the counted decisions, the one whose best parametric option costs the least extra loss is replaced by it.
It reads only the losses, so the supernet and its training are the same with or without it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch


def lowest_loss_choices(losses: Mapping[str, torch.Tensor], decisions: Mapping[str, Sequence[str]],
                        max_free: int | None = None, free: Collection[str] = (),
                        counted: Collection[str] = ()) -> dict[str, str]:
    """``{decision: option}`` of lowest loss per decision (``losses[k]``: (n,) one loss per option of
    ``decisions[k]``, inf for options never derived); with ``max_free``, at most that many options of ``free`` on
    the ``counted`` decisions, each one over the cap replaced by the decision's lowest-loss option outside
    ``free``, the smallest increase of loss first (ties: the earlier decision). A counted decision without a
    finite option outside ``free`` keeps its choice."""
    pick = {k: int(loss.argmin()) for k, loss in losses.items()}

    def is_free(k: str) -> bool:
        return decisions[k][pick[k]] in free

    while max_free is not None and sum(is_free(k) for k in counted if k in pick) > max_free:
        swaps = []  # (extra loss, decision, replacement index)
        for k in (k for k in losses if k in counted and is_free(k)):
            rest = [j for j, o in enumerate(decisions[k]) if o not in free and math.isfinite(float(losses[k][j]))]
            if rest:
                j = min(rest, key=lambda j: float(losses[k][j]))
                swaps.append((float(losses[k][j] - losses[k][pick[k]]), k, j))
        if not swaps:
            break
        _, k, j = min(swaps, key=lambda s: s[0])  # min keeps the first of equal increases
        pick[k] = j
    return {k: decisions[k][j] for k, j in pick.items()}
