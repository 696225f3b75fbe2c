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
from dfnas.errors import DfnasError


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
    from dfnas.rundir import prepare_run_dir
    from dfnas.search.api import SearchResult, finish_search, prepare_search, run_search
    from dfnas.search.loop import run_loop

    if not ctx.enabled:
        return run_search(cfg, data, out, device=device, progress=progress, table_path=table_path, teacher=teacher)
    # the same identity as run_search, so a search can be resumed with any number of processes
    setup = prepare_search(cfg, data, device, teacher)
    if setup.build_method().training_free:  # nothing to split across processes: scoring takes minutes
        raise DfnasError(f"search method {setup.cfg.method!r} is training-free (zero-cost proxies) and runs in one "
                         "process: start it without torchrun")
    setup.record["world_size"] = ctx.world_size
    cfg, space = setup.cfg, setup.space
    out_dir = Path(out)
    err, h = None, None
    if ctx.is_main:
        try:
            out_dir, h = prepare_run_dir(out, setup.identity, setup.record)
        except DfnasError as e:
            err = str(e)
    err, h = D.broadcast_object((err, h), ctx)
    if err is not None:
        raise DfnasError(err)
    rank_dir = _rank_dir(out_dir, ctx)
    _start_from_rank0(out_dir, rank_dir, ctx)

    outcome = run_loop(DistributedMethod(setup.build_method(), ctx), setup.train, setup.held,  # type: ignore[arg-type]
                       cfg.loop(), setup.criterion(), rank_dir, setup.device, h, cfg.seed,
                       progress=progress, desc=f"search[{cfg.method}/{space.name} x{ctx.world_size}]")
    arch = outcome.arch
    result = None
    if ctx.is_main:
        result = finish_search(setup, outcome, out_dir, h, table_path, {"world_size": ctx.world_size})
    result = D.broadcast_object(result, ctx)
    if str(arch) != result["arch_str"]:
        raise DfnasError(f"rank {ctx.rank} found {arch} but rank 0 found {result['arch_str']}: the ranks diverged")
    return SearchResult(arch, space, out_dir, result, outcome.model)
