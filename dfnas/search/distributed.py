"""The one prepare -> loop -> finish path of search and training, in one process or under ``torchrun``.

``run_on_ranks`` is what ``run_search`` and ``train_network`` call: rank 0 opens the run directory (the same
identity check in one process or many, so a run resumes with any number of processes), every rank runs the
shared loop (``dfnas.search.loop.run_loop``), then rank 0 writes the results and hands them to every rank.
In one process (``world_size == 1``) it is exactly the single-process run.

With several ranks, DistributedDataParallel plugs into the loop without changing it:
- ``DistributedMethod`` wraps any search method (the ``fixed`` one of training too). In ``setup`` it replaces
  ``ctx.model`` (what the loop trains and evaluates) with a ``SplitBatchDDP`` around the supernet; the loop's
  checkpoints still hold the bare supernet's state dict, so a checkpoint is interchangeable between 1 and N
  processes.
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
- A changing training set (online data-free training's replay bank) is refreshed on every rank, then rank 0's
  images replace the others' (``RankZeroData``), so every rank sweeps the same batches.

Rank 0 writes the run directory exactly as one process does; the other ranks keep their own log and
checkpoint in ``OUT/.ranks/rank<r>/`` and start every attempt from rank 0's checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from dfnas import distributed as D
from dfnas.errors import DfnasError
from dfnas.rundir import prepare_run_dir
from dfnas.search.base import Batch, SearchMethod
from dfnas.search.loop import DataSource
from dfnas.spaces.base import Arch

if TYPE_CHECKING:
    from dfnas.data.imageset import ImageSet
    from dfnas.search.api import SearchSetup
    from dfnas.search.loop import LoopContext, LoopOutcome


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
        self._ddp_left = 0  # forwards still to run data-parallel in the current weight step

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def ddp_next_forward(self, n: int = 1) -> None:
        """The next ``n`` forwards are a weight step's (one per path it sums): run them data-parallel. DDP
        averages each backward's accumulated gradient across ranks, so the sum over paths stays exact."""
        self._ddp_left = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ddp_step, self._ddp_left = self._ddp_left > 0, max(0, self._ddp_left - 1)
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


class DistributedMethod(SearchMethod):
    """A ``SearchMethod`` run on every rank of a process group: each hook calls the wrapped method's, then keeps
    the ranks identical (see the module docstring)."""

    def __init__(self, inner: SearchMethod, ctx: D.DistContext) -> None:
        super().__init__(inner.space, inner.options, inner.generator, inner.device)
        self.inner = inner
        self.ctx = ctx
        self.wrapper: SplitBatchDDP | None = None
        # the wrapped method's description, read by the loop
        self.name = inner.name  # type: ignore[misc]
        self.needs_held_out = inner.needs_held_out  # type: ignore[misc]
        self.training_free = inner.training_free  # type: ignore[misc]

    def build_model(self) -> nn.Module:
        """The inner method's supernet (wrapped later, in ``setup``)."""
        return self.inner.build_model()

    def seed_run(self, out_dir: Path, config_hash: str, identity: dict[str, Any]) -> None:
        """The inner method's (every rank seeds its own directory with the same checkpoint)."""
        self.inner.seed_run(out_dir, config_hash, identity)

    def setup(self, ctx: LoopContext) -> None:
        """Inner setup, then identical generators/alphas on every rank and the DDP wrapper as ``ctx.model``."""
        self.inner.setup(ctx)
        D.sync_generator(self.inner.generator, self.ctx)
        D.broadcast_tensors(self.inner.arch_parameters(), self.ctx)
        self.wrapper = SplitBatchDDP(ctx.model, self.ctx, ctx.device)
        ctx.model = self.wrapper

    def arch_parameters(self) -> list[torch.Tensor]:
        return self.inner.arch_parameters()

    def wants_arch_step(self, ctx: LoopContext) -> bool:
        return self.inner.wants_arch_step(ctx)

    def arch_step(self, ctx: LoopContext, held_out: Batch, train: Batch) -> dict[str, float]:
        """Inner architecture step (replicated), then rank 0's architecture parameters everywhere."""
        rec = self.inner.arch_step(ctx, held_out, train)
        D.broadcast_tensors(self.inner.arch_parameters(), self.ctx)  # alphas: rank 0's values everywhere
        return rec

    def before_weight_step(self, ctx: LoopContext) -> None:
        """Inner path/weights setup; the coming forward is the data-parallel weight step."""
        self.inner.before_weight_step(ctx)
        assert self.wrapper is not None
        self.wrapper.ddp_next_forward()

    def weight_paths(self, ctx: LoopContext) -> list[Arch] | None:
        """The inner method's paths (FairNAS: one per option), each forward of them data-parallel."""
        paths = self.inner.weight_paths(ctx)
        if paths is not None:
            assert self.wrapper is not None
            self.wrapper.ddp_next_forward(len(paths))
        return paths

    def prepare_eval(self, ctx: LoopContext) -> bool:
        """Rank 0's BatchNorm statistics everywhere, then the inner method's evaluation setup."""
        D.broadcast_buffers(bare_model(ctx.model), self.ctx)
        return self.inner.prepare_eval(ctx)

    def epoch_end(self, ctx: LoopContext) -> dict[str, Any]:
        return self.inner.epoch_end(ctx)

    def current_arch(self) -> Arch | None:
        return self.inner.current_arch()

    def finalize(self, ctx: LoopContext) -> Arch:
        """Rank 0's BatchNorm statistics everywhere, then the inner finalize (replicated)."""
        D.broadcast_buffers(bare_model(ctx.model), self.ctx)
        return self.inner.finalize(ctx)

    def search_without_training(self, setup: SearchSetup, out_dir: Path, config_hash: str,
                                progress: bool = True) -> LoopOutcome:
        raise DfnasError(f"search method {self.name!r} is training-free (zero-cost proxies) and runs in one "
                         "process: start it without torchrun")

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def bare_model(model: nn.Module) -> nn.Module:
    """The bare network behind ``ctx.model`` (``SplitBatchDDP`` or not)."""
    return model.module if isinstance(model, SplitBatchDDP) else model


