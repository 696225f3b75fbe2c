"""Supernet search under ``torchrun``: DistributedDataParallel plugged into the shared search loop.

How it plugs in without changing the loop (``dfnas.search.loop.run_loop``):
- ``DistributedMethod`` wraps any search method. In ``setup`` it replaces ``ctx.model`` (what the loop trains
  and evaluates) with a ``SplitBatchDDP`` around the supernet; the loop's checkpoints still hold the bare
  supernet's state dict, so a checkpoint is interchangeable between 1 and N processes.
- Every rank draws the same batches (same seeded generator). In each *weight step* a rank forwards only its
  slice of the batch through ``DistributedDataParallel``; the slices' logits are all-gathered so the loss is the
  full-batch loss on every rank, and the gather's backward scales the local gradient by the world size, so
  DDP's gradient average equals the single-process full-batch gradient. Global batch, steps per epoch and
  learning-rate schedule are those of a single process; BatchNorm sees per-rank slices (as usual with DDP).
- Architecture decisions stay identical on all ranks: the method's generator is synced from rank 0 (SPOS and
  ProxylessNAS sample the same paths), architecture parameters are broadcast from rank 0 after every
  architecture step (DARTS alphas), and BatchNorm buffers are broadcast before evaluations.
- Architecture steps, evaluation and SPOS's evolution run replicated (every rank, full batch, no DDP):
  they are a small share of the time, and replication keeps their decisions identical without more
  communication. ``find_unused_parameters=True`` because single-path steps leave most options unused.

Rank 0 writes the run directory exactly like ``run_search``; the other ranks keep their own log and
checkpoint in ``OUT/.ranks/rank<r>/`` and start every attempt from rank 0's checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dfnas import distributed as D
from dfnas.config import from_dict, to_dict
from dfnas.errors import DfnasError

# loop settings that do not change results (as in dfnas.search.api): left out of the resume identity
_CADENCE_KEYS = ("checkpoint_every_steps", "log_every_steps")


class _GatherBatch(torch.autograd.Function):
    """Concatenate every rank's slice of a batch; backward returns this rank's slice of the gradient times
    the world size (the loss is replicated on every rank, and DDP divides by the world size)."""

    @staticmethod
    def forward(fctx: Any, local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        world = len(sizes)
        m = max(sizes)
        padded = local.new_zeros((m, *local.shape[1:]))
        padded[:len(local)] = local
        bufs = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(bufs, padded.contiguous())
        lo = sum(sizes[:rank])
        fctx.lo, fctx.hi, fctx.world = lo, lo + sizes[rank], world
        return torch.cat([b[:n] for b, n in zip(bufs, sizes, strict=True)])

    @staticmethod
    def backward(fctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad[fctx.lo:fctx.hi] * fctx.world, None, None


class SplitBatchDDP(nn.Module):
    """The supernet for the loop: DDP on this rank's batch slice in weight steps, the plain supernet otherwise.

    Unknown attributes (``set_path``, ``set_weights``, ``choices`` ...) and the state dict are the supernet's.
    """

    def __init__(self, module: nn.Module, ctx: D.DistContext, device: torch.device,
                 find_unused_parameters: bool = True) -> None:
        super().__init__()
        self.module = module
        self.ctx = ctx
        # not a registered submodule: parameters and state dict are the supernet's, without a DDP prefix
        object.__setattr__(self, "_ddp", D.wrap_ddp(module, ctx, device, find_unused_parameters))
        self._ddp_next = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def ddp_next_forward(self) -> None:
        """The next forward is a weight step: run it data-parallel."""
        self._ddp_next = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ddp_step, self._ddp_next = self._ddp_next, False
        if not (ddp_step and self.training and torch.is_grad_enabled()):
            return self.module(x)
        b, w = x.shape[0], self.ctx.world_size
        if b < w:  # too small to split: every rank computes the whole batch (identical grads, DDP mean is exact)
            return self._ddp(x)
        sizes = [b // w + (1 if r < b % w else 0) for r in range(w)]
        lo = sum(sizes[:self.ctx.rank])
        local = self._ddp(x[lo:lo + sizes[self.ctx.rank]])  # (b_r, K)
        return _GatherBatch.apply(local, sizes, self.ctx.rank)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state, strict=strict, assign=assign)


class DistributedMethod:
    """Wraps a ``SearchMethod`` for the loop; every hook delegates to it (see the module docstring)."""

    def __init__(self, inner: Any, ctx: D.DistContext) -> None:
        self.inner = inner
        self.ctx = ctx
        self.wrapper: SplitBatchDDP | None = None

    def __getattr__(self, name: str) -> Any:  # name, options, space, needs_held_out, current_arch ...
        return getattr(self.inner, name)

    def build_model(self) -> nn.Module:
        """The inner method's supernet (wrapped later, in ``setup``)."""
        return self.inner.build_model()

    def setup(self, lctx: Any) -> None:
        """Inner setup, then identical generators/alphas on every rank and the DDP wrapper as ``ctx.model``."""
        self.inner.setup(lctx)
        D.sync_generator(self.inner.generator, self.ctx)
        D.broadcast_tensors(self.inner.arch_parameters(), self.ctx)
        self.wrapper = SplitBatchDDP(lctx.model, self.ctx, lctx.device)
        lctx.model = self.wrapper

    def wants_arch_step(self, lctx: Any) -> bool:
        return self.inner.wants_arch_step(lctx)

    def arch_step(self, lctx: Any, held_out: Any, train: Any) -> dict[str, float]:
        """Inner architecture step (replicated), then rank 0's architecture parameters everywhere."""
        rec = self.inner.arch_step(lctx, held_out, train)
        D.broadcast_tensors(self.inner.arch_parameters(), self.ctx)  # alphas: rank 0's values everywhere
        return rec

    def before_weight_step(self, lctx: Any) -> None:
        """Inner path/weights setup; the coming forward is the data-parallel weight step."""
        self.inner.before_weight_step(lctx)
        assert self.wrapper is not None
        self.wrapper.ddp_next_forward()

    def prepare_eval(self, lctx: Any) -> bool:
        """Rank 0's BatchNorm statistics everywhere, then the inner method's evaluation setup."""
        D.broadcast_buffers(self.inner_model(lctx), self.ctx)
        return self.inner.prepare_eval(lctx)

    def epoch_end(self, lctx: Any) -> dict[str, Any]:
        return self.inner.epoch_end(lctx)

    def finalize(self, lctx: Any) -> Any:
        """Rank 0's BatchNorm statistics everywhere, then the inner finalize (replicated)."""
        D.broadcast_buffers(self.inner_model(lctx), self.ctx)
        return self.inner.finalize(lctx)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    @staticmethod
    def inner_model(lctx: Any) -> nn.Module:
        """The bare supernet behind ``ctx.model``."""
        return lctx.model.module if isinstance(lctx.model, SplitBatchDDP) else lctx.model


