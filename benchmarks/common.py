"""Shared plumbing of the evidence benchmarks: data sources, cached datasets, per-cell results (the
statistics, tables and plots are in ``reporting.py``).

Layout (everything under ``benchmarks/_work`` is gitignored scratch space; delete a file to recompute it)::

    benchmarks/_work/<budget>/data/n<N>/<source>/     one dataset per source and image count, made once
    benchmarks/_work/<budget>/<benchmark>/cells/...   one small JSON per finished cell (the resume unit)
    benchmarks/_work/<budget>/<benchmark>/runs/...    run directories of the library (resumable themselves)

A cell JSON records the hash of the settings it was computed with; a later run with different settings
refuses to mix it in rather than silently reporting stale numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfnas.errors import DfnasError
from dfnas.synthesis.config import PRESETS as SYNTHESIS_PRESETS

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / "_work"
RESULTS_DIR = BENCH_DIR / "results"
TEACHER_NAME = "cifar10_resnet20"  # the teacher every benchmark inverts (and distils from)
# the first cell the default `dfnas run` found (NB201 string): the network datafree_wallclock and
# datafree_gap train, so their numbers compare
DEFAULT_RUN_CELL = "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_1x1~2|"
DATA_SEED = 0  # datasets are made once per source with this seed; search / training seeds vary separately


@dataclass(frozen=True)
class Source:
    """A data source of the benchmarks: its label in tables, and how its dataset is made."""

    name: str
    label: str
    kind: str  # "real" (labelled real images) | "synthesis" (dfnas.synthesis method)
    synthesis: dict[str, Any] = field(default_factory=dict)  # SynthesisConfig fields over the budget's preset
    control: bool = False  # a control outside the brief's grid: run only when named in --sources
    # > 0: the budget's images are a uniform draw (seed DATA_SEED) from one run of this many images of the same
    # synthesis, i.e. the images a fast method delivers at its streaming rate (a short run of its own spends most
    # of its time warming up and keeps its first images)
    stream: int = 0
    # how a stream's images are drawn: "uniform"; "balanced": n / K per target class (ImageSet.balanced_subset);
    # "agreed": n / K per target class among the images the teacher assigns to their target (agreed_subset)
    select: str = "uniform"
    run_dir: str | None = None  # folder of its synthesis run under data/n<N>/ (None: its name); shared by draws

    @property
    def folder(self) -> str:
        return self.run_dir or self.name


# Order = order of rows in every table and plot.
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("real", "real (JPEG)", "real"),
    # real images under the very supervision of the synthetic sources (the teacher's soft labels, KD): separates
    # "synthetic images" from "soft labels" when a synthetic source beats real images with true labels
    Source("real_kd", "real (JPEG), teacher labels", "synthesis", {"method": "real_teacher"}, control=True),
    Source("full", "full synthesis", "synthesis", {"method": "full"}),
    Source("generator", "few-step generator", "synthesis", {"method": "generator"}),
    Source("generator_stream", "few-step generator, drawn from a 50,000-image run", "synthesis",
           {"method": "generator"}, control=True, stream=50000),
    Source("generator_stream_agreed", "few-step generator, drawn from a 50,000-image run among the images the "
           "teacher assigns to their target, class-balanced", "synthesis", {"method": "generator"}, control=True,
           stream=50000, select="agreed", run_dir="generator_stream"),
    # the generator as `dfnas synthesize` makes recognized images: each image the teacher does not assign to its
    # target is drawn again (synthesis.generator.redraws), at the budget's image count and in a 50,000-image run
    Source("generator_redraw", "few-step generator, unrecognized images drawn again", "synthesis",
           {"method": "generator", "generator": {"redraws": 8}}, control=True),
    Source("generator_redraw_stream", "few-step generator, unrecognized images drawn again, drawn from a "
           "50,000-image run", "synthesis", {"method": "generator", "generator": {"redraws": 8}}, control=True,
           stream=50000),
    Source("generator_redraw_stream_balanced", "few-step generator, unrecognized images drawn again, drawn from a "
           "50,000-image run, class-balanced", "synthesis", {"method": "generator", "generator": {"redraws": 8}},
           control=True, stream=50000, select="balanced", run_dir="generator_redraw_stream"),
    # the synthesis preset whose calibration rounds carry the teacher's class similarities (calibration.py,
    # setting full_T4_T16_noregion): a data-free source outside the grid, run when named
    Source("calibrated", "full synthesis, `calibrated` preset (no regional update)", "synthesis",
           {"method": "full", **SYNTHESIS_PRESETS["calibrated"]}, control=True),
    # the calibration setting that meets the Spearman bar (calibration.py, full_T2_T16_rce20_noregion): round 0 at
    # loss T=2, round 1's cross-entropy weighted 20; run when named, to see whether its images teach a student
    Source("calibrated_rce20", "full synthesis, round 0 at T=2, round-1 CE weight 20 (no regional update)",
           "synthesis", {"method": "full", **SYNTHESIS_PRESETS["calibrated"], "onehot_loss_temperature": 2.0,
                         "calibration_ce_weight": 20.0}, control=True),
    Source("no_recursion", "w/o recursive calibration", "synthesis", {"method": "full", "rounds": 1}),
    Source("no_regional", "w/o regional update", "synthesis", {"method": "full", "regional_update": False}),
    Source("plain", "plain inversion", "synthesis", {"method": "plain"}),
    Source("noise", "Gaussian noise, random labels", "synthesis", {"method": "noise"}),
    Source("real_random", "real (JPEG), random labels", "synthesis", {"method": "real_random"}),
)}


@dataclass(frozen=True)
class DataBudget:
    """How many images every source gets, and the synthesis preset / overrides they are made with."""

    n_images: int
    synth_preset: str  # a dfnas.synthesis preset name ("default" = the library's CPU recipe, "tiny")
    synth_overrides: dict[str, Any] = field(default_factory=dict)
    # the budget folder under the work dir whose data/ holds these datasets (None: the running budget's own),
    # so budgets that differ only in search or training settings reuse the same images; a location, not a
    # setting: left out of as_dict and of every hash
    home: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "synth_preset": self.synth_preset,
                "synth_overrides": dict(self.synth_overrides)}

    def home_dir(self, work: Path) -> Path:
        """Work dir of the budget that holds these datasets, given the running budget's ``<work>/<budget>``."""
        return work.parent / self.home if self.home else work

    def root(self, work: Path) -> Path:
        """Folder of this budget's datasets, given the running budget's work dir ``<work>/<budget>``."""
        return self.home_dir(work) / "data" / f"n{self.n_images}"


