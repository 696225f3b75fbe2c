"""``synthesize``: rounds, shards, resume, ranks, manifest, logs and pictures around a data-source method.

Layout of the output directory (see ``dfnas/data/shards.py`` for the shard format)::

    OUT/manifest.json            complete=false while running, true once every shard exists
    OUT/shards/rRR_sSSSS.npz     one per (round, batch); written atomically
    OUT/synthesis_log.jsonl      loss terms every ``log_every`` steps (one file per rank)
    OUT/samples.png              rows = classes
    OUT/loss_curves.png

Shard (r, s) draws all its randomness from generators seeded by ``derive_seed(seed, r, s, ...)`` and its
targets from round r-1's stored logits, so a killed run that is restarted produces exactly the data of an
uninterrupted run.

A rerun checks every shard on disk against the manifest (count and SHA-256) and makes again the ones that
are missing or damaged, complete dataset or not. Shard (r+1, s) is derived from shard (r, s): when a
remade shard differs from the one recorded (or nothing was recorded), the shards derived from it are made
again too. A method carrying state from shard to shard (``generator``) keeps only its latest state, so a
damaged shard that state already reflects is made again from the start of that rank (the warm-up is
seeded, so the good shards come out byte-identical on the same software and hardware).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfnas.config import describe_differences, to_dict
from dfnas.data.shards import (
    MANIFEST,
    list_shards,
    load_checked_shard,
    read_manifest,
    read_shard,
    shard_path,
    shard_problems,
    shard_record,
    write_shard,
)
from dfnas.errors import ConfigError, DataError, DfnasError
from dfnas.io import MetricLogger, atomic_write_json, config_hash, ensure_writable_dir, environment_info
from dfnas.repro import make_generator, resolve_device
from dfnas.synthesis.config import SynthesisConfig, without_unusable_bn_term
from dfnas.synthesis.generator import GeneratorConfig
from dfnas.synthesis.methods import SYNTHESIS_METHODS, ShardContext, ShardJob, SynthesisMethod
from dfnas.synthesis.optimize import StepRecord
from dfnas.synthesis.plots import save_loss_curves, save_sample_grid
from dfnas.synthesis.resources import check_resources
from dfnas.teachers.loader import load_teacher
from dfnas.teachers.teacher import Teacher

OUTPUT_FILES = ("samples.png", "loss_curves.png")
# left out of the config hash: settings that change only logs or pictures, and regional_update, whose effect
# on the data is the resolved canvas_size (hashed), so `regional_update=false` and `canvas_size=<input>` agree
_NOT_HASHED = ("log_every", "grid_per_class", "plots", "regional_update")
_TEACHER_NOT_HASHED = ("weights", "download", "factory_loads_weights")
GRID_MAX_ROWS = 16  # classes shown in samples.png


def resolve_config(cfg: SynthesisConfig, teacher: Teacher, method: SynthesisMethod) -> SynthesisConfig:
    """Apply what the method forces, the auto canvas and label mode, and the no-BatchNorm fallback."""
    input_size = teacher.spec.input_size
    cfg = method.with_loss_defaults(method.resolve(cfg, input_size))
    assert cfg.bn_weight is not None
    cfg = without_unusable_bn_term(cfg, teacher, stacklevel=3)
    label_mode = method.label_mode if cfg.label_mode == "auto" else cfg.label_mode
    canvas = cfg.resolved_canvas(input_size)
    return dataclasses.replace(cfg, canvas_size=canvas, regional_update=canvas > input_size, label_mode=label_mode)


# options added after datasets were made, with the default at which they leave the hash alone: the top-level
# ones listed here, the generator's marked ADDED_LATER on GeneratorConfig
_ADDED_LATER: dict[str, Any] = {"calibration_loss_temperature": None, "ce_confidence_cap": 1.0,
                                "onehot_loss_temperature": 1.0, "calibration_ce_weight": None}
_GENERATOR_ADDED_LATER: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(GeneratorConfig)
                                          if f.metadata.get("added_later")}


def _without_later_defaults(settings: dict[str, Any], added_later: dict[str, Any]) -> dict[str, Any]:
    """``settings`` less the options added later that sit at their default (datasets made before keep their hash)."""
    return {k: v for k, v in settings.items() if k not in added_later or v != added_later[k]}


def data_identity(config: dict[str, Any], teacher_identity: dict[str, Any]) -> dict[str, Any]:
    """What determines a dataset's bytes: its resolved config and its teacher's identity, less the settings that
    never change the data (logs, paths). Hashed for ``config_hash`` and compared key by key in a refusal."""
    cfg = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    if cfg.get("method") != "generator":  # the generator's settings do not change other methods' data
        cfg.pop("generator", None)
    elif isinstance(cfg.get("generator"), dict):
        cfg["generator"] = _without_later_defaults(cfg["generator"], _GENERATOR_ADDED_LATER)
    cfg = _without_later_defaults(cfg, _ADDED_LATER)
    cfg["teacher"] = {k: v for k, v in (cfg.get("teacher") or {}).items() if k not in _TEACHER_NOT_HASHED}
    return {"config": cfg, "teacher": {k: v for k, v in teacher_identity.items() if k != "source"}}


def _shown(identity: dict[str, Any]) -> dict[str, Any]:
    """A ``data_identity`` as a refusal names it: config keys at the top level, the teacher apart."""
    return {**identity["config"], "teacher_identity": identity["teacher"]}


def dataset_hash(resolved: dict[str, Any], teacher: Teacher) -> str:
    """Hash of everything that determines the data: resolved config and teacher identity (not its path)."""
    return config_hash(data_identity(resolved, teacher.spec.identity()))


def _prepare_dir(out: Path, chash: str, overwrite: bool, main: bool = True,
                 shown: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Check ``out`` may receive this dataset; return its existing manifest when resuming the same config.

    Only the main rank (``main``) replaces an old dataset or insists on an empty directory: other ranks may
    arrive after it has started writing. ``shown``: this dataset's ``data_identity``, to name the settings
    in which an existing dataset differs.
    """
    ensure_writable_dir(out, "output directory")
    if (out / MANIFEST).is_file():
        man = read_manifest(out)
        if man.get("config_hash") == chash:
            return man
        if not overwrite or not main:
            old = data_identity(man.get("config") or {}, man.get("teacher") or {})
            diff = describe_differences(_shown(old), _shown(shown)) if shown is not None else ""
            what = diff or f"config_hash {man.get('config_hash')} != {chash}"
            raise DfnasError(f"output directory {str(out)!r} already holds a dataset made with a different "
                             f"configuration ({what}); rerun with the same settings to resume it, use another "
                             "--out, or pass --overwrite to replace it")
        # explicit --overwrite: remove only the files this stage writes
        for _r, _s, p in list_shards(out):
            p.unlink()
        for name in (MANIFEST, *OUTPUT_FILES, *[p.name for p in out.glob("synthesis_log*.jsonl")]):
            (out / name).unlink(missing_ok=True)
        for p in out.glob("state/*.pt"):
            p.unlink()
        return None
    leftovers = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if leftovers and main:
        raise DfnasError(f"output directory {str(out)!r} is not empty and holds no dataset manifest "
                         f"(found {leftovers[:3]}); choose a new or empty --out")
    return None


