"""The stages of ``dfnas run`` as data: ``STAGE_LIST`` holds one ``Stage`` record per stage (name, the stages
whose output it reads, its function, whether it writes, which ranks run it), in order; ``dfnas.run.run_pipeline``
iterates over it. Each stage function takes the invocation's ``RunState`` and returns the JSON-able facts its
completion marker records (and the report reads); the functions behind them (``synthesis_stage``,
``search_stage`` ...) take plain (config, directories, device) arguments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfnas import distributed as D
from dfnas.errors import DfnasError
from dfnas.pipeline.config import RunConfig
from dfnas.pipeline.rundir import is_done, read_marker

MANIFEST_WAIT_S = 600.0


def _wait_for(path: Path, timeout_s: float, what: str) -> None:
    """Poll until ``path`` exists (ranks > 0 wait for files rank 0 writes on a shared file system)."""
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout_s:
            raise DfnasError(f"waited {timeout_s:.0f}s for {what} {str(path)!r} written by rank 0; is rank 0 running "
                             "and is the output directory on a file system every rank shares?")
        time.sleep(0.2)


def synthesis_stage(cfg: RunConfig, data_dir: Path, teacher: Any, device: torch.device, ctx: D.DistContext,
                    progress: bool) -> dict[str, Any]:
    """Synthesize (or finish) the dataset; rank r makes shards i % world == r, with a barrier per round."""
    from dfnas.data.shards import MANIFEST, read_manifest
    from dfnas.synthesis import synthesize

    if ctx.enabled and not ctx.is_main:
        # rank 0 creates the directory and manifest; another rank starting first would see a half-made dir
        _wait_for(data_dir / MANIFEST, MANIFEST_WAIT_S, "dataset manifest")
    synthesize(cfg.synthesis, data_dir, teacher=teacher, device=device, rank=ctx.rank, world_size=ctx.world_size,
               progress=progress and ctx.is_main, barrier=(lambda: D.barrier(ctx)) if ctx.enabled else None)
    D.barrier(ctx)  # rank 0 marks the dataset complete after the last barrier inside synthesize
    info: dict[str, Any] = {}
    if ctx.is_main:
        man = read_manifest(data_dir)
        if not man.get("complete"):
            raise DfnasError(f"dataset {str(data_dir)!r} is incomplete after synthesis; rerun to finish it")
        info = {"summary": man.get("summary", {}), "num_images": man.get("num_images"), "rounds": man.get("rounds"),
                "method": man.get("method"), "label_mode": man.get("label_mode"),
                "config_hash": man.get("config_hash"), "canvas_size": man.get("canvas_size")}
        info["metrics"] = _dataset_metrics(data_dir, teacher)
    return info


def _dataset_metrics(data_dir: Path, teacher: Any) -> dict[str, Any] | None:
    """Teacher agreement, entropy and diversity of the synthetic set (for the report)."""
    from dfnas.data import read_synthetic
    from dfnas.synthesis.inspect import dataset_metrics

    return dataset_metrics(read_synthetic(data_dir), teacher)


def search_stage(cfg: RunConfig, data_dir: Path, search_dir: Path, device: torch.device, ctx: D.DistContext,
                 progress: bool, table_path: str | Path | None, online_teacher: Any) -> dict[str, Any]:
    """Search on the synthetic set (DistributedDataParallel supernet training under torchrun)."""
    from dfnas.search import run_search

    res = run_search(cfg.search, _run_dataset(data_dir, search_dir.parent), search_dir, device=device,
                     progress=progress, table_path=table_path, teacher=online_teacher, dist=ctx)
    r = res.result
    return {"arch": str(res.arch), "method": cfg.search.method, "space": res.space.config(),
            "macs": r.get("macs"), "params": r.get("params"), "search_time_s": r.get("search_time_s"),
            "nb201": r.get("nb201"), "nb201_note": r.get("nb201_note"), "world_size": ctx.world_size}


def _run_dataset(data_dir: Path, run_dir: Path) -> Any:
    """The run's synthetic set, its path recorded relative to the run directory (``data``): the search and
    training identities, and their hashes, stay the same however ``--out`` is spelled or wherever it moves."""
    from dfnas.data import read_synthetic
    from dfnas.search.rundir import within_run

    return within_run(read_synthetic(data_dir), run_dir)


def _found_arch(out_dir: Path) -> tuple[Any, dict[str, Any]]:
    from dfnas.spaces.archfile import read_arch_file

    arch, space_cfg = read_arch_file(out_dir / "search" / "arch.json")
    if space_cfg is None:
        raise DfnasError(f"{str(out_dir / 'search' / 'arch.json')!r} records no space settings")
    return arch, dict(space_cfg)


def train_stage(cfg: RunConfig, out_dir: Path, device: torch.device, progress: bool,
                table_path: str | Path | None, test_ds: Any, online_teacher: Any) -> dict[str, Any]:
    """Train the found architecture from scratch by distillation on the synthetic data (export.weights: distill)."""
    if cfg.export.weights != "distill":
        return {"skipped": "export.weights is 'inherit': the supernet's weights are exported"}
    from dfnas.train import train_network

    arch, space_cfg = _found_arch(out_dir)
    space_cfg.update(cfg.export.space)
    res = train_network(cfg.train, arch, space_cfg, _run_dataset(out_dir / "data", out_dir), out_dir / "train",
                        device=device, test_data=test_ds, progress=progress, teacher=online_teacher,
                        table_path=table_path, dist=D.SINGLE)  # rank 0 alone (see dfnas.run)
    return {k: res.get(k) for k in ("arch_str", "space", "macs", "params", "train_time_s", "weight_steps", "epochs",
                                    "label_mode", "final_held_out", "test_top1", "test_set", "test_n",
                                    "online_synthesis", "images_made_online")}


def export_stage(cfg: RunConfig, out_dir: Path, device: torch.device, test_ds: Any) -> dict[str, Any]:
    """Write OUT/export (arch.json + model.safetensors + model.onnx), reload it and evaluate the reloaded
    network."""
    from dfnas.export import export_network, load_exported, read_export
    from dfnas.spaces.base import space_from_config
    from dfnas.spaces.flops import space_cost
    from dfnas.train.api import evaluate

    arch, space_cfg = _found_arch(out_dir)
    if cfg.export.weights == "distill":
        space = space_from_config({**space_cfg, **cfg.export.space})
        net = space.build_network(arch)
        path = out_dir / "train" / "model.pt"
        if not path.is_file():
            raise DfnasError(f"trained weights {str(path)!r} are missing; rerun to redo the train stage")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        trained = read_marker(out_dir, "train")
        label_mode = trained.get("label_mode") or cfg.train.label_mode or "the dataset's"
        online = trained.get("images_made_online") or 0
        extras = (", online teacher" if cfg.online_teacher or online else "") + (
            f", {online:,} images synthesized online into a replay bank" if online else "")
        source = (f"trained from scratch on the synthetic data for {trained.get('epochs') or cfg.train.epochs} "
                  f"epochs (label mode {label_mode}{extras})")
    else:
        space = space_from_config(space_cfg)
        net = _inherited_network(cfg, out_dir, space, arch, device)
        source = (f"inherited from the {cfg.search.method} supernet (BatchNorm recalibrated on "
                  f"{cfg.export.recalibrate_batches} synthetic batches)")
    info = {"weights": cfg.export.weights, "weights_source": source, "teacher": cfg.teacher.name,
            "input": f"RGB in [0, 1], {space.input_size}x{space.input_size}, no mean/std normalization"}
    export_dir = export_network(space, arch, net, out_dir / "export", info=info)
    reloaded = load_exported(export_dir, device)
    top1 = evaluate(reloaded, test_ds, device) if test_ds is not None else None
    return {"arch": str(arch), "space": space.config(), **space_cost(space, arch), "weights": cfg.export.weights,
            "weights_source": source, "real_test_top1": top1, "onnx": read_export(export_dir).get("onnx"),
            "real_test": test_ds.info.get("source") if test_ds is not None else None,
            "real_test_n": len(test_ds) if test_ds is not None else 0}


def _inherited_network(cfg: RunConfig, out_dir: Path, space: Any, arch: Any, device: torch.device) -> torch.nn.Module:
    """The supernet's weights for ``arch`` in a plain network, BatchNorm statistics re-estimated."""
    import itertools

    from dfnas.data import read_synthetic
    from dfnas.data.imageset import iterate_batches
    from dfnas.repro import make_generator
    from dfnas.search.bn import recalibrate_bn
    from dfnas.spaces.base import subnet_state_dict

    ck_path = out_dir / "search" / "checkpoint.pt"
    try:
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise DfnasError(f"search checkpoint {str(ck_path)!r} cannot be read ({e})") from None
    sup = space.build_supernet()
    sup.load_state_dict(ck["model"])
    net = space.build_network(arch)
    net.load_state_dict(subnet_state_dict(sup, arch))
    net.to(device)
    ds = read_synthetic(out_dir / "data")
    bs = min(cfg.search.batch_size, len(ds))
    batches = iterate_batches(ds, bs, make_generator(cfg.seed, "export", "bn"), augment=True, device=device)
    recalibrate_bn(net, (x for x, _ in itertools.islice(batches, cfg.export.recalibrate_batches)))
    return net.cpu()