# Datasets shared between benchmarks (cached by image count under _work/<budget>/data/n<N>/<source>).
DATA_BUDGETS: dict[str, DataBudget] = {
    # 40 images from the `tiny` synthesis preset: seconds per source; numbers mean nothing
    "smoke": DataBudget(40, "tiny", {"batch_size": 20, "steps": 4}),
    # search_quality: 500 images per source, the library's default synthesis recipe (2 rounds, 200 steps)
    "cpu": DataBudget(500, "default", home="cpu"),
    # ranking_consistency and datafree_training: 1,000 images per source, same recipe (training from
    # scratch needs more images than a search to separate architectures at all)
    "cpu_train": DataBudget(1000, "default", home="cpu"),
    # search_quality's 5,000-image variant: ten times the images of `cpu`, same recipe
    "cpu_5k": DataBudget(5000, "default", home="cpu"),
}


# --------------------------------------------------------------------------------------------------------
# command line and environment
# --------------------------------------------------------------------------------------------------------

def make_parser(doc: str | None, budgets: Sequence[str]) -> argparse.ArgumentParser:
    """The evidence scripts' parser: description from the module docstring, plus the shared flags."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, budgets)
    return p


def add_common_args(p: argparse.ArgumentParser, budgets: Sequence[str]) -> None:
    """The flags every benchmark script shares."""
    p.add_argument("--budget", choices=list(budgets), default="cpu",
                   help="preset: 'smoke' checks the script end to end in a minute or two (numbers mean nothing); "
                        "'cpu' (and 'cpu_*' variants) are the real runs sized for a 2-core machine")
    p.add_argument("--out", type=Path, default=None,
                   help="where the summary JSON / Markdown / PNG go (default: benchmarks/results for 'cpu*', "
                        "benchmarks/_work/results-smoke for 'smoke', so smoke output is never committed)")
    p.add_argument("--work", type=Path, default=WORK_DIR, help="scratch directory for datasets and cells")
    # One thread by default: these networks are small, and on a 2-core machine shared with other work two
    # torch threads spin-wait on each other (measured 40x slower per image than one thread under load 8).
    # Run two benchmark processes side by side (disjoint --sources) to use both cores instead.
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1; 0 keeps torch's own choice; see benchmarks/README.md)")
    p.add_argument("--estimate-only", action="store_true", help="print the time estimate and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--summary-only", action="store_true", help="rebuild the summary from finished cells only")


def add_training_args(p: argparse.ArgumentParser, variants: Sequence[str], arch_default: str | None,
                      arch_help: str) -> None:
    """--arch, --variants and --seeds of the benchmarks that train one network in several variants."""
    p.add_argument("--arch", default=arch_default, help=f"NAS-Bench-201 cell string (default: {arch_help})")
    p.add_argument("--variants", default="all", help=f"comma-separated subset of {list(variants)}")
    p.add_argument("--seeds", default=None, help="e.g. 0,1 (default: the budget's)")


def chosen_variants_and_seeds(args: argparse.Namespace, variants: Sequence[str],
                              budget_seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    """The variants and seeds a training benchmark runs (its --variants / --seeds, else all / the budget's)."""
    chosen = parse_subset(args.variants, list(variants), "variants")
    return chosen, (parse_seeds(args.seeds) if args.seeds else list(budget_seeds))


def add_sources_arg(p: argparse.ArgumentParser) -> None:
    """``--sources``: which data sources a grid benchmark runs (read back with ``chosen_sources``)."""
    controls = [k for k in SOURCES if k not in grid_sources()]
    p.add_argument("--sources", default="all",
                   help=f"comma-separated subset of {list(SOURCES)} (default: all but the controls {controls})")


def chosen_sources(args: argparse.Namespace) -> list[str]:
    """The sources named by ``--sources``, in table order (default: every source but the controls)."""
    return parse_subset(args.sources, list(SOURCES), "sources", default=grid_sources())


def setup(args: argparse.Namespace) -> tuple[Path, Path]:
    """Apply --threads; return (work dir of this budget, output dir)."""
    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)
    work = Path(args.work) / args.budget
    out = args.out if args.out is not None else (Path(args.work) / "results-smoke" if args.budget == "smoke"
                                                 else RESULTS_DIR)
    return work, Path(out)


