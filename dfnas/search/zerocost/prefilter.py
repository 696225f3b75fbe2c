"""Zero-cost pre-filter for the searches that train a supernet (DARTS, ProxylessNAS, SPOS).

Before the supernet is built, ``candidates`` architectures are drawn and scored exactly as the training-free
search ``zerocost`` scores them (``search_inputs``: the same candidates and batches of the search's training
split; untrained plain networks), so the pre-filter's best candidate is the cell that search would return.
Each option of each decision then gets the mean rank of the candidates that take it (ranks of the proxy score,
or of the rank sum for several proxies); the ``keep`` best options per decision stay, and the search runs on
that restricted space (``dfnas.spaces.base.restrict_space``): the supernet holds only their candidates.

Why: at CPU budgets the weight-sharing searches prefer parameter-free options (pooling, skip) because the
shared convolutions are barely trained when they decide (see the README's search-quality section); the
proxies favour parameterized ones from the start. Whether the search then adds anything over the pre-filter
alone is what the result's ``prefilter.best_candidate`` lets a benchmark measure.

Off by default (``prefilter.proxy: null``). The pre-filter is recomputed when a search resumes (about 10 s for
100 candidates at C=8 N=1 on one core); it is deterministic for the same settings and machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from dfnas.data import ImageSet
from dfnas.errors import ConfigError
from dfnas.search.zerocost.method import search_inputs
from dfnas.search.zerocost.scoring import best_first, combined_scores, parse_proxies, ranks, score_arch
from dfnas.spaces.base import Space, restrict_space


@dataclass
class PrefilterConfig:
    """Options of the zero-cost pre-filter (``prefilter`` block of a search); off while ``proxy`` is None."""

    proxy: str | None = None  # a proxy or proxies joined by '+' (rank sum), e.g. naswot+synflow; None: off
    candidates: int = 100  # architectures scored (as zerocost.candidates)
    keep: int = 2  # options kept per decision
    batch_size: int = 64  # images per proxy batch
    batches: int = 1  # batches per candidate

    def __post_init__(self) -> None:
        for k in ("candidates", "keep", "batch_size", "batches"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"prefilter.{k} must be >= 1, got {getattr(self, k)}")
        if self.proxy is not None:
            parse_proxies(self.proxy)  # ConfigError listing the proxies for an unknown name

    @property
    def enabled(self) -> bool:
        return self.proxy is not None


def option_marginals(space: Space, archs: list[Any], combined: list[float]) -> dict[str, dict[str, float]]:
    """``{decision: {option: mean rank of the candidates taking it}}`` (higher is better; an option no
    candidate took gets -inf)."""
    rk = ranks(combined)
    out: dict[str, dict[str, float]] = {}
    for k, opts in space.decisions().items():
        out[k] = {}
        for o in opts:
            taken = [r for a, r in zip(archs, rk, strict=True) if a[k] == o]
            out[k][o] = sum(taken) / len(taken) if taken else -math.inf
    return out


def prefilter_space(space: Space, train: ImageSet, cfg: PrefilterConfig, seed: int, device: torch.device,
                    progress: bool = True) -> tuple[Space, dict[str, Any]]:
    """The restricted space and a record of the pre-filter (allowed options, marginals, best candidate)."""
    from tqdm import tqdm

    assert cfg.proxy is not None
    proxies = parse_proxies(cfg.proxy)
    dec = space.decisions()
    ops = {k: [o for o in opts if o not in space.structural_options] for k, opts in dec.items()}  # what is kept
    if cfg.keep >= max(len(o) for o in ops.values()):
        raise ConfigError(f"prefilter.keep={cfg.keep} keeps every option of space {space.name!r} (at most "
                          f"{max(len(o) for o in ops.values())} per decision): nothing would be filtered")
    t0 = time.perf_counter()
    archs, batches = search_inputs(space, train, cfg.candidates, cfg.batch_size, cfg.batches, proxies, seed, device,
                                   options="prefilter")
    scores = [score_arch(space, a, proxies, batches, seed, device)
              for a in tqdm(archs, disable=not progress, leave=False, desc="prefilter")]
    combined = combined_scores(scores, proxies)
    marginals = option_marginals(space, archs, combined)
    # the keep best options per decision (structural ones, e.g. DARTS's 'none', stay besides); ties go to the
    # space's own order (stable sort)
    allowed = {k: sorted(o, key=lambda x, k=k: -marginals[k][x])[:cfg.keep] for k, o in ops.items()}
    best = best_first(combined)[0]  # the candidate the training-free search returns
    record = {"proxies": proxies, "candidates": len(archs), "keep": cfg.keep,
              "allowed": {k: [o for o in dec[k] if o in allowed[k] or o in space.structural_options] for k in dec},
              "marginals": {k: {o: (round(v, 3) if math.isfinite(v) else None) for o, v in m.items()}
                            for k, m in marginals.items()},
              "best_candidate": str(archs[best]), "seconds": round(time.perf_counter() - t0, 2)}
    return restrict_space(space, allowed), record