def _parent_targets(out: Path, round_idx: int, shard_idx: int, expected: int, batch_size: int,
                    temperature: float) -> torch.Tensor:
    """Soft targets softmax(logits / T) of the images of shard ``shard_idx`` of round ``round_idx + 1``: their
    parents, the same positions of round ``round_idx``, are exactly shard ``shard_idx`` of that round (same
    batch size; a round never has more images than the one before). One shard's logits at a time, so memory
    does not grow with the dataset (a round of 1,000-class logits is 4 KB per image)."""
    have = {s: p for r, s, p in list_shards(out) if r == round_idx}
    n_shards = -(-expected // batch_size)
    if len(have) != n_shards or shard_idx not in have:
        raise DataError(f"round {round_idx} of {str(out)!r} has {len(have)} of {n_shards} shards on disk; with "
                        "several ranks, every rank must finish a round before the next one starts (pass barrier=)")
    count = min(batch_size, expected - shard_idx * batch_size)
    logits = torch.from_numpy(read_shard(have[shard_idx], ("logits",))["logits"])
    if len(logits) < count:
        raise DataError(f"shard {str(have[shard_idx])!r} holds {len(logits)} images, expected {count}; rerun the "
                        "same command to make it again")
    return torch.softmax(logits.double() / temperature, dim=1).float()


def synthesize(cfg: SynthesisConfig, out: str | Path, teacher: Teacher | None = None,
               device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1, progress: bool = True,
               real_path: str | Path | None = None, overwrite: bool = False,
               barrier: Callable[[], None] | None = None) -> Path:
    """Produce the dataset described by ``cfg`` in ``out`` (resuming a killed run of the same config).

    This rank makes the shards whose index % ``world_size`` == ``rank``. With several ranks, pass ``barrier``
    (e.g. ``torch.distributed.barrier``); it is called after every round. Rank 0 marks the dataset complete
    once every shard exists. Returns ``out``.
    """
    t_start = time.perf_counter()
    out = Path(out)
    device = resolve_device(device)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
    if real_path is not None:
        cfg = dataclasses.replace(cfg, real_path=str(real_path))
    method = SYNTHESIS_METHODS.build(cfg.method)
    teacher = load_teacher(cfg.teacher, device) if teacher is None else teacher.to(device)
    cfg = resolve_config(cfg, teacher, method)
    resolved = to_dict(cfg)
    resolved["teacher"]["name"] = teacher.spec.name
    if resolved["teacher"].get("weights"):  # absolute: a later command finds it from any working directory
        resolved["teacher"]["weights"] = str(Path(resolved["teacher"]["weights"]).resolve())
    chash = dataset_hash(resolved, teacher)
    shown = data_identity(resolved, teacher.spec.identity())
    existing = _prepare_dir(out, chash, overwrite, shown=shown) if rank == 0 else None
    warned = False  # whether the damaged shards were already named
    manifest: dict[str, Any] = existing or {
        "complete": False, "input_size": teacher.spec.input_size, "canvas_size": cfg.canvas_size,
        "class_names": list(teacher.spec.class_names), "label_mode": cfg.label_mode, "method": cfg.method,
        "teacher": teacher.spec.identity(), "config_hash": chash, "config": resolved, "seed": cfg.seed,
        "num_images": cfg.num_images, "rounds": cfg.rounds, "images_per_round": cfg.images_per_round(),
        "environment": environment_info(), "device": str(device), "world_size": world_size,
    }
    if existing is None and rank == 0:
        method.prepare(cfg, teacher)  # checks its inputs (e.g. --real) before anything is written
        atomic_write_json(out / MANIFEST, manifest)
    elif existing is not None and existing.get("complete"):
        # a finished dataset is reused only when every shard still checks out against the manifest
        damaged = shard_problems(out, existing)
        if damaged:
            _warn_repair(out, damaged)
            warned = True
            manifest = existing = {k: v for k, v in existing.items() if k != "summary"}
            manifest["complete"] = False
            atomic_write_json(out / MANIFEST, manifest)
    if barrier is not None:  # the other ranks look only once rank 0 has checked/created the directory
        barrier()
    if rank != 0:
        existing = _prepare_dir(out, chash, overwrite, main=False, shown=shown)
        manifest = existing or manifest
    if existing is not None and existing.get("complete"):
        return out
    if not (existing is None and rank == 0):
        method.prepare(cfg, teacher)
    if rank == 0:
        check_resources(cfg, teacher, out, progress)

    per_round, shards = cfg.images_per_round(), cfg.shards_per_round()
    done = {(r, s) for r, s, _ in list_shards(out)}
    mine = [(r, s) for r in range(cfg.rounds) for s in range(shards[r]) if s % world_size == rank]
    # a method carrying state from shard to shard says how many of this rank's shards its state reflects
    restore_ctx = ShardContext(cfg, teacher, device, teacher.spec.input_size, int(cfg.canvas_size or 0),
                               init_gen=make_generator(cfg.seed, "restore", device=device),
                               geom_gen=make_generator(cfg.seed, "restore"))
    position = method.restore(restore_ctx, out, rank, chash)
    # this rank's shards to make: missing, damaged (checked against the manifest) or not yet reflected by the state
    redo = shard_problems(out, manifest, [rs for rs in mine if rs in done]) if existing is not None else {}
    redo.update({rs: "missing" for rs in mine if rs not in done})
    damaged = {rs: why for rs, why in redo.items() if rs in done}
    if damaged and not warned:
        _warn_repair(out, damaged)
    if position is None:
        todo = [rs for rs in mine if rs in redo]
    else:
        first = next((i for i, rs in enumerate(mine) if rs in redo), len(mine))
        if first < position:  # the saved state is past a shard that must be made again
            warnings.warn(f"dataset {str(out)!r}: the {cfg.method!r} method carries state from shard to shard and "
                          f"keeps only its latest state, so rank {rank}'s {len(mine)} shards are made again from the "
                          "start (the intact ones come out identical)", stacklevel=2)
            position = method.rewind(restore_ctx, out, rank)
        todo = mine[position:]
    records = dict(manifest.get("shards") or {})  # as recorded before this invocation
    fresh: set[str] = set()  # shards this invocation wrote
    log_name = "synthesis_log.jsonl" if rank == 0 else f"synthesis_log.rank{rank}.jsonl"
    from tqdm import tqdm

    bar = tqdm(total=len(todo) * method.steps_per_shard(cfg), disable=not progress, desc="synthesis",
               unit="step", dynamic_ncols=True)
    try:
        with MetricLogger(out / log_name, tensorboard=False) as logger:
            for r in range(cfg.rounds):
                todo_r = sorted(s for rr, s in todo if rr == r)
                if todo_r:
                    for s in todo_r:
                        parents = None if r == 0 else _parent_targets(out, r - 1, s, per_round[r - 1],
                                                                      cfg.batch_size, cfg.calibration_temperature)
                        rec = _make_shard(method, cfg, teacher, device, out, r, s, per_round[r], parents, logger,
                                          bar)
                        method.after_shard(out, rank, mine.index((r, s)) + 1)
                        name = shard_path(out, r, s).name
                        fresh.add(name)
                        if position is None:
                            derived = _stale_derived(out, cfg, r, s, records.get(name), rec, todo)
                            todo += derived
                            bar.total += len(derived) * method.steps_per_shard(cfg)
                        if rank == 0:  # only rank 0 writes the manifest; finalize records the other ranks' shards
                            manifest = {**manifest, "shards": {**(manifest.get("shards") or {}), name: rec}}
                            atomic_write_json(out / MANIFEST, manifest)
                if barrier is not None and r < cfg.rounds - 1:
                    barrier()
    finally:
        bar.close()
    if barrier is not None:
        barrier()
    if rank == 0:
        finalize_dataset(out, cfg, manifest, time.perf_counter() - t_start, fresh)
    return out


def _warn_repair(out: Path, problems: dict[tuple[int, int], str]) -> None:
    """Say (as a warning) which shards of ``out`` are made again and why."""
    shown = "; ".join(problems[rs] for rs in sorted(problems)[:4]) + ("; ..." if len(problems) > 4 else "")
    warnings.warn(f"dataset {str(out)!r}: {len(problems)} shard(s) are missing or damaged ({shown}); making them "
                  "again", stacklevel=3)


def _stale_derived(out: Path, cfg: SynthesisConfig, r: int, s: int, old: dict[str, Any] | None,
                   new: dict[str, Any], todo: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Shard (r+1, s) when it is on disk, not already to be made, and derived from a shard (r, s) other than
    the one just made (the remade shard differs from its record, or nothing was recorded)."""
    if old is not None and old.get("sha256") == new["sha256"]:
        return []
    nxt = (r + 1, s)
    if r + 1 >= cfg.rounds or s >= cfg.shards_per_round()[r + 1] or nxt in todo:
        return []
    return [nxt] if shard_path(out, *nxt).is_file() else []


def _make_shard(method: SynthesisMethod, cfg: SynthesisConfig, teacher: Teacher, device: torch.device, out: Path,
                r: int, s: int, n_round: int, parents: torch.Tensor | None, logger: MetricLogger,
                bar: Any) -> dict[str, Any]:
    """Produce and atomically write shard (r, s); nothing is written when anything fails. ``parents``: the soft
    targets of this shard's parent shard (r-1, s) (None in round 0). Returns its manifest record (image count,
    SHA-256)."""
    t0 = time.perf_counter()
    start = s * cfg.batch_size
    count = min(cfg.batch_size, n_round - start)
    job = ShardJob(r, s, start, count, None if parents is None else parents[:count])

    def on_log(rec: StepRecord) -> None:
        logger.log({"round": r, "shard": s, "step": rec.step, "lr": rec.lr, "loss": rec.total,
                    **{f"loss_{k}": v for k, v in rec.terms.items()}, "acc": rec.acc}, step=None)
        bar.set_postfix(round=r, shard=s, loss=f"{rec.total:.3g}", acc=f"{rec.acc:.2f}")

    ctx = ShardContext(cfg, teacher, device, teacher.spec.input_size, int(cfg.canvas_size or 0),
                       init_gen=make_generator(cfg.seed, r, s, "init", device=device),
                       geom_gen=make_generator(cfg.seed, r, s, "geometry"), on_log=on_log,
                       on_step=lambda: bar.update(1))
    steps_before = bar.n
    images, targets = method.make_shard(ctx, job)  # (N, C, H, W) uint8, (N, K)
    bar.update(method.steps_per_shard(cfg) - (bar.n - steps_before))
    logits = method.logits_for(ctx, images)
    path = shard_path(out, r, s)
    write_shard(path, images.permute(0, 2, 3, 1).cpu().numpy(),
                targets.float().cpu().numpy(), logits.float().cpu().numpy(), np.full(count, r, dtype=np.int16))
    agree = float((logits.argmax(1) == targets.argmax(1)).float().mean())
    logger.log({"event": "shard_done", "round": r, "shard": s, "images": count,
                "agreement": agree, **method.shard_info(), "seconds": time.perf_counter() - t0})
    return shard_record(path, count)


def finalize_dataset(out: Path, cfg: SynthesisConfig, manifest: dict[str, Any], seconds: float,
                     fresh: set[str] | None = None) -> bool:
    """When every shard exists: pictures, a summary, every shard's record and ``complete=true`` in the
    manifest. ``fresh``: names of the shards whose record rank 0 has just written. Returns success."""
    shards = cfg.shards_per_round()
    have = {(r, s): p for r, s, p in list_shards(out)}
    if any((r, s) not in have for r in range(cfg.rounds) for s in range(shards[r])):
        return False  # other ranks are still working; running rank 0 again finalizes
    order = [have[(r, s)] for r in range(cfg.rounds) for s in range(shards[r])]
    # one label, agreement flag and round per image, read shard by shard (each shard's targets and logits are
    # dropped once reduced: with 1,000 classes they are 8 KB per image); images only of the first shards (the
    # sample grid): bounded memory
    per_round_n, records = cfg.images_per_round(), dict(manifest.get("shards") or {})
    parts = []
    for r in range(cfg.rounds):
        for s in range(shards[r]):
            count, name = min(cfg.batch_size, per_round_n[r] - s * cfg.batch_size), have[(r, s)].name
            part = load_checked_shard(out, r, s, count, None, ("targets", "logits", "rounds"))
            label = part["targets"].argmax(1)
            parts.append({"labels": label, "agree": part["logits"].argmax(1) == label, "rounds": part["rounds"]})
            if name not in (fresh or set()):  # made by another rank, or checked when this invocation started
                records[name] = shard_record(have[(r, s)], count)
    rounds = np.concatenate([p["rounds"] for p in parts])
    labels = torch.from_numpy(np.concatenate([p["labels"] for p in parts]))
    agree = np.concatenate([p["agree"] for p in parts])
    if cfg.plots:
        _draw_grid(order, [p["labels"] for p in parts], list(manifest["class_names"]), cfg.grid_per_class,
                   out / "samples.png")
        save_loss_curves(sorted(out.glob("synthesis_log*.jsonl")), out / "loss_curves.png")
    manifest = dict(manifest)
    manifest["complete"] = True
    manifest["shards"] = dict(sorted(records.items()))
    per_round = [float(agree[rounds == r].mean()) for r in range(cfg.rounds)]
    notes = []
    chance = 1.0 / max(1, len(manifest["class_names"]))
    if cfg.label_mode != "hard" and min(per_round) <= chance:  # baselines' random labels agree by chance only
        notes.append(f"the teacher agrees with the targets on only {min(per_round):.1%} of a round's images (chance: "
                     f"{chance:.1%}): the synthesis settings likely failed (check lr and the loss weights)")
        warnings.warn(f"dataset {str(out)!r}: {notes[-1]}", stacklevel=2)
    manifest["summary"] = {
        "warnings": notes,
        "images": int(len(labels)),
        "agreement_per_round": per_round,
        "class_counts": np.bincount(labels.numpy(), minlength=len(manifest["class_names"])).tolist(),
        "seconds_last_invocation": round(seconds, 2),
    }
    atomic_write_json(out / MANIFEST, manifest)
    return True


def _grid_sample(paths: list[Path], labels: list[np.ndarray], class_names: list[str], per_class: int,
                 max_rows: int = GRID_MAX_ROWS) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The sample grid's images (N, C, H, W) uint8, their rows and the row names: the first ``per_class`` images
    of each shown class, read only from the shards (``paths``, labels per shard) holding them, so memory is
    bounded by the grid whatever the dataset's size. Up to ``max_rows`` classes are shown: all of them when they
    fit (CIFAR), else the first classes to appear (a 1,000-row grid of 280 px tiles would take gigabytes)."""
    flat = np.concatenate(labels)
    present, first = np.unique(flat, return_index=True)
    shown = list(range(len(class_names))) if len(class_names) <= max_rows else \
        [int(c) for c in present[np.argsort(first)][:max_rows]]
    row_of = {c: i for i, c in enumerate(shown)}
    picked = np.sort(np.concatenate([np.flatnonzero(flat == c)[:per_class] for c in shown] or [np.zeros(0, int)]))
    imgs, rows, start = [], [], 0
    for path, lab in zip(paths, labels, strict=True):
        local = picked[(picked >= start) & (picked < start + len(lab))] - start
        if len(local):
            imgs.append(torch.from_numpy(read_shard(path, ("images",))["images"][local]).permute(0, 3, 1, 2))
            rows.extend(row_of[int(c)] for c in lab[local])
        start += len(lab)
    if not imgs:  # no image at all: an empty grid (grey rows) of the right tile size
        first_img = read_shard(paths[0], ("images",))["images"][:0]
        imgs.append(torch.from_numpy(first_img).permute(0, 3, 1, 2))
    return torch.cat(imgs), torch.tensor(rows, dtype=torch.long), [class_names[c] for c in shown]


def _draw_grid(paths: list[Path], labels: list[np.ndarray], class_names: list[str], per_class: int,
               path: Path) -> Path:
    """Save the sample grid of the shards ``paths`` (their labels given) to ``path``."""
    imgs, rows, names = _grid_sample(paths, labels, class_names, per_class)
    # 2x zoom for CIFAR-sized canvases; ImageNet-sized ones are large enough as they are
    return save_sample_grid(imgs, rows, names, path, per_class, scale=2 if imgs.shape[-1] <= 64 else 1)


def save_dataset_grid(out: str | Path, path: str | Path, per_class: int = 8) -> Path:
    """The sample grid of the dataset in ``out`` saved to ``path``, reading the shards one at a time (labels)
    and only the grid's images: bounded memory for any dataset size and class count."""
    out = Path(out)
    paths = [p for _r, _s, p in list_shards(out)]
    labels = [read_shard(p, ("targets",))["targets"].argmax(1) for p in paths]
    return _draw_grid(paths, labels, list(read_manifest(out)["class_names"]), per_class, Path(path))

