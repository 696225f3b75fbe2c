"""The search-quality summary: per-group statistics, paired comparisons and their Markdown report, and the
strip chart (``search_quality.py`` writes them after running its cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common
import reporting
from common import SOURCES
from search_quality_grid import METHODS, NAME, Budget

STATS_HEADERS = ["seeds", "mean difference", "95 % CI", "p (t)", "p (sign-flip)", "verdict"]


def _stats(c: dict[str, Any]) -> list[Any]:
    """The STATS_HEADERS columns of one paired comparison."""
    verdict = {"a better": "first better", "b better": "second better"}.get(c["verdict"], c["verdict"])
    return [c["n"], f"{c['mean_diff']:+.2f}", f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]", f"{c['p_t']:.3f}",
            f"{c['p_perm']:.3f}", verdict]


def summarize(cells: list[dict[str, Any]], budget_name: str, budget: Budget, table: Any, sources: list[str],
              methods: list[str], data_info: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Aggregate cells into the summary dict and its Markdown report."""
    import numpy as np

    acc = table.accuracies("cifar10")
    ref = {"random_cell_mean": float(acc.mean()), "random_cell_std": float(acc.std()),
           "median_cell": float(np.median(acc)), "best_cell": float(acc.max()),
           "all_skip_cell": table.lookup("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|"
                                         "skip_connect~1|skip_connect~2|")["cifar10"]}
    groups: dict[str, dict[str, Any]] = {}
    for s in sources:
        for m in methods:
            cs = sorted((c for c in cells if c["source"] == s and c["method"] == m), key=lambda c: c["seed"])
            if not cs:
                continue
            a = [c["nb201_cifar10"] for c in cs]
            mu, sd = reporting.mean_std(a)
            pmu, _ = reporting.mean_std([c["nb201_percentile"] for c in cs])
            tmu, _ = reporting.mean_std([c["search_time_s"] for c in cs])
            groups[f"{s}/{m}"] = {"source": s, "method": m, "seeds": [c["seed"] for c in cs], "acc": a,
                                  "acc_mean": mu, "acc_std": sd, "percentile_mean": pmu, "search_time_mean_s": tmu,
                                  "archs": [c["arch"] for c in cs]}
    comparisons = paired_comparisons(cells, sources, methods)
    same_supernet = same_supernet_comparisons(cells, sources, methods)
    summary = {"benchmark": NAME, "budget": budget_name, "budget_settings": budget.as_dict(), "reference": ref,
               "sources": {s: {"label": SOURCES[s].label, **data_info.get(s, {})} for s in sources},
               "methods": {m: {"label": METHODS[m].label, "config": METHODS[m].config} for m in methods},
               "groups": groups, "comparisons": comparisons,
               "same_supernet_comparisons": same_supernet, "cells": cells, "environment": reporting.environment()}

    lines = [f"# Search quality by data source ({budget_name} budget)\n",
             f"{budget.note}. Teacher: ResNet-20 (CIFAR-10). Space: NAS-Bench-201 (searched with "
             f"C={budget.space['C']}, N={budget.space['N']}). Score: NAS-Bench-201 CIFAR-10 test accuracy (%) "
             "of the found cell, mean ± sample std over seeds (ground truth: 200 epochs at C=16, N=5). "
             "Same images per source and the same search settings for every cell.\n",
             f"Reference: a uniformly random cell scores {ref['random_cell_mean']:.2f} ± {ref['random_cell_std']:.2f} "
             f"(median {ref['median_cell']:.2f}); the best cell {ref['best_cell']:.2f}; the all-skip cell (DARTS "
             f"collapse) {ref['all_skip_cell']:.2f}.\n",
             "## NAS-Bench-201 CIFAR-10 test accuracy of the found cell (%)\n"]
    headers = ["source"] + [METHODS[m].label for m in methods]
    rows = []
    for s in sources:
        row = [SOURCES[s].label]
        for m in methods:
            g = groups.get(f"{s}/{m}")
            row.append("–" if g is None else f"{reporting.fmt_pm(g['acc'])} (n={len(g['acc'])})")
        rows.append(row)
    lines.append(reporting.md_table(headers, rows))
    if comparisons:
        lines.append("\n## Paired comparisons (the same seeds on both sources)\n")
        lines.append("Difference = first source minus second, per seed; 95 % confidence interval of the mean "
                     "difference (Student t), paired t-test p, and the exact sign-flip permutation p (with n seeds "
                     "it cannot go below 2/2^n: 0.0625 at n = 5). *within noise* = the interval contains 0.\n")
        crow = [[METHODS[c["method"]].label, f"{SOURCES[c['a']].label} − {SOURCES[c['b']].label}", *_stats(c)]
                for c in comparisons]
        lines.append(reporting.md_table(["method", "comparison", *STATS_HEADERS], crow))
    if same_supernet:
        lines.append("\n## Paired comparisons on the same supernets\n")
        lines.append("A method that searches another cell's trained supernet (same source and seed) against that "
                     "cell: difference = first method minus second, per seed; statistics as above.\n")
        lines.append(reporting.md_table(
            ["source", "comparison", *STATS_HEADERS],
            [[SOURCES[c["source"]].label, f"{METHODS[c['method']].label} − {METHODS[c['donor']].label}", *_stats(c)]
             for c in same_supernet]))
    pre: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (source, method) -> its pre-filtered cells by seed
    for c in sorted(cells, key=lambda c: c["seed"]):
        if "prefilter" in c:
            pre.setdefault((c["source"], c["method"]), []).append(c)
    if pre:
        lines.append("\n## What the zero-cost pre-filter adds\n")
        lines.append("Per search with the pre-filter: the found cell, the pre-filter's own best-scored cell (what the "
                     "training-free search returns with the same proxies, candidates and seed), and a uniformly "
                     "random cell of the restricted space (mean over its cells; its best in brackets).\n")
        prow = []
        for g in groups.values():
            cs = pre.get((g["source"], g["method"]))
            if cs is None:
                continue
            prow.append([SOURCES[g["source"]].label, METHODS[g["method"]].label, len(cs), reporting.fmt_pm(g["acc"]),
                         reporting.fmt_pm([c["prefilter"]["best_candidate_nb201"] for c in cs]),
                         reporting.fmt_pm([c["prefilter"]["space_mean_nb201"] for c in cs]) + " (" + ", ".join(
                             f"{c['prefilter']['space_best_nb201']:.2f}" for c in cs) + ")"])
        lines.append(reporting.md_table(["source", "method", "seeds", "search", "pre-filter alone",
                                      "random cell of the restricted space"], prow))
    capped = [c for c in sorted(cells, key=lambda c: (c["source"], c["method"], c["seed"])) if "uncapped" in c]
    if capped:
        lines.append("\n## What the cap on skip connections changes\n")
        lines.append("Per search with `darts.max_skip`: the cell it returns, and the cell the same search (same "
                     "weights and architecture parameters: the cap acts at derivation only) gives without the cap. "
                     "Judge the cap by this pair, not against another column: a long search can follow another "
                     "trajectory on another machine (another CPU, another float order), and other columns' cells may "
                     "have run elsewhere.\n")
        lines.append(reporting.md_table(
            ["source", "method", "seed", "capped", "uncapped", "difference"],
            [[SOURCES[c["source"]].label, METHODS[c["method"]].label, c["seed"], f"{c['nb201_cifar10']:.2f}",
              f"{c['uncapped']['nb201_cifar10']:.2f}", f"{c['nb201_cifar10'] - c['uncapped']['nb201_cifar10']:+.2f}"]
             for c in capped]))
    lines.append("\n## Details (percentile = % of the 15,625 cells scoring at most as well; time = search only)\n")
    drows = []
    for g in groups.values():
        drows.append([SOURCES[g["source"]].label, METHODS[g["method"]].label, ", ".join(map(str, g["seeds"])),
                      ", ".join(f"{a:.2f}" for a in g["acc"]), f"{g['percentile_mean']:.1f}",
                      common.fmt_duration(g["search_time_mean_s"])])
    lines.append(reporting.md_table(["source", "method", "seeds", "accuracy per seed", "mean percentile",
                                  "mean search time"], drows))
    lines.append("\n## Data sources\n")
    lines.append(reporting.md_table(["source", "images", "supervision", "made in"],
                                 [[SOURCES[s].label, d.get("n", "–"), d.get("label_mode", "–"),
                                   common.fmt_duration(d["make_seconds"]) if d.get("make_seconds") else "cache"]
                                  for s, d in ((s, data_info.get(s, {})) for s in sources)]))
    lines.append("\nSupervision: `distill` = KL to the stored teacher logits (T=4); `hard` = cross-entropy on the "
                 "labels (true labels for real (JPEG), uniformly random for the random-label sources). The real "
                 "images are the lossy JPEG copy of CIFAR-10 training images.\n")
    return summary, "\n".join(lines)