# -- the stage records ------------------------------------------------------------------------------------------

@dataclass
class RunState:
    """What the stages of one ``dfnas run`` invocation share: settings, where they write, and the teacher and real
    test set, each loaded once when a stage first asks for it."""

    cfg: RunConfig
    out_dir: Path
    device: torch.device
    ctx: D.DistContext
    progress: bool
    table_path: str | Path | None
    _cache: dict[str, Any] = field(default_factory=dict)

    def teacher(self) -> Any:
        """The run's teacher, loaded on first use."""
        if "teacher" not in self._cache:
            from dfnas.errors import TeacherError
            from dfnas.teachers import load_teacher

            try:
                self._cache["teacher"] = load_teacher(self.cfg.teacher, self.device)
            except TeacherError as e:
                if "--allow-no-batchnorm" not in str(e):
                    raise
                raise TeacherError(f"{e} (with `dfnas run`: --set teacher.allow_no_batchnorm=true)") from None
        return self._cache["teacher"]

    def test_set(self) -> Any:
        """The real test set (evaluation only) for the teacher the teacher stage recorded, or None."""
        if "test" not in self._cache:
            ident = read_marker(self.out_dir, "teacher").get("identity", {})
            self._cache["test"] = load_test_set(self.cfg, real_test_path(
                self.cfg, int(ident.get("num_classes", 0)), int(ident.get("input_size", 0))))
        return self._cache["test"]