def _rank_dir(out_dir: Path, ctx: D.DistContext) -> Path:
    """Where this rank's loop writes: the run directory on rank 0, a private folder on the others."""
    if ctx.is_main:
        return out_dir
    d = out_dir / ".ranks" / f"rank{ctx.rank}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _start_from_rank0(out_dir: Path, rank_dir: Path, ctx: D.DistContext) -> None:
    """Every rank resumes from rank 0's checkpoint (the ranks' own could stop at different steps)."""
    if not ctx.is_main:
        src, dst = out_dir / "checkpoint.pt", rank_dir / "checkpoint.pt"
        if src.is_file():
            shutil.copyfile(src, dst)
        else:
            dst.unlink(missing_ok=True)
    D.barrier(ctx)  # rank 0 starts writing checkpoints only after every rank has copied


def run_search_ddp(cfg: Any, data: Any, out: str | Path, device: torch.device, ctx: D.DistContext,
                   progress: bool = True, table_path: str | Path | None = None, teacher: Any = None) -> Any:
    """``run_search`` for a torchrun job (see the module docstring); returns a SearchResult on every rank."""
    from dfnas.data import ImageSet, open_dataset
    from dfnas.io import atomic_write_json
    from dfnas.repro import make_generator
    from dfnas.search.api import SearchConfig, SearchResult, make_space, run_search
    from dfnas.search.base import build_method
    from dfnas.search.losses import Criterion
    from dfnas.search.report import plot_progress, write_arch_files
    from dfnas.search.rundir import dataset_info, prepare_run_dir, resolve_teacher, teacher_identity, with_label_mode

    if not ctx.enabled:
        return run_search(cfg, data, out, device=device, progress=progress, table_path=table_path, teacher=teacher)
    if not isinstance(cfg, SearchConfig):
        cfg = from_dict(SearchConfig, dict(cfg), "search")
    cfg.check()
    ds = data if isinstance(data, ImageSet) else open_dataset(data)
    ds = with_label_mode(ds, cfg.label_mode)
    space = make_space(cfg.space, ds)
    ds.check_compatible(space.num_classes, space.input_size, what=f"dataset {ds.info.get('source') or ''}".strip())
    train, held = ds.split(cfg.held_out, make_generator(cfg.seed, "search", "split"))
    tch = resolve_teacher(teacher, device, ds)
    # the same identity as run_search, so a search can be resumed with any number of processes
    loop_cfg = to_dict(cfg.loop())
    identity = {
        "kind": "search", "method": cfg.method, "method_options": to_dict(cfg.method_options()),
        "space": space.config(), "loop": {k: v for k, v in loop_cfg.items() if k not in _CADENCE_KEYS},
        "held_out": cfg.held_out, "seed": cfg.seed, "label_mode": ds.label_mode, "temperature": cfg.temperature,
        "dataset": dataset_info(ds), "online_teacher": teacher_identity(tch),
    }
    record = {"search": {**to_dict(cfg), "epochs": _epochs(cfg)}, "device": str(device),
              "split": {"train": len(train), "held_out": len(held)},
              "space": space.config(), "dataset": identity["dataset"], "online_teacher": identity["online_teacher"],
              "world_size": ctx.world_size}
    out_dir = Path(out)
    err, h = None, None
    if ctx.is_main:
        try:
            out_dir, h = prepare_run_dir(out, identity, record)
        except DfnasError as e:
            err = str(e)
    err, h = D.broadcast_object((err, h), ctx)
    if err is not None:
        raise DfnasError(err)
    rank_dir = _rank_dir(out_dir, ctx)
    _start_from_rank0(out_dir, rank_dir, ctx)

    method = build_method(cfg.method, space, cfg.method_options(), make_generator(cfg.seed, "method", cfg.method),
                          device)
    from dfnas.search.loop import run_loop

    outcome = run_loop(DistributedMethod(method, ctx), train, held, cfg.loop(),  # type: ignore[arg-type]
                       Criterion(ds.label_mode, cfg.temperature, tch), rank_dir, device, h, cfg.seed,
                       progress=progress, desc=f"search[{cfg.method}/{space.name} x{ctx.world_size}]")
    arch = outcome.arch
    result = None
    if ctx.is_main:
        result = _result(cfg, space, arch, outcome, table_path)
        result["world_size"] = ctx.world_size
        write_arch_files(out_dir, space, arch, {"method": cfg.method, "config_hash": h})
        atomic_write_json(out_dir / "result.json", result)
        plot_progress(out_dir / "log.jsonl", out_dir / "progress.png", f"{cfg.method} on {space.name}: {arch}")
    result = D.broadcast_object(result, ctx)
    if str(arch) != result["arch_str"]:
        raise DfnasError(f"rank {ctx.rank} found {arch} but rank 0 found {result['arch_str']}: the ranks diverged")
    return SearchResult(arch, space, out_dir, result, outcome.model)


def _epochs(cfg: Any) -> int:
    """The epochs the loop runs (``SearchConfig.epochs`` may be None: the method's default)."""
    resolved = getattr(cfg, "resolved_epochs", None)
    return int(resolved()) if callable(resolved) else int(cfg.epochs)


def _result(cfg: Any, space: Any, arch: Any, outcome: Any, table_path: str | Path | None) -> dict[str, Any]:
    """result.json's content, as ``run_search`` writes it."""
    from dfnas.search.report import nb201_ground_truth
    from dfnas.spaces.flops import space_cost

    gt, note = nb201_ground_truth(space, arch, table_path)
    return {"arch": arch.to_json(), "arch_str": str(arch), "method": cfg.method, "space": space.config(),
            **space_cost(space, arch), "search_time_s": round(outcome.elapsed_s, 2), "weight_steps": outcome.steps,
            "epochs": _epochs(cfg), "final_held_out": outcome.last_eval or None, "nb201": gt, "nb201_note": note,
            **outcome.extra}
