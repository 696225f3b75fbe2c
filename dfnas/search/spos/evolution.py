"""Constrained evolutionary search over architectures (SPOS, Guo et al. ECCV 2020, section 3.4).

Each generation scores the population, keeps the top-k of every candidate scored so far, and builds the
next population from half mutations (each decision resampled uniformly with probability ``mutation_prob``)
and half crossovers (each decision taken from either of two top-k parents) of the top-k. Paper settings:
population 50, top-k 10, 20 generations, mutation probability 0.1; the defaults here are smaller for CPU.

The constraint is enforced where candidates are made: a random, mutated or crossed-over architecture whose
MACs exceed ``max_macs`` is rejected on the spot and never enters a population, so none is ever scored,
kept or returned.

Architectures that compute the same function (``Space.function_key``; e.g. NAS-Bench-201 cells differing only
on edges cut off by ``none``) count as one: a population holds at most one of each, and an architecture
equivalent to one already scored takes over that score instead of being evaluated again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dfnas.errors import ArchError, ConfigError, DfnasError
from dfnas.spaces.base import Arch, Space


@dataclass
class EvolutionConfig:
    population: int = 16
    top_k: int = 5
    generations: int = 6
    mutation_prob: float = 0.1
    max_macs: float | None = None  # constraint: candidates above this many MACs are rejected when made
    max_tries: int = 200  # attempts per candidate before giving up on filling the population

    def __post_init__(self) -> None:
        if self.population < 2 or self.top_k < 1 or self.generations < 1:
            raise ConfigError(f"evolution needs population >= 2, top_k >= 1, generations >= 1; got "
                              f"{self.population}, {self.top_k}, {self.generations}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"mutation_prob must lie in [0, 1], got {self.mutation_prob}")


class Evolution:
    """Resumable evolutionary search; ``cost(arch)`` gives MACs, ``score(arch)`` higher-is-better."""

    def __init__(self, space: Space, cfg: EvolutionConfig, generator: torch.Generator,
                 cost: Callable[[Arch], float], min_cost: float | None = None) -> None:
        self.space, self.cfg, self.generator, self.cost = space, cfg, generator, cost
        self.dec = space.decisions()
        if cfg.max_macs is not None and min_cost is not None and min_cost > cfg.max_macs:
            raise ConfigError(f"no architecture of this space meets max_macs={cfg.max_macs:.4g}: the cheapest "
                              f"has {min_cost:.4g} MACs")
        self.generation = 0
        self.population: list[Arch] = []
        self.scores: dict[Arch, float] = {}  # every candidate scored so far (all valid by construction)
        self._scored: dict[str, Arch] = {}  # function key -> the one architecture of that function scored

    def key(self, arch: Arch) -> str:
        """The function key of ``arch``: architectures with equal keys are evaluated once."""
        return self.space.function_key(arch)

    def score_of(self, arch: Arch) -> float:
        """The score of ``arch`` or of the equivalent architecture scored in its place."""
        return self.scores[arch] if arch in self.scores else self.scores[self._scored[self.key(arch)]]

    # -- candidate makers: each returns only architectures that satisfy the constraint ----------------------
    def valid(self, arch: Arch) -> bool:
        """Whether ``arch`` is an architecture of the space (e.g. 2 inputs per DARTS node) within max_macs."""
        try:
            getattr(self.space, "check", self.space.validate)(arch)
        except ArchError:
            return False
        return self.cfg.max_macs is None or self.cost(arch) <= self.cfg.max_macs

    def _rand(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def random_candidate(self) -> Arch | None:
        for _ in range(self.cfg.max_tries):
            a = self.space.sample(self.generator)
            if self.valid(a):
                return a
        return None

    def mutate(self, parent: Arch) -> Arch | None:
        d = parent.as_dict()
        out = {}
        for k, opts in self.dec.items():
            r = float(torch.rand(1, generator=self.generator))
            out[k] = opts[self._rand(len(opts))] if r < self.cfg.mutation_prob else d[k]
        a = Arch.of(self.space.name, out)
        return a if self.valid(a) else None

    def crossover(self, p1: Arch, p2: Arch) -> Arch | None:
        d1, d2 = p1.as_dict(), p2.as_dict()
        out = {k: (d1[k] if float(torch.rand(1, generator=self.generator)) < 0.5 else d2[k]) for k in self.dec}
        a = Arch.of(self.space.name, out)
        return a if self.valid(a) else None

    def _fill(self, pop: list[Arch], n: int, make: Callable[[], Arch | None]) -> None:
        # distinct by function, not by string: two equivalent candidates would spend a slot on one function
        seen = {self.key(a) for a in pop}
        target = len(pop) + n
        for _ in range(self.cfg.max_tries * max(1, n)):
            if len(pop) >= target:
                return
            a = make()
            if a is not None and (k := self.key(a)) not in seen:
                seen.add(k)
                pop.append(a)

    def initial_population(self) -> list[Arch]:
        pop: list[Arch] = []
        self._fill(pop, self.cfg.population, self.random_candidate)
        if not pop:
            raise DfnasError(f"no architecture within max_macs={self.cfg.max_macs} found in "
                             f"{self.cfg.max_tries} random draws; raise max_macs")
        return pop

    def ranked(self) -> list[tuple[Arch, float]]:
        """Every scored candidate with its score, best first (one per function)."""
        # ties broken by the architecture string, so the ranking does not depend on insertion order
        return sorted(self.scores.items(), key=lambda kv: (-kv[1], str(kv[0])))

    def top(self) -> list[tuple[Arch, float]]:
        return self.ranked()[:self.cfg.top_k]

    def next_population(self) -> list[Arch]:
        parents = [a for a, _ in self.top()]
        pop: list[Arch] = []
        half = self.cfg.population // 2
        self._fill(pop, half, lambda: self.mutate(parents[self._rand(len(parents))]))
        self._fill(pop, self.cfg.population - len(pop),
                   lambda: self.crossover(parents[self._rand(len(parents))], parents[self._rand(len(parents))]))
        # small or tightly constrained spaces may not yield enough new children: top up with random ones
        self._fill(pop, self.cfg.population - len(pop), self.random_candidate)
        return pop

    # -- the search -----------------------------------------------------------------------------------------
    def run(self, score: Callable[[Arch], float],
            on_generation: Callable[[dict[str, Any]], None] | None = None) -> Arch:
        """Evolve until ``cfg.generations`` are done (continuing a restored state); return the best."""
        if self.generation == 0 and not self.population:
            self.population = self.initial_population()
        while self.generation < self.cfg.generations:
            for a in self.population:
                k = self.key(a)
                if a not in self.scores and k not in self._scored:
                    self.scores[a] = float(score(a))
                    self._scored[k] = a
            top = self.top()
            pop_scores = [self.score_of(a) for a in self.population]
            record = {
                "kind": "generation", "generation": self.generation,
                "population": [{"arch": str(a), "score": self.score_of(a), "macs": self.cost(a)}
                               for a in self.population],
                "best_arch": str(top[0][0]), "best_score": top[0][1],
                "mean_score": sum(pop_scores) / len(pop_scores), "top_k": [str(a) for a, _ in top],
                "evaluated": len(self.scores),
            }
            self.generation += 1
            self.population = self.next_population() if self.generation < self.cfg.generations else []
            if on_generation is not None:
                on_generation(record)
        return self.best()

    def best(self) -> Arch:
        if not self.scores:
            raise DfnasError("evolution has not scored any architecture")
        best = self.top()[0][0]
        assert self.valid(best)  # guaranteed by construction; checked again because it is the contract
        return best

    # -- persistence (plain types only: checkpoints load with weights_only=True) ------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "population": [a.as_dict() for a in self.population],
                "scores": [[a.as_dict(), s] for a, s in self.scores.items()],
                "generator": self.generator.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.generation = int(s["generation"])
        self.population = [Arch.of(self.space.name, d) for d in s["population"]]
        self.scores = {Arch.of(self.space.name, d): float(v) for d, v in s["scores"]}
        self._scored = {}
        for a in self.scores:  # the first scored of each function represents it (as when it was scored)
            self._scored.setdefault(self.key(a), a)
        self.generator.set_state(s["generator"])