def grid_sources() -> list[str]:
    """The sources every benchmark runs by default (controls only when asked for)."""
    return [name for name, src in SOURCES.items() if not src.control]


def parse_subset(value: str | None, allowed: Sequence[str], what: str,
                 default: Sequence[str] | None = None) -> list[str]:
    """Comma-separated subset of ``allowed`` (None or 'all': ``default``, else all of them, in ``allowed`` order)."""
    if value is None or value == "all":
        return list(allowed if default is None else default)
    got = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in got if v not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; expected a comma-separated subset of {list(allowed)}")
    return [v for v in allowed if v in got]  # canonical order, no duplicates


def parse_seeds(value: str) -> list[int]:
    """'0,1,2' or '0-4' -> list of ints."""
    if "-" in value and "," not in value:
        lo, hi = value.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(v) for v in value.split(",") if v.strip()]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def load_average() -> float | None:
    """1-minute load average (recorded with every result: other processes sharing the CPU slow cells down)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------------
# per-cell results
# --------------------------------------------------------------------------------------------------------

def stable_hash(obj: Any) -> str:
    from dfnas.io import config_hash

    return config_hash(json.loads(json.dumps(obj, sort_keys=True, default=str)))


class CellStore:
    """One JSON file per finished cell under ``root``.

    Every cell carries ``cell_hash``, the hash of the settings that produced it (budget, method options ...).
    A stored cell with another hash is stale: ``get`` treats it as not computed (it is recomputed and
    overwritten), so changed settings never mix old numbers into a summary. Run directories of the library
    are named with the same hash (``run_name``), so a stale run directory is never resumed either.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._warned: set[Path] = set()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts[:-1], f"{parts[-1]}.json")

    def get(self, *parts: str, cell_hash: str) -> dict[str, Any] | None:
        """The stored cell, or None when it has not been computed yet with these settings."""
        p = self.path(*parts)
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes unless edited by hand: recompute it
        if rec.get("cell_hash") != cell_hash:
            if p not in self._warned:
                self._warned.add(p)
                log(f"stale cell {p} (settings changed: hash {rec.get('cell_hash')} != {cell_hash}); recomputing")
            return None
        return rec

    def seeds(self) -> set[int]:
        """The seeds of every stored cell named ``seed<k>`` (any source and method; stale ones included: ``get``
        still filters them), so a summary can cover every finished seed, not only those of its command."""
        return {int(p.stem[4:]) for p in self.root.rglob("seed*.json") if p.stem[4:].isdigit()}

    def put(self, record: dict[str, Any], *parts: str, cell_hash: str) -> dict[str, Any]:
        from dfnas.io import atomic_write_json

        rec = {**record, "cell_hash": cell_hash}
        atomic_write_json(self.path(*parts), rec)
        return rec


