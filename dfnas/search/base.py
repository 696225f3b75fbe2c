"""The interface between the shared training loop and a search method, plus the method registry.

The loop (``dfnas.search.loop``) owns data, the network-weight optimizer, checkpoints and logging. A method
owns its architecture parameters and decides, through hooks, what the supernet computes:

    for each training batch:
        if method.wants_arch_step(ctx):  method.arch_step(ctx, held_out_batch, train_batch)
        method.before_weight_step(ctx)   # set a path (SPOS, ProxylessNAS) or weights (DARTS)
        weight step on the training batch (SGD, shared by all methods)
    at each epoch end:                   method.epoch_end(ctx) -> record to log
    after the last epoch:                method.finalize(ctx) -> Arch   (SPOS runs its evolution here)

Everything a method needs to continue after a kill is in ``state_dict`` (architecture parameters, their
optimizer, its generator), which the loop writes into every checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from dfnas.registry import Registry
from dfnas.spaces.base import Arch, Space

if TYPE_CHECKING:
    from pathlib import Path

    from dfnas.search.api import SearchSetup
    from dfnas.search.loop import LoopContext, LoopOutcome

Batch = tuple[torch.Tensor, torch.Tensor]  # (images (B, C, S, S) float, supervision)


class SearchMethod:
    """Base class: a method with no architecture parameters and no-op hooks."""

    name: ClassVar[str] = ""
    config_cls: ClassVar[type | None] = None  # the method's typed options dataclass
    needs_held_out: ClassVar[bool] = False  # True: the method cannot run without a held-out split
    training_free: ClassVar[bool] = False  # True: no supernet training; run_search calls search_without_training
    options_field: ClassVar[str | None] = None  # SearchConfig block with the options (None: the method's name)
    # supernet training epochs when the configuration sets none (CPU-sized: a search on 5,000 images, held_out
    # 0.5, batch 64, nb201 C=8 N=1, finishes within 30 minutes on 2 shared cores; benchmarks/results/search_speed.md)
    default_epochs: ClassVar[int] = 10

    def __init__(self, space: Space, options: Any, generator: torch.Generator, device: torch.device) -> None:
        self.space = space
        self.options = options
        self.generator = generator  # the method's own random stream (paths, noise, evolution)
        self.device = device

    # -- model and parameters ------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The network the loop trains (a supernet for search methods)."""
        return self.space.build_supernet()

    def seed_run(self, out_dir: Path, config_hash: str, identity: dict[str, Any]) -> None:
        """Called before the training loop on a run directory without a checkpoint: a method may write one for
        the loop to resume from (another run's trained supernet: ``spos.supernet_from``,
        ``proxyless.supernet_from``)."""

    def setup(self, ctx: LoopContext) -> None:
        """Called once the model is on the device, before training or loading a checkpoint."""

    def arch_parameters(self) -> list[torch.Tensor]:
        return []

    # -- hooks ---------------------------------------------------------------------------------------
    def wants_arch_step(self, ctx: LoopContext) -> bool:
        """Whether to run ``arch_step`` before this step's weight update (a held-out batch is drawn)."""
        return False

    def arch_step(self, ctx: LoopContext, held_out: Batch, train: Batch) -> dict[str, float]:
        """Update architecture parameters; return scalars to log."""
        return {}

    def before_weight_step(self, ctx: LoopContext) -> None:
        """Configure the model for the weight step (set a path or option weights)."""

    def after_weight_step(self, ctx: LoopContext) -> None:
        """Called after each weight step's update (``ctx.step`` already counts it)."""

    def weight_paths(self, ctx: LoopContext) -> list[Arch] | None:
        """Paths whose gradients one weight step sums on the same batch (each path's loss divided by their
        number), e.g. FairNAS's strict fairness; None: one forward pass of what ``before_weight_step`` set."""
        return None

    def prepare_eval(self, ctx: LoopContext) -> bool:
        """Configure the model for held-out evaluation; False to skip evaluation this epoch."""
        return True

    def epoch_end(self, ctx: LoopContext) -> dict[str, Any]:
        """JSON-able record logged at the end of each epoch."""
        return {}

    def current_arch(self) -> Arch | None:
        """The architecture the method would return now (None when undefined, e.g. SPOS before evolution)."""
        return None

    def finalize(self, ctx: LoopContext) -> Arch:
        """The searched architecture, after all training epochs."""
        arch = self.current_arch()
        if arch is None:
            raise NotImplementedError(f"method {self.name!r} must implement finalize")
        return arch

    def search_without_training(self, setup: SearchSetup, out_dir: Path, config_hash: str,
                                progress: bool = True) -> LoopOutcome:
        """The whole search of a ``training_free`` method (replaces the training loop), written to ``out_dir``."""
        raise NotImplementedError(f"method {self.name!r} trains a supernet: run it through run_loop")

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class AlphaMethod(SearchMethod):
    """A method with one logit vector ``alpha[key]`` (num_options,) per decision (DARTS, ProxylessNAS)."""

    def __init__(self, space: Space, options: Any, generator: torch.Generator, device: torch.device) -> None:
        super().__init__(space, options, generator, device)
        init_std = float(getattr(options, "init_std", 1e-3))
        # small random logits (DARTS / ProxylessNAS initialize near uniform); drawn on CPU from the method's
        # generator, then moved, so the values do not depend on the device
        gen_cpu = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        self.keys = list(space.decisions())
        self.alphas: dict[str, torch.Tensor] = {}
        for k, opts in space.decisions().items():
            a = (init_std * torch.randn(len(opts), generator=gen_cpu)).to(device)
            self.alphas[k] = a.requires_grad_(True)

    def arch_parameters(self) -> list[torch.Tensor]:
        return [self.alphas[k] for k in self.keys]

    def probs(self) -> dict[str, torch.Tensor]:
        """softmax(alpha) per decision, detached."""
        return {k: torch.softmax(self.alphas[k].detach(), 0) for k in self.keys}

    def current_arch(self) -> Arch:
        # derive takes logits: argmax per decision, or the space's own rule (DARTS: softmax, top-2 edges)
        return self.space.derive({k: a.detach() for k, a in self.alphas.items()})

    def alpha_record(self) -> dict[str, Any]:
        """Per-decision softmax(alpha), their mean entropy (nats), and the derived architecture."""
        probs = self.probs()
        ent = [float(-(p * p.clamp_min(1e-12).log()).sum()) for p in probs.values()]
        max_ent = [math.log(len(p)) for p in probs.values()]
        return {
            "alpha": {k: [round(float(v), 5) for v in p.cpu()] for k, p in probs.items()},
            "entropy": sum(ent) / max(1, len(ent)),
            "entropy_max": sum(max_ent) / max(1, len(max_ent)),
            "arch": str(self.current_arch()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "alphas": {k: a.detach().cpu().clone() for k, a in self.alphas.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for k, a in self.alphas.items():
                a.copy_(state["alphas"][k].to(a.device))


SEARCH_METHODS: Registry[type[SearchMethod]] = Registry("search method")


def register_method(cls: type[SearchMethod]) -> type[SearchMethod]:
    """Class decorator: register a SearchMethod subclass under ``cls.name``."""
    SEARCH_METHODS.register(cls.name)(lambda: cls)
    return cls


def get_method_cls(name: str) -> type[SearchMethod]:
    """The method class registered as ``name`` (ConfigError listing the known names otherwise)."""
    return SEARCH_METHODS.get(name)()


def build_method(name: str, space: Space, options: Any, generator: torch.Generator,
                 device: torch.device) -> SearchMethod:
    """Instantiate method ``name``; ``options`` is its config dataclass (or a dict checked by from_dict)."""
    from dfnas.config import from_dict

    cls = get_method_cls(name)
    if cls.config_cls is not None and not isinstance(options, cls.config_cls):
        options = from_dict(cls.config_cls, dict(options or {}), where=name)
    return cls(space, options, generator, device)