# the comparisons the README draws: the method's full synthesis against real data, the unreal baseline and
# each ablation (first minus second)
COMPARISONS = (("full", "real"), ("full", "noise"), ("full", "real_random"), ("full", "no_recursion"),
               ("full", "no_regional"), ("full", "plain"), ("generator", "full"), ("calibrated", "full"),
               ("generator_stream", "full"), ("generator_stream_agreed", "full"),
               ("generator_stream_agreed", "generator_stream"), ("generator_redraw", "full"),
               ("generator_redraw", "generator"), ("generator_redraw_stream", "full"),
               ("generator_redraw_stream", "generator_stream"), ("generator_redraw_stream_balanced", "full"),
               ("generator_redraw_stream_balanced", "generator_redraw_stream"))


def seed_accuracies(cells: list[dict[str, Any]], source: str, method: str) -> dict[int, float]:
    """Seed -> NB201 accuracy of the found cell, for one source and method."""
    return {c["seed"]: c["nb201_cifar10"] for c in cells if c["source"] == source and c["method"] == method}


def paired_comparisons(cells: list[dict[str, Any]], sources: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """``reporting.paired_difference`` for every (method, COMPARISONS pair) with at least 2 shared seeds."""
    out = []
    for m in methods:
        for a, b in COMPARISONS:
            if a not in sources or b not in sources:
                continue
            res = reporting.paired_difference(seed_accuracies(cells, a, m), seed_accuracies(cells, b, m))
            if res is not None:
                out.append({"method": m, "a": a, "b": b, **res})
    return out


def same_supernet_comparisons(cells: list[dict[str, Any]], sources: list[str], methods: list[str]
                              ) -> list[dict[str, Any]]:
    """``reporting.paired_difference`` of each method that reuses another cell's supernet against that cell, per
    source (at least 2 shared seeds): the two searches differ only after the supernet's training."""
    out = []
    for m in methods:
        donor = METHODS[m].supernet_of
        if donor is None or donor not in methods:
            continue
        for s in sources:
            res = reporting.paired_difference(seed_accuracies(cells, s, m), seed_accuracies(cells, s, donor))
            if res is not None:
                out.append({"method": m, "donor": donor, "source": s, **res})
    return out


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Strip chart: x = source, one colour per method; dots = seeds, diamond + bar = mean ± std.

    Points rather than bars because the y axis does not start at 0 (bars would exaggerate differences).
    """
    plt = reporting.pyplot()
    groups = summary["groups"]
    sources = list(summary["sources"])
    methods = list(summary["methods"])
    ref = summary["reference"]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.4 * len(sources) + 4), 4.8))
    width = 0.8 / max(1, len(methods))
    colors = plt.get_cmap("tab10").colors
    for j, m in enumerate(methods):
        first = True
        for i, s in enumerate(sources):
            g = groups.get(f"{s}/{m}")
            if g is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            ax.scatter([x] * len(g["acc"]), g["acc"], s=14, color=colors[j % 10], alpha=0.6, zorder=3)
            ax.errorbar([x], [g["acc_mean"]], yerr=[g["acc_std"]], fmt="D", ms=6, color=colors[j % 10], capsize=3,
                        mec="k", zorder=4, label=summary["methods"][m]["label"] if first else None)
            first = False
    ax.axhline(ref["random_cell_mean"], ls="--", color="gray", lw=1, label="random cell (mean)")
    ax.axhline(ref["best_cell"], ls=":", color="green", lw=1, label="best cell")
    for i in range(1, len(sources)):
        ax.axvline(i - 0.5, color="0.9", lw=0.8, zorder=0)
    ax.set_xlim(-0.5, len(sources) - 0.5)
    ax.set_xticks(range(len(sources)))
    ax.set_xticklabels([summary["sources"][s]["label"] for s in sources], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("NAS-Bench-201 CIFAR-10 test acc. of found cell (%)")
    ax.set_title(f"Search quality by data source ({summary['budget']} budget; dots = seeds, ◆ = mean ± std)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return reporting.save_figure(fig, path)