@dataclass(frozen=True)
class Stage:
    """One stage of ``dfnas run``.

    ``run(state)`` does the work and returns the facts its marker ``OUT/stages/<name>.json`` records. ``needs``:
    the stages whose output it reads (they come earlier in ``STAGE_LIST``). ``writes``: it writes into the run
    directory (a pending one needs it writable). ``main_only``: rank 0 alone runs it, the other ranks end the run
    before it. ``prepare(state)`` runs on every invocation that reaches the stage, done or not (checks and loads
    that must come before it). ``barrier_after``: every rank waits for the others once it has run.
    """

    name: str
    needs: tuple[str, ...]
    run: Callable[[RunState], dict[str, Any]]
    title: Callable[[RunConfig], str]
    writes: bool = True
    main_only: bool = False
    prepare: Callable[[RunState], None] | None = None
    barrier_after: bool = False


def _teacher(state: RunState) -> dict[str, Any]:
    """Load and check the teacher (an image classifier with BatchNorm); evaluate it on real data if any."""
    t = state.teacher()
    info: dict[str, Any] = {"identity": t.spec.identity()}
    if state.ctx.is_main:
        info["real_test"] = _eval_teacher(state.cfg, t, state.device)
    return info


def _check_spaces_early(state: RunState) -> None:
    """The search space must take the teacher's images: refused before the synthesis runs, not after it."""
    if not is_done(state.out_dir, "search"):
        check_spaces(state.cfg, state.teacher())


def _synthesis(state: RunState) -> dict[str, Any]:
    return synthesis_stage(state.cfg, state.out_dir / "data", state.teacher(), state.device, state.ctx,
                           state.progress)


def _search(state: RunState) -> dict[str, Any]:
    online = state.teacher() if state.cfg.online_teacher else None
    return search_stage(state.cfg, state.out_dir / "data", state.out_dir / "search", state.device, state.ctx,
                        state.progress, state.table_path, online)


def _load_test_early(state: RunState) -> None:
    state.test_set()  # a real_test setting that names a missing file is refused before any final stage


def _train(state: RunState) -> dict[str, Any]:
    cfg = state.cfg
    online = state.teacher() if cfg.online_teacher or online_synthesis(cfg) else None
    return train_stage(cfg, state.out_dir, state.device, state.progress, state.table_path, state.test_set(), online)


def _train_title(cfg: RunConfig) -> str:
    return "train (" + ("distillation from scratch" if cfg.export.weights == "distill"
                        else "skipped: inherited weights") + ")"


