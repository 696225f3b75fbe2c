"""Training-free search: sample candidate architectures, score each with zero-cost proxies, keep the best.

Registered as the search method ``zerocost`` (proxy chosen by ``zerocost.proxy``, default ``naswot``;
several joined by ``+`` are combined by the sum of their ranks over the candidates) and once per proxy
(``dfnas search --method naswot`` = ``--method zerocost --set zerocost.proxy=naswot``). Options live in the
``zerocost`` block of ``SearchConfig`` for all of them.

No supernet is trained: ``run_search`` calls ``search_without_training`` instead of the training loop. The
run directory gets the same ``arch.json`` / ``result.json`` as every method, plus

    OUT/scores.jsonl  one line per scored candidate {"i", "arch", "scores", "seconds", "config_hash"}:
                      the resume unit (a killed search rescans it and scores only the missing candidates)
    OUT/log.jsonl     one "candidate" record per candidate (scores, best so far), then "done"

Candidates are scored on batches of the search's training split (``held_out`` of the images are left out, as
for the other methods). Candidates: ``candidates`` distinct architectures drawn uniformly from the space with
the method's seed, or every architecture when the space has at most that many (NAS-Bench-201: 15,625).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dfnas.data import ImageSet
from dfnas.errors import ArchError, ConfigError
from dfnas.io import MetricLogger
from dfnas.repro import make_generator
from dfnas.search.base import SearchMethod, register_method
from dfnas.search.weights_init import init_parameters
from dfnas.search.zerocost.proxies import proxy_names
from dfnas.search.zerocost.scoring import (
    best_first,
    combined_scores,
    finite_or_none,
    from_json_score,
    parse_proxies,
    proxy_batches,
    score_arch,
)
from dfnas.spaces.base import Arch, Space

if TYPE_CHECKING:
    from dfnas.search.api import SearchSetup
    from dfnas.search.loop import LoopOutcome

DEFAULT_PROXY = "naswot"
# enumerate the whole space instead of sampling when it has at most this many architectures and half of
# them or more are asked for (rejection sampling of distinct architectures slows down near the end)
_ENUMERATE_MAX = 1_000_000


@dataclass
class ZeroCostConfig:
    """Options of the training-free methods (``zerocost`` and one method per proxy)."""

    proxy: str | None = None  # a proxy, or proxies joined by '+' (rank sum); None: naswot / the method's own
    candidates: int = 100  # architectures scored (all of the space when it has fewer)
    batch_size: int = 64  # images per proxy batch (NASWOT's K is batch_size x batch_size)
    batches: int = 1  # batches per candidate; a data-dependent proxy's score is its mean over them

    def __post_init__(self) -> None:
        for k in ("candidates", "batch_size", "batches"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"zerocost.{k} must be >= 1, got {getattr(self, k)}")


def candidate_archs(space: Space, n: int, generator: torch.Generator) -> list[Arch]:
    """``n`` distinct architectures of ``space`` drawn uniformly, or all of them when it has at most ``n``."""
    decisions = space.decisions()
    total = math.prod(len(o) for o in decisions.values())
    if total <= _ENUMERATE_MAX and 2 * n >= total:
        archs = []
        for combo in itertools.product(*decisions.values()):
            a = Arch.of(space.name, dict(zip(decisions, combo, strict=True)))
            try:
                space.check(a)
            except ArchError:
                continue  # e.g. a cell space whose nodes need a fixed number of inputs
            archs.append(a)
        if n >= len(archs):
            return archs
        return [archs[i] for i in torch.randperm(len(archs), generator=generator)[:n].tolist()]
    seen: dict[str, Arch] = {}
    for _ in range(50 * n):
        a = space.sample(generator)
        seen.setdefault(str(a), a)
        if len(seen) == n:
            break
    return list(seen.values())


def search_inputs(space: Space, train: ImageSet, candidates: int, batch_size: int, batches: int,
                  proxies: list[str], seed: int, device: torch.device, options: str = "zerocost"
                  ) -> tuple[list[Arch], list[Any]]:
    """The candidates and proxy batches of a training-free search with ``seed`` (the pre-filter of the supernet
    searches draws the same, so its best candidate is the cell this search returns)."""
    archs = candidate_archs(space, candidates, make_generator(seed, "zerocost", "candidates"))
    data = proxy_batches(train, batch_size, batches, make_generator(seed, "zerocost", "batches"), device, proxies,
                         what="the search's training split", options=options)
    return archs, data


def read_scores(path: Path, config_hash: str) -> dict[int, dict[str, Any]]:
    """``{candidate index: line}`` from ``scores.jsonl``; a line cut short by a kill is ignored."""
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed run
        if isinstance(rec, dict) and rec.get("config_hash") == config_hash and "i" in rec:
            out[int(rec["i"])] = rec
    return out


@register_method
class ZeroCostMethod(SearchMethod):
    """Score sampled candidates with zero-cost proxies; the best one is the found architecture."""

    name = "zerocost"
    config_cls = ZeroCostConfig
    training_free = True
    options_field = "zerocost"
    own_proxy: ClassVar[str | None] = None  # set by the per-proxy methods

    def __init__(self, space: Space, options: Any, generator: torch.Generator, device: torch.device) -> None:
        super().__init__(space, options, generator, device)
        self.proxies = self.resolve_proxies(options)

    @classmethod
    def resolve_proxies(cls, options: ZeroCostConfig) -> list[str]:
        """The proxies this method scores with (ConfigError for an unknown one or a contradicting setting)."""
        spec = options.proxy
        if cls.own_proxy is not None:
            if spec not in (None, cls.own_proxy):
                raise ConfigError(f"method {cls.name!r} scores with proxy {cls.own_proxy!r}, but zerocost.proxy="
                                  f"{spec!r}; use --method zerocost --set zerocost.proxy={spec}")
            spec = cls.own_proxy
        return parse_proxies(spec or DEFAULT_PROXY)

    def search_without_training(self, setup: SearchSetup, out_dir: Path, config_hash: str,
                                progress: bool = True) -> LoopOutcome:
        from tqdm import tqdm

        from dfnas.search.loop import LoopOutcome

        o: ZeroCostConfig = self.options
        seed = setup.cfg.seed
        archs, batches = search_inputs(self.space, setup.train, o.candidates, o.batch_size, o.batches, self.proxies,
                                       seed, self.device)
        path = out_dir / "scores.jsonl"
        done = read_scores(path, config_hash)
        done = {i: r for i, r in done.items() if i < len(archs) and r["arch"] == str(archs[i])}
        resumed = bool(done)
        logger = MetricLogger(out_dir / "log.jsonl", tensorboard=False)
        if resumed:
            logger.log({"kind": "resume", "scored": len(done), "candidates": len(archs)})
        bar = tqdm(total=len(archs), initial=len(done), disable=not progress, leave=False, dynamic_ncols=True,
                   desc=f"search[{self.name}/{self.space.name}]")
        best: float = -math.inf
        try:
            with open(path, "a", buffering=1) as fh:
                if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                    fh.write("\n")  # end the line a kill cut short, so the next record starts on its own
                for i, arch in enumerate(archs):
                    if i in done:
                        continue
                    t0 = time.perf_counter()
                    s = score_arch(self.space, arch, self.proxies, batches, seed, self.device)
                    rec = {"i": i, "arch": str(arch), "scores": {k: finite_or_none(v) for k, v in s.items()},
                           "seconds": round(time.perf_counter() - t0, 4), "config_hash": config_hash}
                    fh.write(json.dumps(rec) + "\n")  # flushed per line: a kill loses at most this candidate
                    done[i] = rec
                    best = max(best, s[self.proxies[0]])
                    logger.log({"kind": "candidate", "candidate": i, "arch": str(arch), **rec["scores"],
                                "best_so_far": finite_or_none(best), "best_of": self.proxies[0]}, step=i)
                    bar.update(1)
            found, summary = self.pick(archs, done)
            logger.log({"kind": "done", "arch": str(found), "score": summary["best_score"]})
        finally:
            bar.close()
            logger.close()
        elapsed = sum(float(r["seconds"]) for r in done.values())
        net = init_parameters(self.space.build_network(found), make_generator(seed, "zerocost", "init", str(found)))
        return LoopOutcome(found, net, 0, elapsed, resumed, {}, {"zerocost": summary, "epochs": 0})

    def pick(self, archs: list[Arch], done: dict[int, dict[str, Any]]) -> tuple[Arch, dict[str, Any]]:
        """The best candidate (first one on ties) and a summary of the scores for ``result.json``."""
        scores = [{p: from_json_score(done[i]["scores"][p]) for p in self.proxies} for i in range(len(archs))]
        combined = combined_scores(scores, self.proxies)
        order = best_first(combined)
        top = [{"arch": str(archs[i]), "score": finite_or_none(combined[i]),
                "scores": {p: finite_or_none(v) for p, v in scores[i].items()}} for i in order[:5]]
        return archs[order[0]], {"proxies": self.proxies, "combined": "sum of ranks" if len(self.proxies) > 1
                                 else None, "candidates": len(archs), "best_score": top[0]["score"], "top5": top}


def _per_proxy_method(proxy: str) -> type[ZeroCostMethod]:
    """A method named after ``proxy`` that scores with it alone (options: the ``zerocost`` block)."""
    cls = type(f"ZeroCost_{proxy}", (ZeroCostMethod,), {"name": proxy, "own_proxy": proxy,
                                                         "__doc__": f"Training-free search with proxy {proxy!r}."})
    return register_method(cls)  # type: ignore[return-value]


PER_PROXY_METHODS = {p: _per_proxy_method(p) for p in proxy_names()}
