"""SPOS evolution: the MACs constraint is never broken (sampling, mutation, crossover, result), resumable."""

from __future__ import annotations

import pytest
import torch

from dfnas.errors import ConfigError
from dfnas.search.bn import recalibrate_bn
from dfnas.search.spos import Evolution, EvolutionConfig
from dfnas.spaces import build_space
from dfnas.spaces.flops import arch_macs, cost_tables

SPACE = build_space("nb201", num_classes=10, input_size=8, C=2, N=1)
BASE, COSTS = cost_tables(SPACE)


def cost(a):
    return arch_macs(BASE, COSTS, SPACE, a)


def _median_cost() -> float:
    g = torch.Generator().manual_seed(0)
    return float(torch.tensor([cost(SPACE.sample(g)) for _ in range(200)]).median())


def _evo(max_macs, seed=0, **kw) -> Evolution:
    cfg = EvolutionConfig(population=8, top_k=3, generations=5, mutation_prob=0.3, max_macs=max_macs, **kw)
    return Evolution(SPACE, cfg, torch.Generator().manual_seed(seed), cost,
                     min_cost=BASE + sum(float(c.min()) for c in COSTS.values()))


def test_constraint_never_broken_even_when_the_score_rewards_breaking_it():
    limit = _median_cost()
    scored, records = [], []

    def score(a):  # bigger is better: drives the search against the constraint
        scored.append(a)
        return cost(a)

    evo = _evo(limit)
    best = evo.run(score, records.append)
    assert scored and all(cost(a) <= limit for a in scored)  # nothing over budget was ever evaluated
    assert all(p["macs"] <= limit for r in records for p in r["population"])  # nor kept in a population
    assert cost(best) <= limit
    assert len(records) == 5 and records[-1]["best_score"] == cost(best)
    # the mutation/crossover makers themselves reject over-budget children
    big = max(scored, key=cost)
    for _ in range(50):
        for child in (evo.mutate(big), evo.crossover(big, scored[0])):
            assert child is None or cost(child) <= limit
    # without the constraint the same search goes over budget: the check above is not vacuous
    assert cost(_evo(None).run(cost)) > limit


def test_impossible_constraint_is_refused():
    with pytest.raises(ConfigError, match="max_macs"):
        _evo(max_macs=1.0)


def test_evolution_resume_equals_uninterrupted():
    ref = _evo(None, seed=5).run(cost)
    states = []
    evo = _evo(None, seed=5)

    class Stop(Exception):
        pass

    def on_gen(rec):
        states.append(evo.state_dict())
        if rec["generation"] == 2:
            raise Stop

    with pytest.raises(Stop):
        evo.run(cost, on_gen)
    resumed = _evo(None, seed=5)
    resumed.load_state_dict(states[-1])
    assert resumed.generation == 3
    assert resumed.run(cost) == ref


def test_evolution_improves_over_random_on_a_known_objective():
    target = SPACE.sample(torch.Generator().manual_seed(9)).as_dict()

    def score(a):  # number of decisions agreeing with a hidden target architecture
        return sum(a.as_dict()[k] == v for k, v in target.items())

    evo = _evo(None, seed=1)
    evo.cfg.generations = 12
    best = evo.run(score)
    first_pop_best = max(score(a) for a in _evo(None, seed=1).initial_population())
    assert score(best) >= first_pop_best and score(best) >= 5


def test_bn_recalibration_gives_exact_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4, momentum=0.1))
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(5, 3, 6, 6, generator=g) * (i + 1) for i in range(3)]
    net[1].running_mean.fill_(7.0)
    n = recalibrate_bn(net, batches)
    assert n == 15 and not net.training and net[1].momentum == 0.1
    with torch.no_grad():
        feats = torch.cat([net[0](b) for b in batches])  # (15, 4, 6, 6)
    # cumulative average of per-batch means: equal batch sizes make it the overall mean
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
