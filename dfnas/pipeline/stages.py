"""The stages of ``dfnas run`` as functions of (config, directories, device): each returns the JSON-able
facts its completion marker records (and the report reads)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from dfnas import distributed as D
from dfnas.errors import DfnasError
from dfnas.pipeline.config import RunConfig

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
    data = _run_dataset(data_dir, search_dir.parent)
    if ctx.enabled:
        from dfnas.pipeline.ddp_search import run_search_ddp

        res = run_search_ddp(cfg.search, data, search_dir, device, ctx, progress=progress and ctx.is_main,
                             table_path=table_path, teacher=online_teacher)
    else:
        from dfnas.search import run_search

        res = run_search(cfg.search, data, search_dir, device=device, progress=progress, table_path=table_path,
                         teacher=online_teacher)
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
                        table_path=table_path)
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
        from dfnas.pipeline.rundir import read_marker

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
