"""Scoring architectures of a space with zero-cost proxies, and combining several proxies by their ranks.

Determinism: the images come from a ``torch.Generator`` (``proxy_batches``), and each candidate's network is
initialized from a generator derived from (seed, architecture string), so a candidate's score does not
depend on the order in which candidates are scored (a resumed search or a benchmark subset gives the same
numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dfnas.data.imageset import ImageSet, crop_batch
from dfnas.errors import ConfigError, DataError
from dfnas.repro import make_generator
from dfnas.search.weights_init import init_parameters
from dfnas.search.zerocost.proxies import ZERO_COST_PROXIES, build_proxy
from dfnas.spaces.base import Arch, Space

Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, S, S) float in [0, 1], class indices (B,)


def parse_proxies(spec: str) -> list[str]:
    """``"naswot"`` -> ["naswot"]; ``"naswot+synflow"`` -> both (scored together, combined by ranks)."""
    names = [n.strip() for n in str(spec).split("+")]
    if not names or any(not n for n in names):
        raise ConfigError(f"proxy {spec!r}: expected a proxy name or names joined by '+', each one of "
                          f"{ZERO_COST_PROXIES.names()}")
    for n in names:
        ZERO_COST_PROXIES.get(n)  # ConfigError listing the valid proxies
    if len(set(names)) != len(names):
        raise ConfigError(f"proxy {spec!r} names a proxy twice")
    return names


def class_indices(ds: ImageSet) -> torch.Tensor:
    """(N,) the labels a loss-based proxy uses: the teacher's argmax for distillation data, else the targets'."""
    if ds.label_mode == "distill" and ds.logits is not None:
        return ds.logits.argmax(1)
    return ds.targets.argmax(1)


def proxy_batches(ds: ImageSet, batch_size: int, batches: int, generator: torch.Generator,
                  device: torch.device | str = "cpu", proxies: Sequence[str] = (), what: str = "dataset",
                  options: str = "zerocost") -> list[Batch]:
    """``batches`` disjoint batches of ``batch_size`` images drawn without replacement (centre crops, no
    augmentation), the same for every candidate. DataError when ``ds`` holds fewer images than that; the
    messages name the settings block ``options`` the sizes come from (``zerocost`` or ``prefilter``)."""
    if batch_size < 1 or batches < 1:
        raise ConfigError(f"proxy batch_size and batches must be >= 1, got {batch_size} and {batches}")
    need_min = max([build_proxy(p).min_batch for p in proxies] or [1])
    if batch_size < need_min:
        raise ConfigError(f"proxy {'+'.join(proxies)!r} needs batches of at least {need_min} images, "
                          f"got {options}.batch_size={batch_size}")
    need = batch_size * batches
    if len(ds) < need:
        raise DataError(f"{what} holds {len(ds)} images, too few for {batches} proxy batch(es) of {batch_size} "
                        f"({need} images) for proxy {'+'.join(proxies) or '?'}; lower {options}.batch_size or "
                        f"{options}.batches, or use a larger dataset")
    order = torch.randperm(len(ds), generator=generator)[:need]
    labels = class_indices(ds)
    out = []
    for i in range(batches):
        idx = order[i * batch_size:(i + 1) * batch_size]
        x = crop_batch(ds.images[idx], ds.input_size, 0, None, flip=False)
        out.append((x.to(device), labels[idx].to(device)))
    return out


def score_arch(space: Space, arch: Arch, proxies: Sequence[str], batches: Sequence[Batch], seed: int,
               device: torch.device | str = "cpu") -> dict[str, float]:
    """``{proxy: score}`` of ``arch``'s plain network, freshly initialized from (seed, arch); a proxy's score
    is its mean over ``batches`` (data-independent proxies are evaluated once)."""
    space.check(arch)
    out: dict[str, float] = {}
    for name in proxies:
        proxy = build_proxy(name)
        net = init_parameters(space.build_network(arch), make_generator(seed, "zerocost", "init", str(arch)))
        net = net.to(device)
        used = batches if proxy.uses_data else batches[:1]
        out[name] = sum(proxy.score(net, x, y) for x, y in used) / len(used)
    return out


def ranks(values: Sequence[float]) -> list[float]:
    """Ascending ranks 0..n-1 (ties share their mean rank); NaN ranks lowest."""
    keyed = [(-math.inf if v is None or math.isnan(v) else v) for v in values]
    order = sorted(range(len(keyed)), key=lambda i: keyed[i])
    out = [0.0] * len(keyed)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and keyed[order[j + 1]] == keyed[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0
        i = j + 1
    return out


def combined_scores(scores: Sequence[dict[str, float]], proxies: Sequence[str]) -> list[float]:
    """One number per candidate: the proxy's score for one proxy, else the sum of its ranks over ``proxies``
    (each proxy ranks the candidates ascending, so higher is better either way)."""
    if len(proxies) == 1:
        return [float(s[proxies[0]]) for s in scores]
    total = [0.0] * len(scores)
    for p in proxies:
        for i, r in enumerate(ranks([float(s[p]) for s in scores])):
            total[i] += r
    return total


def best_first(combined: Sequence[float]) -> list[int]:
    """Candidate indices from the best combined score down; ties keep the candidates' order."""
    return sorted(range(len(combined)), key=lambda i: (-combined[i], i))


def finite_or_none(v: float) -> float | None:
    """JSON-friendly score: non-finite values (e.g. NASWOT's log 0 = -inf) become None (= lowest rank)."""
    return v if math.isfinite(v) else None


def from_json_score(v: float | None) -> float:
    return -math.inf if v is None else float(v)
