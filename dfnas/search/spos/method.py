"""Single Path One-Shot (Guo et al., ECCV 2020): uniform single-path supernet training, then evolution.

Weight step: a path drawn uniformly (each decision independently) from the method's generator, or with
``sampling: fair`` the m paths of FairNAS's strict fairness, whose gradients are summed on the batch. No
architecture parameters, no architecture steps. After training, ``finalize`` runs the constrained
evolutionary search of ``evolution.py``, scoring each candidate on (a part of) the held-out split by top-1
accuracy against the dataset's hard labels or the argmax of the stored teacher logits (``score: accuracy``,
the paper), or by minus the search loss (``score: loss``), after
recalibrating BatchNorm statistics for that path on a fixed set of training batches. Optionally
(``rerank_top``) the evolution's best few are fine-tuned alone and re-scored (``rerank.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfnas.config import ADDED_LATER, to_dict
from dfnas.data.imageset import iterate_batches
from dfnas.errors import ConfigError
from dfnas.repro import make_generator
from dfnas.search.base import SearchMethod, register_method
from dfnas.search.bn import recalibrate_bn
from dfnas.search.loop import LoopContext
from dfnas.search.reuse import seed_from_supernet
from dfnas.search.spos.evolution import Evolution, EvolutionConfig
from dfnas.search.spos.rerank import rerank
from dfnas.spaces.base import Arch

SAMPLINGS = ("uniform", "fair")
SCORES = ("accuracy", "loss")
# the SPOS options that change how the supernet trains; every other SPOS option only acts in the evolution
SUPERNET_OPTIONS = ("sampling",)


def supernet_options(options: dict[str, Any]) -> dict[str, Any]:
    """The SPOS options that shape the trained supernet (``spos.supernet_from`` requires them equal)."""
    return {k: options[k] for k in SUPERNET_OPTIONS if k in options}


@dataclass
class SposConfig:
    population: int = 16  # paper: 50
    top_k: int = 5  # paper: 10
    generations: int = 6  # paper: 20
    mutation_prob: float = 0.1
    max_macs: float | None = None  # MACs constraint of the evolution (None: unconstrained)
    max_tries: int = 200
    bn_batches: int = 4  # training batches (of batch_size) forwarded to recalibrate BN per candidate
    eval_batches: int | None = 4  # held-out batches (of eval_batch_size) scoring each candidate; None: all
    # uniform: one path per weight step, each option drawn uniformly (the paper); fair: FairNAS's strict fairness
    # (Chu et al., ICCV 2021): every weight step sums the gradients of m paths on the same batch, where m is the
    # most options a decision has and each decision runs each of its options once (a random permutation)
    sampling: str = field(default="uniform", metadata=ADDED_LATER)
    # what ranks the candidates on the held-out batches: top-1 (the paper), or minus the search loss (KD to the
    # stored teacher logits, or cross-entropy on hard labels), which a few hundred images resolve much finer
    # than top-1 (top-1 on 250 images moves in steps of 0.4 points and has a standard error of ~3)
    score: str = field(default="accuracy", metadata=ADDED_LATER)
    # a finished SPOS run directory whose trained supernet this search reuses: no weight training, only the
    # evolution (search/reuse.py; refused unless that run trained under this search's supernet configuration)
    supernet_from: str | None = field(default=None, metadata=ADDED_LATER)
    # re-ranking (rerank.py): the evolution's best rerank_top candidates (0: off) each fine-tuned alone from
    # their inherited weights for rerank_steps steps (cosine from rerank_lr to 0), then scored on every
    # held-out image by rerank_score; the best is the result
    rerank_top: int = field(default=0, metadata=ADDED_LATER)
    rerank_steps: int = field(default=300, metadata=ADDED_LATER)
    rerank_lr: float = field(default=0.005, metadata=ADDED_LATER)
    rerank_score: str = field(default="loss", metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"spos.sampling {self.sampling!r} is not one of {list(SAMPLINGS)}")
        for key in ("score", "rerank_score"):
            if getattr(self, key) not in SCORES:
                raise ConfigError(f"spos.{key} {getattr(self, key)!r} is not one of {list(SCORES)}")
        if self.rerank_top < 0 or self.rerank_steps < 1 or self.rerank_lr <= 0:
            raise ConfigError(f"spos.rerank_top must be >= 0, rerank_steps >= 1 and rerank_lr > 0; got "
                              f"{self.rerank_top}, {self.rerank_steps}, {self.rerank_lr}")
        if self.bn_batches < 1:
            raise ConfigError(f"spos.bn_batches must be >= 1, got {self.bn_batches}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ConfigError(f"spos.eval_batches must be >= 1 or null, got {self.eval_batches}")

    def evolution(self) -> EvolutionConfig:
        return EvolutionConfig(self.population, self.top_k, self.generations, self.mutation_prob, self.max_macs,
                               self.max_tries)


@register_method
class SposMethod(SearchMethod):
    name = "spos"
    config_cls = SposConfig
    needs_held_out = True  # candidates are scored on the held-out split
    default_epochs = 80  # supernet epochs; the evolution runs after them

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options.evolution()  # validate the evolution settings before any training
        self._evo_state: dict[str, Any] | None = None
        self._reranked: list[dict[str, Any]] = []  # re-ranked candidates so far (rerank.py)

    def seed_run(self, out_dir: Path, config_hash: str, identity: dict[str, Any]) -> None:
        if self.options.supernet_from is not None:
            seed_from_supernet(self.options.supernet_from, out_dir, config_hash, identity, self._finalize_state(),
                               supernet_options)

    def before_weight_step(self, ctx: LoopContext) -> None:
        if self.options.sampling == "uniform":
            ctx.model.set_path(self.space.sample(self.generator))

    def weight_paths(self, ctx: LoopContext) -> list[Arch] | None:
        if self.options.sampling == "uniform":
            return None
        return self.space.fair_paths(self.generator)

    def prepare_eval(self, ctx: LoopContext) -> bool:
        return False  # no single architecture to evaluate during supernet training

    def _macs_tables(self) -> tuple[float, dict[str, torch.Tensor]]:
        from dfnas.spaces.flops import cost_tables

        base, costs = cost_tables(self.space)
        return float(base), costs

    def make_evolution(self, ctx: LoopContext) -> Evolution:
        from dfnas.spaces.flops import arch_macs

        base, costs = self._macs_tables()
        min_cost = base + sum(float(c.min()) for c in costs.values())
        evo = Evolution(self.space, self.options.evolution(), make_generator(ctx.seed, "spos", "evolution"),
                        cost=lambda a: arch_macs(base, costs, self.space, a), min_cost=min_cost)
        if self._evo_state is not None:
            evo.load_state_dict(self._evo_state)
        return evo

    def finalize(self, ctx: LoopContext) -> Arch:
        assert ctx.held_out is not None
        o: SposConfig = self.options
        bs = min(ctx.cfg.batch_size, len(ctx.train))
        # a fixed set of centre-cropped training batches, the same for every candidate (fair comparison)
        g_bn = make_generator(ctx.seed, "spos", "bn-batches")
        bn_batches = [x for x, _ in itertools.islice(
            iterate_batches(ctx.train, bs, g_bn, augment=False, device=ctx.device), o.bn_batches)]
        eval_batches = list(itertools.islice(
            iterate_batches(ctx.held_out, ctx.cfg.eval_batch_size, None, augment=False, device=ctx.device),
            o.eval_batches))
        model = ctx.model

        @torch.no_grad()
        def score(arch: Arch) -> float:
            model.set_path(arch)
            recalibrate_bn(model, bn_batches)
            total, n = 0.0, 0  # summed over images: minus the loss, or 100 per correct top-1
            for x, y in eval_batches:
                logits = model(x)  # (B, K)
                if o.score == "loss":
                    total -= float(ctx.criterion(logits, x, y)) * len(x)
                else:
                    total += 100.0 * int((logits.argmax(1) == ctx.criterion.classes(y)).sum())
                n += len(x)
            return total / max(n, 1)

        evo = self.make_evolution(ctx)

        def on_generation(rec: dict[str, Any]) -> None:
            ctx.logger.log(rec, step=rec["generation"])
            self._evo_state = evo.state_dict()
            ctx.save_checkpoint()  # a kill during evolution resumes at the next generation

        best = evo.run(score, on_generation)
        ctx.extra["spos"] = {"best_score": evo.scores[best], "evaluated": len(evo.scores),
                             "evolution": to_dict(o.evolution())}
        if o.rerank_top > 0:
            best = rerank(ctx, evo.ranked()[:o.rerank_top], o.rerank_steps, o.rerank_lr, o.rerank_score,
                          self._reranked, ctx.save_checkpoint)
            ctx.extra["spos"]["rerank"] = list(self._reranked)
        return best

    def _finalize_state(self) -> dict[str, Any]:
        # what ``finalize`` adds to the method's state (the weight training's part is the base class's)
        return {"evolution": self._evo_state, "rerank": list(self._reranked)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._finalize_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._evo_state = state.get("evolution")
        self._reranked = list(state.get("rerank") or [])
