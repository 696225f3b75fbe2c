"""Statistics, tables, plots and the written summaries of the evidence benchmarks: mean ± std, paired
comparisons over seeds (t interval, sign-flip test), Markdown tables, headless matplotlib figures, and
``<stem>.{json,md,png}`` written atomically."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import load_average, log


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def fmt_pm(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± std`` of ``values`` (the mean alone for one value; ``–`` for none)."""
    m, s = mean_std(values)
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict[str, Any] | None:
    """Paired comparison of two conditions measured on the same seeds: ``a[seed] - b[seed]``.

    Returns the seeds both have, the mean difference, the ``level`` confidence interval of the mean (Student t
    with n - 1 degrees of freedom), the paired t-test p-value, the two-sided sign-flip permutation p-value
    (assumes nothing about the distribution; ``sign_flip_p``) and a verdict: ``a better`` / ``b better``
    when the interval excludes 0, else ``within noise``. None when fewer than 2 seeds are shared.
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([float(a[k]) - float(b[k]) for k in seeds])
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # identical differences: the interval collapses onto the mean
        lo = hi = mean
        p_t = 1.0 if mean == 0.0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
        p_t = float(stats.ttest_rel([a[k] for k in seeds], [b[k] for k in seeds]).pvalue)
    p_perm, exact = sign_flip_p(d)
    verdict = "a better" if lo > 0 else "b better" if hi < 0 else "within noise"
    return {"seeds": seeds, "n": n, "diffs": [round(float(x), 4) for x in d], "mean_diff": mean, "sd_diff": sd,
            "ci_level": level, "ci": [lo, hi], "p_t": p_t, "p_perm": p_perm,
            **({} if exact else {"p_perm_draws": SIGN_FLIP_DRAWS}), "verdict": verdict}


SIGN_FLIP_EXACT_MAX = 16  # up to 2^16 sign patterns are enumerated; beyond, the (2^n, n) table outgrows memory
SIGN_FLIP_DRAWS = 200_000  # random sign patterns of the Monte Carlo test (seeded: the same p every time)


def sign_flip_p(d: np.ndarray) -> tuple[float, bool]:
    """Two-sided sign-flip p-value of the paired differences ``d`` (n,): the share of sign patterns whose
    |sum| is at least the observed one. Exact over all 2^n patterns up to n = SIGN_FLIP_EXACT_MAX (at 30 seeds
    the table would take 8 GiB), else estimated from SIGN_FLIP_DRAWS seeded random patterns as
    (hits + 1) / (draws + 1), which never reports 0. Returns (p, exact)."""
    from itertools import product

    n, observed = len(d), abs(float(d.sum())) - 1e-12
    if n <= SIGN_FLIP_EXACT_MAX:
        flips = np.array(list(product((1.0, -1.0), repeat=n)))  # (2^n, n)
        return float(np.mean(np.abs(flips @ np.abs(d)) >= observed)), True
    rng = np.random.default_rng(0)
    hits = 0
    for start in range(0, SIGN_FLIP_DRAWS, 50_000):  # (50,000, n) at a time
        flips = rng.choice((1.0, -1.0), size=(min(50_000, SIGN_FLIP_DRAWS - start), n))
        hits += int(np.sum(np.abs(flips @ np.abs(d)) >= observed))
    return (hits + 1) / (SIGN_FLIP_DRAWS + 1), False


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, stem: str, summary: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``<out>/<stem>.json`` and ``<out>/<stem>.md`` (atomically)."""
    from dfnas.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    j = atomic_write_json(out / f"{stem}.json", summary)
    m = atomic_write_text(out / f"{stem}.md", markdown)
    return j, m


def publish(out: Path, stem: str, summary: dict[str, Any], markdown: str,
            plot: Callable[[dict[str, Any], Path], Path], alt: str, note: str = "") -> None:
    """Draw the summary's plot, link it from the Markdown, write ``<stem>.{json,md,png}``, log and print."""
    png = plot(summary, out / f"{stem}.png")
    markdown += f"\n![{alt}]({png.name})\n"
    j, m = write_outputs(out, stem, summary, markdown)
    log(f"wrote {j}, {m}, {png}" + (f" ({note})" if note else ""))
    print(markdown)


def environment() -> dict[str, Any]:
    """The library's `environment_info` (versions, host facts) and the current 1-minute load average, recorded
    with every summary."""
    from dfnas.io import environment_info

    return {**environment_info(), "load_average_1min": load_average()}


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