def adopt_published(store: CellStore, published: Path, parts: Callable[[dict[str, Any]], tuple[str, ...]],
                    sources_root: Path | None = None) -> int:
    """Seed ``store`` with the cells of a published summary (``benchmarks/results/<stem>.json``) where the store
    has no file yet; returns how many were adopted.

    A fresh clone has the published summaries but not the scratch cell store, so without this a
    ``--summary-only`` rebuild, or a run adding cells, would publish only the cells of this machine and drop
    the rest. Each published cell carries its settings hash, so ``get`` still ignores any whose settings have
    changed since; files already in the store (computed here) are never replaced. With ``sources_root``, the
    summary's per-source facts (image count, time to make them) are adopted the same way.
    """
    if not published.is_file():
        return 0
    summary = json.loads(published.read_text())
    records = [(cell, parts(cell), cell["cell_hash"]) for cell in summary.get("cells", []) if "cell_hash" in cell]
    return adopt_records(store, published, records, summary, sources_root)


def adopt_records(store: CellStore, published: Path, records: Iterable[tuple[dict[str, Any], tuple[str, ...], str]],
                  summary: dict[str, Any], sources_root: Path | None) -> int:
    """Write each (record, parts, settings hash) of the published summary whose file the store lacks (a file
    computed here is never replaced), and, with ``sources_root``, the summary's per-source facts likewise; log
    and return how many cells were adopted. The one mechanism behind every benchmark's adoption."""
    adopted = 0
    for rec, cell_parts, cell_hash in records:
        if not store.path(*cell_parts).exists():
            store.put(rec, *cell_parts, cell_hash=cell_hash)
            adopted += 1
    if sources_root is not None:
        for name, info in summary.get("sources", {}).items():
            if not (sources_root / "sources" / f"{name}.json").exists():
                put_source_info(sources_root, name, {k: v for k, v in info.items() if k != "label"})
    if adopted:
        log(f"adopted {adopted} published cells of {published}")
    return adopted


