"""NAS-Bench-201 isomorphism key: equivalent cells share it, different ones do not; the whole-space counts;
evolution never evaluates two cells of one function; the stratified sample holds distinct functions."""

from __future__ import annotations

import csv
import itertools

import pytest
import torch

from dfnas.assets import nb201_table_path
from dfnas.search.spos import Evolution, EvolutionConfig
from dfnas.spaces import Arch, build_space
from dfnas.spaces.nb201 import EDGES, OPS, NB201Space, benchmark_unique_string, edge_key, function_key
from dfnas.spaces.nb201_table import NB201Table

P = NB201Space.parse


def _all_cells() -> list[Arch]:
    return [Arch.of("nb201", {edge_key(j, i): op for (j, i), op in zip(EDGES, ops, strict=True)})
            for ops in itertools.product(OPS, repeat=len(EDGES))]


@pytest.mark.parametrize("a, b", [
    # edges out of node 1, which has only a `none` input, carry nothing
    ("|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|",
     "|none~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"),
    # node 2 never reaches the output (edge 3<-2 is none): its edges do not matter
    ("|nor_conv_1x1~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|",
     "|nor_conv_1x1~0|+|none~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"),
    # nodes 1 and 2 swapped (both read node 0 only): the sum does not care which is which
    ("|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|none~0|nor_conv_1x1~1|skip_connect~2|",
     "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|nor_conv_1x1~2|"),
    # a skip through an intermediate node is the node's value itself
    ("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_1x1~2|",
     "|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|"),
    # every path cut: both cells output zero
    ("|none~0|+|none~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|",
     "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
    # average pooling is linear: pool(x + conv(x)) == pool(x) + pool(conv(x))
    ("|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|",
     "|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|avg_pool_3x3~1|none~2|"),
])
def test_equivalent_cells_share_a_key(a: str, b: str) -> None:
    assert P(a) != P(b)
    assert function_key(P(a)) == function_key(P(b)) == NB201Space.function_key(P(b))


@pytest.mark.parametrize("a, b", [
    ("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|",
     "|nor_conv_1x1~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|"),  # another op
    ("|skip_connect~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|",
     "|skip_connect~0|+|none~0|none~1|+|skip_connect~0|skip_connect~1|none~2|"),  # x vs 2x
    ("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",
     "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|skip_connect~2|"),  # conv(conv(x)) vs conv(x)
    ("|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|skip_connect~2|",
     "|avg_pool_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|"),  # conv(x) vs conv(pool(x))
    ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|none~1|nor_conv_3x3~2|",
     "|skip_connect~0|+|skip_connect~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"),  # conv(2x) vs conv(x)
])
def test_different_functions_get_different_keys(a: str, b: str) -> None:
    assert function_key(P(a)) != function_key(P(b))


def test_key_counts_over_the_whole_space() -> None:
    cells = _all_cells()
    assert len(set(cells)) == 15625
    assert len({function_key(a) for a in cells}) == 4660
    # the benchmark's own convention gives the 6,466 unique cells it reports
    bench = {}
    for a in cells:
        bench.setdefault(benchmark_unique_string(a), set()).add(function_key(a))
    assert len(bench) == 6466
    assert all(len(keys) == 1 for keys in bench.values())  # function_key only merges benchmark classes


def test_benchmark_unique_string_matches_the_table_column() -> None:
    path = nb201_table_path()
    if path is None:
        pytest.skip("NAS-Bench-201 table not found (set DFNAS_NB201 or DFNAS_ASSETS)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if "UniqueString" not in rows[0]:
        pytest.skip("this copy of the table has no UniqueString column")
    assert all(benchmark_unique_string(P(r["ArchitectureString"])) == r["UniqueString"] for r in rows)


def test_equal_keys_compute_equal_outputs_with_shared_weights() -> None:
    # convs of zero nodes are the one convention (BN bias); cells without them must agree numerically
    space = build_space("nb201", C=3, N=1, input_size=8)
    c = P("|nor_conv_3x3~0|+|none~0|none~1|+|avg_pool_3x3~0|avg_pool_3x3~1|none~2|")
    d = P("|nor_conv_3x3~0|+|skip_connect~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    assert function_key(c) == function_key(d)
    sup = space.build_supernet().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sup.set_path(c)
        yc = sup(x)
        sup.set_path(d)
        yd = sup(x)
    assert torch.allclose(yc, yd, atol=1e-5)


def test_evolution_never_evaluates_two_cells_of_one_function() -> None:
    space = build_space("nb201", num_classes=10, input_size=8, C=2, N=1)
    target = function_key(P("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"))
    evaluated: list[Arch] = []

    def score(a: Arch) -> float:  # cheap fake fitness: shared characters with a target key
        evaluated.append(a)
        k = function_key(a)
        return sum(x == y for x, y in zip(k, target, strict=False)) - 0.01 * len(k)

    records: list[dict] = []
    cfg = EvolutionConfig(population=12, top_k=4, generations=8, mutation_prob=0.4)
    evo = Evolution(space, cfg, torch.Generator().manual_seed(0), cost=lambda a: 0.0)
    evo.run(score, records.append)
    keys = [function_key(a) for a in evaluated]
    assert len(keys) == len(set(keys)) == len(evo.scores)
    for r in records:  # a population never holds two cells of one function
        pop_keys = [function_key(P(p["arch"])) for p in r["population"]]
        assert len(pop_keys) == len(set(pop_keys))
    # the search did meet equivalent cells under other strings (the check above is not vacuous), and they
    # were given the score of the equivalent cell instead of an evaluation
    shown = {P(p["arch"]) for r in records for p in r["population"]}
    stand_ins = [a for a in shown if a not in evo.scores]
    assert stand_ins
    for r in records:
        for p in r["population"]:
            assert p["score"] == evo.score_of(P(p["arch"]))


def test_stratified_sample_holds_distinct_functions() -> None:
    path = nb201_table_path()
    if path is None:
        pytest.skip("NAS-Bench-201 table not found (set DFNAS_NB201 or DFNAS_ASSETS)")
    table = NB201Table.load()
    old = table.sample_stratified(30, torch.Generator().manual_seed(0), distinct=False)
    new = table.sample_stratified(30, torch.Generator().manual_seed(0))
    assert len({function_key(a) for a in old}) == 28  # the committed ranking benchmark's sample
    assert len({function_key(a) for a in new}) == 30
    # the replacement draws no random number: only the two repeated cells change
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == [2, 6]
    accs = [table.lookup(a)["cifar10"] for a in new]
    assert accs == sorted(accs)