def _export(state: RunState) -> dict[str, Any]:
    return export_stage(state.cfg, state.out_dir, state.device, state.test_set())


def _report(state: RunState) -> dict[str, Any]:
    from dfnas.report import build_report

    return {"files": [p.name for p in build_report(state.out_dir, table_path=state.table_path)]}


# The stages in order (their names are ``dfnas.pipeline.rundir.STAGES``, the markers' names).
# Under torchrun every rank runs teacher, synthesis (shards split across ranks) and search (DistributedDataParallel);
# rank 0 alone trains the final network, exports and reports: the other ranks end after the search rather than
# wait in a collective, because training the final network can outlast any process-group timeout.
STAGE_LIST: tuple[Stage, ...] = (
    Stage("teacher", (), _teacher, lambda cfg: "teacher", barrier_after=True),
    Stage("synthesis", ("teacher",), _synthesis,
          lambda cfg: "synthesis (recursive label calibration + regional update)", prepare=_check_spaces_early),
    Stage("search", ("teacher", "synthesis"), _search,
          lambda cfg: f"search ({cfg.search.method} on {cfg.search.space.name})"),
    Stage("train", ("teacher", "synthesis", "search"), _train, _train_title, main_only=True,
          prepare=_load_test_early),
    Stage("export", ("teacher", "synthesis", "search", "train"), _export, lambda cfg: "export", main_only=True),
    Stage("report", ("teacher", "synthesis", "search", "train", "export"), _report, lambda cfg: "report",
          main_only=True),
)


# -- helpers of the stages ------------------------------------------------------------------------------------------

def real_test_path(cfg: RunConfig, num_classes: int, input_size: int) -> Path | None:
    """The real test set the teacher and the exported network are evaluated on (evaluation only), or None."""
    from dfnas.assets import asset_path

    rt = cfg.report.real_test
    if rt is None or rt == "" or str(rt).lower() in ("none", "null", "off"):
        return None
    if rt != "auto":
        p = Path(rt)
        if not p.exists():
            raise DfnasError(f"report.real_test {rt!r} does not exist (set it to null to skip real-data evaluation)")
        return p
    # auto: the shared CIFAR-10 test subset, only for a CIFAR-10 teacher
    if num_classes != 10 or input_size != 32:
        return None
    return asset_path("cifar10", "exact_test_1017.npz")


def load_test_set(cfg: RunConfig, path: Path | None) -> Any:
    """The real test set at ``path`` (at most ``report.max_test_images`` of it), or None."""
    if path is None:
        return None
    from dfnas.data import open_dataset

    ds = open_dataset(path)
    if cfg.report.max_test_images is not None and len(ds) > cfg.report.max_test_images:
        ds = ds.subset(torch.arange(cfg.report.max_test_images))
    return ds


def check_spaces(cfg: RunConfig, teacher: Any) -> None:
    """ArchError unless the search space (and the export's, when it resizes the network) builds networks
    that run on the teacher's images (channels, input size, classes)."""
    from dfnas.search.api import make_space
    from dfnas.spaces.base import SpaceConfig

    spec = teacher.spec
    dims = {"num_classes": teacher.num_classes, "input_size": spec.input_size, "in_channels": spec.in_channels}
    spaces = [cfg.search.space]
    if cfg.export.weights == "distill" and cfg.export.space:
        spaces.append(SpaceConfig(cfg.search.space.name, {**cfg.search.space.options, **cfg.export.space}))
    for sc in spaces:
        make_space(sc, **dims).check_input()


def online_synthesis(cfg: RunConfig) -> bool:
    """Whether the train stage synthesizes online (and so distils from the teacher on every batch)."""
    from dfnas.train.datafree import INVERSION_METHODS

    enabled = cfg.train.online.enabled
    return enabled if enabled is not None else cfg.synthesis.method in INVERSION_METHODS


@torch.no_grad()
def _eval_teacher(cfg: RunConfig, teacher: Any, device: torch.device) -> dict[str, Any] | None:
    """Teacher top-1 on the real test set (evaluation only), or None when there is none."""
    from dfnas.train.api import evaluate

    path = real_test_path(cfg, teacher.num_classes, teacher.spec.input_size)
    ds = load_test_set(cfg, path)
    if ds is None:
        return None
    if ds.num_classes != teacher.num_classes or ds.input_size != teacher.spec.input_size:
        return None
    return {"path": str(path), "n": len(ds), "top1": evaluate(teacher, ds, device)}