def run_name(name: str, cell_hash: str) -> str:
    """Run-directory name of a cell: settings hash included, so changed settings start a fresh run."""
    return f"{name}-{cell_hash[:8]}"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, merging nested dicts instead of replacing them."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Eta:
    """Running estimate of the remaining time from the durations of cells computed in this invocation."""

    def __init__(self, total_estimate_s: float) -> None:
        self.planned = max(total_estimate_s, 1e-9)
        self.spent_planned = 0.0
        self.spent_real = 0.0

    def done(self, planned_s: float, real_s: float) -> str:
        """Record a cell (its planned and real seconds); return a progress string."""
        self.spent_planned += planned_s
        self.spent_real += real_s
        ratio = self.spent_real / max(self.spent_planned, 1e-9)  # how far off the up-front estimate is
        left = max(0.0, self.planned - self.spent_planned) * ratio
        return f"cell took {fmt_duration(real_s)}; about {fmt_duration(left)} left"


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------

_TEACHER: Any = None


def teacher() -> Any:
    """The frozen ResNet-20 teacher (loaded once; weights from the shared assets, never downloaded)."""
    global _TEACHER
    if _TEACHER is None:
        from dfnas.teachers import TeacherConfig, load_teacher

        _TEACHER = load_teacher(TeacherConfig(name=TEACHER_NAME, download=False), device="cpu")
    return _TEACHER


def asset(*parts: str) -> Path:
    """A shared asset (``DFNAS_ASSETS`` or ``../shared/assets``); SystemExit naming the setting if missing."""
    from dfnas.assets import asset_path

    p = asset_path(*parts)
    if p is None:
        raise SystemExit(f"asset {'/'.join(parts)} not found: set DFNAS_ASSETS to the shared assets folder")
    return p


def real_test_set() -> Any:
    """The bit-exact real CIFAR-10 test subset (1,017 images, true hard labels): the held-out ground truth."""
    from dfnas.data import read_real

    ds = read_real(asset("cifar10", "exact_test_1017.npz"))
    ds.info["label"] = "real exact test (1,017 images, true labels)"
    return ds


