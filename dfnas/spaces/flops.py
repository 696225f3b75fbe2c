"""Compute cost of networks and of search-space options, in multiply-accumulates (MACs).

Convention: one MAC is one multiply plus one add, counted once. Only ``nn.Conv2d`` and ``nn.Linear`` are
counted (batch norm, activations, pooling and additions are a few percent at most and are left out, as in
the NAS literature). Most NAS papers, NAS-Bench-201 included, print this number as "FLOPs"; floating-point
operations in the strict sense are ``2 * MACs``. ``count_flops`` keeps that common name but returns MACs.

For ProxylessNAS's latency/FLOPs loss, ``choice_costs`` gives the MACs of every option of every decision,
so that the expected cost of a distribution over architectures is ``expected_macs(base, costs, probs)``
= base + sum_k sum_i p_ki * cost_ki, differentiable in ``p``; for a one-hot ``p`` it equals the plain
network's MACs exactly (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from dfnas.spaces.base import Arch, Choice, Space, Supernet


def _module_macs(m: nn.Module, out: torch.Tensor) -> int:
    """MACs of one call of ``m`` (Conv2d or Linear) that produced ``out``."""
    if isinstance(m, nn.Conv2d):
        # each output element (B, Cout, H, W) costs (Cin / groups) * kh * kw multiply-accumulates
        kh, kw = m.kernel_size
        return out.numel() * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features  # out: (B, ..., out_features)
    return 0


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode + no_grad for a counting pass, restoring each module's training flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags.items():
            m.train(t)


def _probe(model: nn.Module, input_size: int, in_channels: int) -> torch.Tensor:
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(1, in_channels, input_size, input_size, device=device, dtype=dtype)


def _per_module_macs(model: nn.Module, input_size: int, in_channels: int) -> dict[str, int]:
    """``{module name: MACs}`` of every Conv2d/Linear over one forward pass of one image."""
    counts: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
                counts[name] = counts.get(name, 0) + _module_macs(mod, out)

            handles.append(m.register_forward_hook(hook))
    try:
        with _eval_no_grad(model):
            model(_probe(model, input_size, in_channels))
    finally:
        for h in handles:
            h.remove()
    return counts


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of ``model`` on one ``(1, in_channels, input_size, input_size)`` image."""
    return sum(_per_module_macs(model, input_size, in_channels).values())


def count_flops(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """The NAS-literature "FLOPs" of ``model``: its MACs (see the module docstring; strict FLOPs = 2 x this)."""
    return count_macs(model, input_size, in_channels)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def space_cost(space: Space, arch: Arch) -> dict[str, int]:
    """``{"macs", "flops", "params"}`` of the plain network of ``arch`` (flops = 2 * macs, strict sense)."""
    net = space.build_network(arch)
    macs = count_macs(net, space.input_size, space.in_channels)
    return {"macs": macs, "flops": 2 * macs, "params": count_params(net)}


def _choice_owner(name: str, prefixes: list[tuple[str, Choice]]) -> tuple[Choice, str] | None:
    """The innermost Choice whose candidate contains module ``name``, and which option it is under."""
    best: tuple[str, Choice] | None = None
    for prefix, c in prefixes:
        head = prefix + ".candidates."
        if name.startswith(head) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, c)
    if best is None:
        return None
    op = name[len(best[0]) + len(".candidates."):].split(".", 1)[0]
    return best[1], op


def cost_tables(space: Space) -> tuple[int, dict[str, torch.Tensor]]:
    """``(base_macs(space), choice_costs(space))`` from a single supernet pass (build it once, use both)."""
    supernet: Supernet = space.build_supernet()
    prefixes = list(supernet.choices())
    # all-ones weights run every option of every Choice once, each on the input it would see in any path
    # (the input of a Choice does not depend on which options run, only on its shape, which is fixed)
    keys = {c.key: len(c.options) for _, c in prefixes}
    supernet.set_weights({k: torch.ones(n) for k, n in keys.items()})
    counts = _per_module_macs(supernet, space.input_size, space.in_channels)
    costs = {k: torch.zeros(n, dtype=torch.float64) for k, n in keys.items()}
    base = 0
    for name, macs in counts.items():
        owner = _choice_owner(name, prefixes)
        if owner is None:
            base += macs
        else:
            c, op = owner
            costs[c.key][c.options.index(op)] += macs
    return base, costs


def choice_costs(space: Space) -> dict[str, torch.Tensor]:
    """``{decision key: float64 tensor (num_options,)}``: MACs of each option, summed over every Choice of
    that key (cell spaces share one key across cells). Options without Conv/Linear (pool, skip, none) cost 0.
    """
    return cost_tables(space)[1]


def base_macs(space: Space) -> int:
    """MACs outside every Choice (stem, fixed blocks, cell preprocessing, head): the same for every arch."""
    return cost_tables(space)[0]


def expected_macs(base: float, costs: Mapping[str, torch.Tensor], probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Expected MACs under independent per-decision distributions ``probs[k]`` (num_options,), differentiable.

    ``base`` and ``costs`` come from ``base_macs`` / ``choice_costs``. Returns a 0-d tensor in the dtype
    and on the device of the probabilities.
    """
    total: torch.Tensor | None = None
    for k, c in costs.items():
        p = probs[k]
        term = (p * c.to(device=p.device, dtype=p.dtype)).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.tensor(float(base))
    return total + base


def arch_macs(base: float, costs: Mapping[str, torch.Tensor], space: Space, arch: Arch) -> float:
    """MACs of ``arch`` from the tables (no network built): base + chosen option cost per decision."""
    dec = space.decisions()
    return float(base) + sum(float(costs[k][dec[k].index(v)]) for k, v in arch.as_dict().items())
