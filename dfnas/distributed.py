"""Scale-out with ``torch.distributed``: the same commands run under ``torchrun --nproc_per_node K``.

- ``init_distributed`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``) and starts a process group: NCCL when the device is CUDA, gloo on CPU.
  Without those variables (or with ``WORLD_SIZE=1``) it returns a single-process context and every
  helper below is a no-op, so library code calls them unconditionally.
- Synthesis splits its shards across ranks (shard ``i`` of a round goes to rank ``i % world``) with a
  barrier between rounds, because round ``k+1`` reads the images of round ``k`` (see
  ``dfnas.pipeline.synthesis_stage``).
- Supernet training (``dfnas.search.distributed``) wraps the supernet in ``DistributedDataParallel``
  (``wrap_ddp``) and keeps every random architecture decision identical on all ranks (``sync_generator`` /
  ``broadcast_object`` / ``broadcast_tensors``), so each step's sampled path or architecture parameters agree.
- ``process_group`` is what a command wraps its work in (``dfnas synthesize``, ``search``, ``train``): the
  group torchrun describes, shut down at the end unless the caller had started it; ``on_main`` runs a step on
  rank 0 and hands its result, or its error, to every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dfnas.errors import DfnasError
from dfnas.repro import resolve_device


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes shared files."""
        return self.rank == 0


SINGLE = DistContext()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DfnasError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from None


def context_from_env() -> DistContext:
    """The context torchrun's variables describe, without starting anything (rank 0 of 1 when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise DfnasError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistContext(rank, world, local, None)


def current() -> DistContext:
    """The context of the running process group (or the single-process context when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()),
                           dist.get_backend())
    return SINGLE


def init_distributed(device: str | torch.device | None = "auto",
                     timeout_s: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Start (or join) the process group torchrun describes; return the context and this rank's device.

    CUDA: each rank uses ``cuda:LOCAL_RANK`` and NCCL. CPU: gloo. A group that is already initialized is
    reused (tests start it themselves with a FileStore).
    """
    dev = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        ctx = current()
    else:
        ctx = context_from_env()
        if not ctx.enabled:
            return SINGLE, dev
        if not dist.is_available():
            raise DfnasError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise DfnasError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; start the job with torchrun")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if dev.type == "cuda":
            dev = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(dev)
            kwargs["device_id"] = dev
        dist.init_process_group(backend, init_method="env://", rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        ctx = DistContext(ctx.rank, ctx.world_size, ctx.local_rank, backend)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", ctx.local_rank)
    return ctx, dev


def shutdown() -> None:
    """Destroy the process group if one is running.

    DistributedDataParallel wrappers sit in reference cycles, so without a collection they outlive the group
    and are torn down at interpreter exit, after it: gloo then aborts the process ("terminate called without
    an active exception", seen in about 1 of 4 two-process runs). Collect them first. (No barrier here: a
    rank that failed must not leave the others waiting for it.)
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(ctx: DistContext | None = None) -> None:
    """Wait for every rank (no-op in a single process)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.local_rank])
    else:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext | None = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects: paths, architectures, dicts)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return obj
    box = [obj if ctx.rank == src else None]
    dev = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=dev)
    return box[0]


def broadcast_tensors(tensors: Sequence[torch.Tensor], ctx: DistContext | None = None, src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (e.g. DARTS architecture parameters)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def all_reduce_mean(t: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """The mean of ``t`` over ranks (a new tensor; ``t`` itself in a single process)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def all_reduce_grads(params: Sequence[torch.nn.Parameter], ctx: DistContext | None = None) -> None:
    """Average the gradients of ``params`` over ranks in place (parameters DDP does not own, e.g. alphas)."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is None:
            # every rank must join each collective: a rank without a gradient contributes zeros
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(ctx.world_size)


def broadcast_buffers(module: nn.Module, ctx: DistContext | None = None, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) into ``module`` on every rank."""
    ctx = ctx or current()
    if ctx.enabled:
        broadcast_tensors(list(module.buffers()), ctx, src)


def sync_generator(g: torch.Generator, ctx: DistContext | None = None, src: int = 0) -> torch.Generator:
    """Give ``g`` rank ``src``'s state on every rank, so all ranks draw the same architectures from it."""
    ctx = ctx or current()
    if ctx.enabled:
        g.set_state(broadcast_object(g.get_state(), ctx, src))
    return g


def shard_indices(n: int, ctx: DistContext | None = None) -> list[int]:
    """Indices in ``range(n)`` this rank owns: ``i % world == rank``."""
    ctx = ctx or current()
    return [i for i in range(n) if i % ctx.world_size == ctx.rank]


def wrap_ddp(model: nn.Module, ctx: DistContext | None = None, device: torch.device | None = None,
             find_unused_parameters: bool = True, broadcast_buffers: bool = True) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model``.

    Single-path supernets (SPOS, ProxylessNAS) leave the unselected options without gradients each step,
    hence ``find_unused_parameters=True`` by default. Identical paths on all ranks are the caller's job
    (sample from a generator synced with ``sync_generator`` or broadcast the path).
    """
    ctx = ctx or current()
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device is not None and device.type == "cuda" else None
    # broadcast_buffers: rank 0's BatchNorm running statistics are copied to every rank at each forward, so
    # evaluations (which decide architectures in SPOS) see the same statistics everywhere
    import inspect

    # torch >= 2.13 renamed the option (the old name warns); older versions only know broadcast_buffers
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
           else "broadcast_buffers")
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters, **{key: broadcast_buffers})


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def main_first(ctx: DistContext | None = None) -> Iterator[bool]:
    """Run the body on rank 0 first, then on the other ranks (e.g. create a directory, then read it).

    Yields whether this rank is the main one.
    """
    ctx = ctx or current()
    if not ctx.is_main:
        barrier(ctx)
    try:
        yield ctx.is_main
    finally:
        if ctx.is_main:
            barrier(ctx)


@contextlib.contextmanager
def process_group(device: str | torch.device | None = "auto") -> Iterator[tuple[DistContext, torch.device]]:
    """``init_distributed`` for the body of a command; the group is shut down afterwards when this call
    started it (a group the caller started, e.g. a test's, is left running)."""
    started = not (dist.is_available() and dist.is_initialized())
    ctx, dev = init_distributed(device)
    try:
        yield ctx, dev
    finally:
        if started and ctx.enabled:
            shutdown()


def on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and hand its result (or its error, as a DfnasError) to every rank."""
    if not ctx.enabled:
        return fn()
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except DfnasError as e:
            error = str(e)
        except Exception as e:  # other ranks must not wait forever for a rank 0 that crashed
            error = f"{type(e).__name__}: {e}"
            broadcast_object((None, error), ctx)
            raise
    result, error = broadcast_object((result, error), ctx)
    if error is not None:
        raise DfnasError(error)
    return result