def real_subset(n: int, data_root: Path) -> Path:
    """First ``n / 10`` JPEG training images of each class as an .npz (made once): the real source's images.

    The ``real_random`` source reads the same file, so it differs from ``real`` only in its labels.
    """
    from dfnas.data import read_real
    from dfnas.io import atomic_savez

    path = data_root / f"cifar10_jpeg_train_{n}.npz"  # "cifar" in the name: read_real gives CIFAR class names
    if path.is_file():
        return path
    k = 10
    if n % k:
        raise SystemExit(f"the real source takes n / {k} images per class; n_images={n} is not a multiple of {k}")
    ds = read_real(asset("cifar10", "jpeg", "train"), limit_per_class=n // k)
    if len(ds) != n:
        raise DfnasError(f"expected {n} real JPEG training images, read {len(ds)}")
    atomic_savez(path, images=ds.images.permute(0, 2, 3, 1).contiguous().numpy(),
                 labels=ds.hard_labels.numpy().astype(np.uint8))
    return path


def synthesis_config(src: Source, budget: DataBudget, real_path: Path | None) -> Any:
    """The SynthesisConfig of a synthetic source under ``budget`` (seed ``DATA_SEED``)."""
    from dfnas.synthesis import make_config

    fields: dict[str, Any] = {**budget.synth_overrides, **src.synthesis, "num_images": budget.n_images,
                              "seed": DATA_SEED, "teacher_name": TEACHER_NAME}
    if src.synthesis.get("method") in ("real_random", "real_teacher"):
        fields["real_path"] = str(real_path)
    cfg = make_config(budget.synth_preset, None, **fields)
    cfg.teacher.download = False
    return cfg


def prepare_source(name: str, budget: DataBudget, work: Path, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """The dataset of source ``name`` (made on first use, then read from the cache) and facts about it.

    Returns (ImageSet, info) where info has the label, label mode, image count and the seconds it took to
    make (0 when it came from the cache).
    """
    from dfnas.data import open_dataset, read_real
    from dfnas.synthesis import synthesize

    src = SOURCES[name]
    if src.stream and src.stream < budget.n_images:
        raise DfnasError(f"source {name!r} draws {budget.n_images} images from a {src.stream}-image run")
    root = budget.root(work)
    t0 = time.perf_counter()
    real_npz = real_subset(budget.n_images, root)
    run = dataclasses.replace(budget, n_images=src.stream) if src.stream else budget  # the synthesis run
    if src.kind == "real":
        ds = read_real(real_npz)
        made = False
    else:
        out = run.root(work) / src.folder
        made = not (out / "manifest.json").is_file() or not json.loads((out / "manifest.json").read_text()).get(
            "complete", False)
        if made:
            log(f"synthesizing source {name!r} ({run.n_images} images) into {out}")
        synthesize(synthesis_config(src, run, real_npz), out, teacher=teacher(), device="cpu",
                   progress=progress)
        ds = open_dataset(out)
        if src.select in ("balanced", "agreed"):
            ds = ds.balanced_subset(budget.n_images, torch.Generator().manual_seed(DATA_SEED),
                                    recognized_only=src.select == "agreed")
        elif src.stream:
            ds = ds.subset(stream_draw(src.stream, budget.n_images))
    ds.info["benchmark_source"] = name
    # a stream's images cost their share of the run's time
    seconds = (time.perf_counter() - t0) * len(ds) / run.n_images if made else 0.0
    return ds, {"source": name, "label": src.label, "n": len(ds), "label_mode": ds.label_mode,
                "make_seconds": round(seconds, 1), **({"stream_images": src.stream} if src.stream else {})}


def stream_draw(stream: int, n: int) -> torch.Tensor:
    """(n,) sorted indices drawn uniformly without replacement from a run of ``stream`` images (seed DATA_SEED)."""
    g = torch.Generator().manual_seed(DATA_SEED)
    return torch.randperm(stream, generator=g)[:n].sort().values


def put_source_info(root: Path, name: str, info: dict[str, Any]) -> None:
    """Remember facts about a source's dataset for the summaries; keeps the time it took to make it."""
    from dfnas.io import atomic_write_json

    p = root / "sources" / f"{name}.json"
    old = get_source_info(root, name)
    if old.get("make_seconds") and not info.get("make_seconds"):
        info = {**info, "make_seconds": old["make_seconds"]}  # this call read the cache: keep the real time
    atomic_write_json(p, info)


def get_source_info(root: Path, name: str) -> dict[str, Any]:
    p = root / "sources" / f"{name}.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def source_labels(ds: Any) -> torch.Tensor:
    """Class indices the source itself supervises with: argmax of stored teacher logits for distillation
    data, else the stored (hard or soft) targets' argmax."""
    if ds.label_mode == "distill" and ds.logits is not None:
        return ds.logits.argmax(1)
    return ds.targets.argmax(1)


def epochs_for_steps(train: dict[str, Any], n_images: int) -> int:
    """Epochs a training of ``train``'s ``max_steps`` steps of ``batch_size`` needs on ``n_images`` images: as
    many as the steps take, so the cosine schedule ends at ``max_steps`` whatever the image count."""
    steps_per_epoch = max(1, n_images // int(train["batch_size"]))
    return math.ceil(int(train["max_steps"]) / steps_per_epoch)


def with_hard_targets(ds: Any, labels: torch.Tensor) -> Any:
    """A copy of ``ds`` whose targets are one-hot ``labels`` (so ``dfnas.train.evaluate`` scores them)."""
    import dataclasses

    t = torch.nn.functional.one_hot(labels.long(), ds.num_classes).float()
    return dataclasses.replace(ds, targets=t, label_mode="hard" if ds.label_mode == "distill" else ds.label_mode)