class RankZeroData(DataSource):
    """A ``DataSource`` refreshed on every rank (its generator and student stay in step), after which rank 0's
    set replaces the others', so the ranks sweep identical batches whatever the device's nondeterminism."""

    def __init__(self, inner: DataSource, ctx: D.DistContext) -> None:
        self.inner = inner
        self.ctx = ctx

    def epoch_start(self, ctx: LoopContext) -> ImageSet:
        ds = self.inner.epoch_start(ctx)
        tensors = [ds.images, ds.targets] + [t for t in (ds.logits, ds.rounds) if t is not None]
        D.broadcast_tensors(tensors, self.ctx)
        return ds

    def current(self) -> ImageSet:
        return self.inner.current()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def distribute(method: SearchMethod, ctx: D.DistContext) -> SearchMethod:
    """``method`` for the loop on this rank: itself in one process, wrapped in ``DistributedMethod`` otherwise."""
    if not ctx.enabled:
        return method
    if method.training_free:  # nothing to split across processes: scoring takes minutes
        raise DfnasError(f"search method {method.name!r} is training-free (zero-cost proxies) and runs in one "
                         "process: start it without torchrun")
    return DistributedMethod(method, ctx)


def distribute_data(source: DataSource | None, ctx: D.DistContext) -> DataSource | None:
    """``source`` for the loop on this rank (``RankZeroData`` around it under torchrun)."""
    return RankZeroData(source, ctx) if source is not None and ctx.enabled else source


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


def run_on_ranks(out: str | Path, identity: dict[str, Any], record: dict[str, Any], ctx: D.DistContext,
                 loop: Callable[[Path, str], LoopOutcome],
                 finish: Callable[[LoopOutcome, Path, str], dict[str, Any]]
                 ) -> tuple[LoopOutcome, Path, dict[str, Any]]:
    """Prepare -> loop -> finish, on every rank of ``ctx``; return (outcome, run directory, result).

    Rank 0 opens ``out`` for ``identity`` (``dfnas.rundir.prepare_run_dir``: resume or refuse; ``record`` gets
    ``world_size`` under torchrun); ``loop(loop_dir, config_hash)`` runs on every rank (``loop_dir`` is the run
    directory on rank 0, ``OUT/.ranks/rank<r>`` elsewhere); ``finish(outcome, out_dir, config_hash)`` writes
    the results on rank 0, and its result dict (with ``arch_str``) is handed to every rank, which checks that
    it found the same architecture.
    """
    if ctx.enabled:
        record = {**record, "world_size": ctx.world_size}
    out_dir, h = D.on_main(ctx, lambda: prepare_run_dir(out, identity, record))
    out_dir = Path(out_dir) if ctx.is_main else Path(out)
    loop_dir = _rank_dir(out_dir, ctx)
    _start_from_rank0(out_dir, loop_dir, ctx)
    outcome = loop(loop_dir, h)
    result = D.on_main(ctx, lambda: finish(outcome, out_dir, h))
    if ctx.enabled and str(outcome.arch) != result["arch_str"]:
        raise DfnasError(f"rank {ctx.rank} found {outcome.arch} but rank 0 found {result['arch_str']}: the ranks "
                         "diverged")
    return outcome, out_dir, result
