"""ProxylessNAS (Cai et al., ICLR 2019): binarized paths, memory of one path per weight step.

Weight step: per decision, one option is sampled from softmax(alpha); only that path runs (``sampling =
"fair"``: every option of every decision once per step, FairNAS's strict fairness, gradients summed).
Architecture step (held-out batch), the paper's two-path mode:
1. per decision sample two distinct options {i, j} from multinomial(softmax(alpha)), then one of the two as
   active with probabilities p = softmax(alpha_{i,j}) renormalized over the pair;
2. run the supernet with one-hot gates g (1 on the active option) that require grad: ``Choice.weights = g``
   gives dL/dg for every option's output while the output equals the active path's;
3. BinaryConnect-style estimator over the pair: dL/dalpha_a = sum_b dL/dg_b p_b (delta_ab - p_a);
4. Adam step on alpha, then shift alpha_{i,j} by -log(sum_pair exp(new) / sum_pair exp(old)) so the
   options that were not sampled keep their probability.
``estimator = "loss_diff"`` replaces step 2-3's linearization: the held-out loss is measured with each option
of every sampled pair in turn (the other decisions on their active option; 1 + #decisions forward passes, no
backward) and the same Jacobian is applied to those losses: the exact gradient of the expected loss over the
pair. dL/dg_b - dL/dg_a is only a first-order estimate of L_b - L_a and grows with op b's output norm (skip
and pooling pass the node's unnormalized sum); measured on NAS-Bench-201, the exact losses favour those ops
as much, so this bias is not what drives the search to them (benchmarks/results/proxyless_diagnosis_cpu.md).
``derive = "measured"`` replaces the final argmax of alpha: with alpha near uniform after a short search, the
argmax is the estimator's noise even where the trained supernet does rank the options. Each decision's option
is then the one of lowest held-out loss on the trained supernet, averaged over ``derive_paths`` draws of the
other decisions from the distribution the weight steps trained on (uniform for fair paths, softmax(alpha)
otherwise; the same draws for every option of the decision): the expected loss alpha descends, measured instead
of estimated. Options named ``none`` are neither drawn nor derived (as DARTS derives its genotype), so the cell
stays connected. With fair paths alpha then plays no part in the result. Measured on NAS-Bench-201 in
benchmarks/results/proxyless_diagnosis_cpu.md and benchmarks/results/search_quality_cpu.md.
``derive_weights = "averaged"`` measures the ``measured`` derivation's losses on the supernet's weights averaged
over the weight steps from ``average_from`` of the search on (stochastic weight averaging, Izmailov et al., UAI
2018) instead of the last step's: at a few hundred steps the last weights carry the last batches' noise, and
on about one seed in five it tipped the measured ranking of several edges to skip or pooling.
``derive_weights = "both"`` measures on the last and on the averaged weights; where the two cells differ it keeps
the one of lower held-out loss as a whole path on the averaged weights. The per-decision losses are marginals
over random other decisions, so the cell they assemble is not always the better whole: on one seed in thirty the
averaged weights' marginals assembled an all-skip-and-pooling cell that its own weights score worse, as a whole,
than the cell of the last weights.
``max_param_free = M`` reads each cell with at most M parameter-free options (skip, pooling; P-DARTS's cap,
derive.py), before the two weight sets' cells are compared. ``supernet_from = <run directory>``: the supernet of a
finished ProxylessNAS run trained under the same options except the derivation's (``DERIVATION_OPTIONS``) is
read instead of trained again (search/reuse.py).
Optional hardware term on the expected MACs E = base + sum_k softmax(alpha_k) . cost_k (differentiable):
``mul``: L * (E / target)^beta;  ``mul_log``: L * (log E / log target)^beta (the paper's code);
``add``: L + lambda * (E - target) / target.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch

from dfnas.config import ADDED_LATER
from dfnas.data.imageset import iterate_batches
from dfnas.errors import ConfigError
from dfnas.repro import make_generator
from dfnas.search.base import AlphaMethod, Batch, register_method
from dfnas.search.bn import frozen_running_stats
from dfnas.search.loop import LoopContext
from dfnas.search.proxyless.derive import lowest_loss_choices
from dfnas.search.reuse import seed_from_supernet
from dfnas.spaces.base import Arch

FLOPS_LOSSES = ("none", "mul", "mul_log", "add")
ESTIMATORS = ("binary_gate", "loss_diff")
SAMPLINGS = ("alpha", "fair")
DERIVES = ("alpha", "measured")
DERIVE_WEIGHTS = ("final", "averaged", "both")
# the options that act only when the cell is read off the trained supernet (a supernet_from donor may differ in them)
DERIVATION_OPTIONS = ("derive", "derive_paths", "max_param_free", "supernet_from")


def supernet_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ProxylessNAS options that shape the trained supernet (``proxyless.supernet_from`` requires them
    equal); ``derive_weights`` stays: ``averaged`` and ``both`` keep the running mean of the weights."""
    return {k: v for k, v in options.items() if k not in DERIVATION_OPTIONS}


@dataclass
class ProxylessConfig:
    arch_lr: float = 1e-3  # paper: Adam lr 1e-3, betas (0, 0.999), eps 1e-8, no weight decay
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_eps: float = 1e-8
    arch_weight_decay: float = 0.0
    init_std: float = 1e-3
    update_arch_every: int = 1  # paper: every 5 weight steps over 120 epochs; short searches update every step
    # weight-only epochs first, paths sampled uniformly (alpha is ~0). None: the paper's ratio (40 of 120 epochs),
    # i.e. the first third of the planned weight steps. Without it, untrained parametric ops lose to
    # parameter-free ones and the search drifts to skip/pool cells (measured: benchmarks/search_quality).
    warmup_epochs: int | None = None
    flops_loss: Literal["none", "mul", "mul_log", "add"] = "none"
    target_macs: float | None = None  # reference MACs of the hardware term (needed unless flops_loss: none)
    flops_beta: float = 0.3  # exponent of the multiplicative terms
    flops_lambda: float = 0.1  # weight of the additive term
    # binary_gate: the paper's dL/dg; loss_diff: measured held-out losses of the pair's options (see above)
    estimator: Literal["binary_gate", "loss_diff"] = field(default="binary_gate", metadata=ADDED_LATER)
    # alpha: one path per weight step drawn from softmax(alpha) (the paper); fair: FairNAS's strict fairness, every
    # option of every decision trained on each weight step (m paths, gradients summed; DARTS's compute per step)
    sampling: Literal["alpha", "fair"] = field(default="alpha", metadata=ADDED_LATER)
    # alpha: the cell is argmax softmax(alpha) (the paper); measured: each decision's option of lowest held-out
    # loss over derive_paths draws of the other decisions (see the module docstring)
    derive: Literal["alpha", "measured"] = field(default="alpha", metadata=ADDED_LATER)
    derive_paths: int = field(default=10, metadata=ADDED_LATER)
    # final: derive=measured measures on the last step's weights; averaged: on the mean of the weights after
    # each weight step from average_from (a fraction of the search) on; both: on each, the better whole cell
    # (see the module docstring)
    derive_weights: Literal["final", "averaged", "both"] = field(default="final", metadata=ADDED_LATER)
    average_from: float = field(default=0.5, metadata=ADDED_LATER)
    # derive=measured: at most this many parameter-free options (skip, pooling) in each derived cell (None: no cap)
    max_param_free: int | None = field(default=None, metadata=ADDED_LATER)
    # a finished ProxylessNAS run directory whose trained supernet this search derives from (no weight training)
    supernet_from: str | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if self.flops_loss not in FLOPS_LOSSES:
            raise ConfigError(f"proxyless.flops_loss {self.flops_loss!r} is not one of {list(FLOPS_LOSSES)}")
        if self.flops_loss != "none" and (self.target_macs is None or self.target_macs <= 1):
            raise ConfigError(f"proxyless.flops_loss {self.flops_loss!r} needs proxyless.target_macs > 1 "
                              f"(the reference MACs), got {self.target_macs}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"proxyless.estimator {self.estimator!r} is not one of {list(ESTIMATORS)}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"proxyless.sampling {self.sampling!r} is not one of {list(SAMPLINGS)}")
        if self.derive not in DERIVES:
            raise ConfigError(f"proxyless.derive {self.derive!r} is not one of {list(DERIVES)}")
        if self.derive_paths < 1:
            raise ConfigError(f"proxyless.derive_paths must be >= 1, got {self.derive_paths}")
        if self.derive_weights not in DERIVE_WEIGHTS:
            raise ConfigError(f"proxyless.derive_weights {self.derive_weights!r} is not one of "
                              f"{list(DERIVE_WEIGHTS)}")
        if self.derive_weights != "final" and self.derive != "measured":
            raise ConfigError(f"proxyless.derive_weights {self.derive_weights!r} applies to derive 'measured' (the "
                              f"only rule that reads the weights), got derive {self.derive!r}")
        if self.max_param_free is not None and (isinstance(self.max_param_free, bool)
                                                or not isinstance(self.max_param_free, int) or self.max_param_free < 0):
            raise ConfigError(f"proxyless.max_param_free must be an integer >= 0 or null, got {self.max_param_free!r}")
        for key in ("max_param_free", "supernet_from"):
            if getattr(self, key) is not None and self.derive != "measured":
                raise ConfigError(f"proxyless.{key} applies to derive 'measured' (the cell read off the trained "
                                  f"supernet), got derive {self.derive!r}")
        if not 0.0 <= self.average_from < 1.0:
            raise ConfigError(f"proxyless.average_from must lie in [0, 1), got {self.average_from}")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ConfigError(f"proxyless.warmup_epochs must be >= 0 or null, got {self.warmup_epochs}")
        if self.update_arch_every < 1:
            raise ConfigError(f"proxyless.update_arch_every must be >= 1, got {self.update_arch_every}")


def binary_gate_alpha_grad(gate_grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """dL/dalpha over a sampled subset: ``gate_grad`` dL/dg (m,), ``probs`` softmax over the subset (m,).

    Returns (m,): sum_b gate_grad_b * p_b * (delta_ab - p_a).
    """
    jac = torch.diag(probs) - probs[:, None] * probs[None, :]  # (m, m): p_b (delta_ab - p_a), symmetric
    return jac @ gate_grad


def connected_mask(options: list[str]) -> torch.Tensor:
    """(n,) float64 mask of the options other than ``none``, the op that cuts an edge (all of them where nothing
    else is left): what a measured derivation may draw and derive."""
    keep = torch.tensor([o != "none" for o in options], dtype=torch.float64)
    return keep if float(keep.sum()) > 0 else torch.ones(len(options), dtype=torch.float64)


@register_method
class ProxylessMethod(AlphaMethod):
    name = "proxyless"
    config_cls = ProxylessConfig
    needs_held_out = True
    default_epochs = 30

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reset_diagnostics()
        # derive_weights: averaged or both: the running mean of the trained weights (one tensor per parameter the loop
        # trains, in the model's order) over the weight steps counted so far
        self.weight_avg: list[torch.Tensor] | None = None
        self.weight_avg_steps = 0
        dec = self.space.decisions()
        if self.options.max_param_free is not None and not any(
                o in self.space.parameter_free for k in self.space.skip_cap_decisions() for o in dec[k]):
            raise ConfigError(f"proxyless.max_param_free caps parameter-free options, but space "
                              f"{self.space.name!r} has none")

    def seed_run(self, out_dir: Path, config_hash: str, identity: dict[str, Any]) -> None:
        if self.options.supernet_from is not None:
            seed_from_supernet(self.options.supernet_from, out_dir, config_hash, identity, {}, supernet_options)

    def setup(self, ctx: LoopContext) -> None:
        o: ProxylessConfig = self.options
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=o.arch_lr, betas=tuple(o.arch_betas),
                                         eps=o.arch_eps, weight_decay=o.arch_weight_decay)
        self.base_macs = 0.0
        self.costs: dict[str, torch.Tensor] = {}
        from dfnas.spaces.flops import cost_tables

        base, costs = cost_tables(self.space)
        self.base_macs = float(base)
        self.costs = {k: c.to(self.device) for k, c in costs.items()}

    def _reset_diagnostics(self) -> None:
        """Per-epoch counters of why the search moves (logged at epoch ends): per decision and option (n,),
        weight steps on the path (``sampled``), arch steps in the sampled pair (``paired``), and the sums over
        those arch steps of the estimator's signal (``gate_grad``: dL/dg, or the measured loss for ``loss_diff``)
        and of its dL/dalpha (``alpha_grad``)."""
        self.diag = {k: {name: torch.zeros(len(a), dtype=torch.float64)
                         for name in ("sampled", "paired", "gate_grad", "alpha_grad")}
                     for k, a in self.alphas.items()}

    def diagnostics_record(self) -> dict[str, Any]:
        """This epoch's counters per decision: path frequencies, mean dL/dg and summed dL/dalpha per option."""
        out = {}
        for k, d in self.diag.items():
            paired = d["paired"].clamp_min(1)
            out[k] = {"sampled": [int(v) for v in d["sampled"]], "paired": [int(v) for v in d["paired"]],
                      "gate_grad_mean": [round(float(v), 7) for v in d["gate_grad"] / paired],
                      "alpha_grad_sum": [round(float(v), 7) for v in d["alpha_grad"]]}
        return out

    def expected_macs(self, grad: bool = False) -> torch.Tensor:
        """E[MACs] under softmax(alpha) (0-d tensor; differentiable in alpha when ``grad``)."""
        from dfnas.spaces.flops import expected_macs

        probs = {k: torch.softmax(a if grad else a.detach(), 0) for k, a in self.alphas.items()}
        return expected_macs(self.base_macs, self.costs, probs)

    def _hardware_loss(self, loss: torch.Tensor) -> torch.Tensor:
        o: ProxylessConfig = self.options
        if o.flops_loss == "none":
            return loss
        e = self.expected_macs(grad=True)
        t = float(o.target_macs)  # type: ignore[arg-type]
        if o.flops_loss == "mul":
            return loss * (e / t) ** o.flops_beta
        if o.flops_loss == "mul_log":
            return loss * (torch.log(e) / math.log(t)) ** o.flops_beta
        return loss + o.flops_lambda * (e - t) / t

    def _sample_index(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        # multinomial on CPU with the method's generator: reproducible and device independent
        return torch.multinomial(probs.detach().cpu().double(), n, replacement=False, generator=self.generator)

    def sample_path(self) -> Arch:
        """One option per decision drawn from softmax(alpha)."""
        dec = self.space.decisions()
        path = {}
        for k in self.keys:
            i = int(self._sample_index(torch.softmax(self.alphas[k].detach(), 0), 1))
            path[k] = dec[k][i]
            self.diag[k]["sampled"][i] += 1
        return Arch.of(self.space.name, path)

    def wants_arch_step(self, ctx: LoopContext) -> bool:
        o = self.options
        warm = ctx.step >= ctx.total_steps // 3 if o.warmup_epochs is None else ctx.epoch >= o.warmup_epochs
        return warm and (ctx.step + 1) % o.update_arch_every == 0

    def arch_step(self, ctx: LoopContext, held_out: Batch, train: Batch) -> dict[str, float]:
        ctx.model.train()
        pairs: dict[str, torch.Tensor] = {}
        actives: dict[str, int] = {}
        for k in self.keys:
            a = self.alphas[k].detach()
            pair = self._sample_index(torch.softmax(a, 0), 2)  # (2,) distinct option indices
            p2 = torch.softmax(a[pair.to(a.device)], 0)
            actives[k] = int(pair[int(self._sample_index(p2, 1))])
            pairs[k] = pair.to(self.device)
        if self.options.estimator == "loss_diff":
            signal, ce = self._pair_losses(ctx, held_out, pairs, actives)
        else:
            signal, ce = self._gate_grads(ctx, held_out, pairs, actives)
        direct = self.options.flops_loss != "none"
        if direct:  # the hardware term's own gradient through E[MACs] (the loss itself held fixed)
            direct_grads = torch.autograd.grad(self._hardware_loss(ce.detach()), self.arch_parameters())
        old_lse = {}
        for i, k in enumerate(self.keys):
            pair, a = pairs[k], self.alphas[k]
            g_alpha = direct_grads[i].clone() if direct else torch.zeros_like(a)
            p2 = torch.softmax(a.detach()[pair], 0)
            g_alpha[pair] += binary_gate_alpha_grad(signal[k], p2)
            a.grad = g_alpha
            d, cpu_pair = self.diag[k], pair.cpu()
            d["paired"][cpu_pair] += 1
            d["gate_grad"][cpu_pair] += signal[k].detach().double().cpu()
            d["alpha_grad"] += g_alpha.detach().double().cpu()
            old_lse[k] = torch.logsumexp(a.detach()[pair], 0)
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # keep the unsampled options' probabilities: restore the pair's total mass
            for k in self.keys:
                pair, a = pairs[k], self.alphas[k]
                a[pair] -= torch.logsumexp(a[pair], 0) - old_lse[k]
        rec = {"arch_loss": float(ce.detach())}
        if direct:
            rec["expected_macs"] = float(self.expected_macs())
        return rec

    def _gate_grads(self, ctx: LoopContext, held_out: Batch, pairs: dict[str, torch.Tensor],
                    actives: dict[str, int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The paper's signal: dL/dg over each pair (2,) from one pass with one-hot gates that require grad
        (only the two sampled paths run), and the held-out loss of the active path."""
        gates = {}
        for k in self.keys:
            g = torch.zeros(len(self.alphas[k]), device=self.device)
            g[actives[k]] = 1.0
            gates[k] = g.requires_grad_(True)
        ctx.model.set_weights(gates, {k: [int(i) for i in pairs[k]] for k in self.keys})
        x, y = held_out
        ce = ctx.criterion(ctx.model(x), x, y)
        grads = torch.autograd.grad(self._hardware_loss(ce), [gates[k] for k in self.keys])
        return {k: g[pairs[k]] for k, g in zip(self.keys, grads, strict=True)}, ce

    @torch.no_grad()
    def _pair_losses(self, ctx: LoopContext, held_out: Batch, pairs: dict[str, torch.Tensor],
                     actives: dict[str, int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Measured signal: the held-out loss with each option of every pair (2,), the other decisions on
        their active option, and the loss of the all-active path."""
        dec = self.space.decisions()
        x, y = held_out

        def loss_of(choice: dict[str, int]) -> torch.Tensor:
            ctx.model.set_path(Arch.of(self.space.name, {k: dec[k][i] for k, i in choice.items()}))
            return ctx.criterion(ctx.model(x), x, y)

        ce = loss_of(actives)  # updates BN running statistics once, as the paper's single pass does
        base = self._hardware_loss(ce)
        out = {}
        with frozen_running_stats(ctx.model):
            for k in self.keys:
                out[k] = torch.stack([base if int(i) == actives[k] else
                                      self._hardware_loss(loss_of({**actives, k: int(i)})) for i in pairs[k]])
        return out, ce

    def before_weight_step(self, ctx: LoopContext) -> None:
        if self.options.sampling == "alpha":
            ctx.model.set_path(self.sample_path())

    def after_weight_step(self, ctx: LoopContext) -> None:
        o: ProxylessConfig = self.options
        if o.derive_weights == "final" or ctx.step <= int(o.average_from * ctx.total_steps):
            return
        self.weight_avg_steps += 1
        n = self.weight_avg_steps
        with torch.no_grad():
            trained = [p.detach() for p in ctx.model.parameters() if p.requires_grad]
            if self.weight_avg is None:
                self.weight_avg = [p.clone() for p in trained]
            else:
                for avg, p in zip(self.weight_avg, trained, strict=True):
                    avg.mul_((n - 1) / n).add_(p, alpha=1 / n)

    @contextmanager
    def _averaged_weights(self, model: torch.nn.Module) -> Iterator[None]:
        """The model's trained parameters replaced by their running mean for the block, restored after it."""
        trained = [p for p in model.parameters() if p.requires_grad]
        if self.weight_avg is None:
            raise ConfigError(f"proxyless.derive_weights {self.options.derive_weights!r}: no weight step was "
                              "averaged")
        saved = [p.detach().clone() for p in trained]
        with torch.no_grad():
            for p, avg in zip(trained, self.weight_avg, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(trained, saved, strict=True):
                    p.copy_(s)

    def weight_paths(self, ctx: LoopContext) -> list[Arch] | None:
        if self.options.sampling == "alpha":
            return None
        paths = self.space.fair_paths(self.generator)
        dec = self.space.decisions()
        for k in self.keys:  # every option once (cycled where a decision has fewer): count what ran
            for p in paths:
                self.diag[k]["sampled"][dec[k].index(p.as_dict()[k])] += 1
        return paths

    def prepare_eval(self, ctx: LoopContext) -> bool:
        ctx.model.set_path(self.current_arch())
        return True

    def finalize(self, ctx: LoopContext) -> Arch:
        if self.options.derive == "alpha":
            return super().finalize(ctx)
        mode = self.options.derive_weights
        weights = ["final", "averaged"] if mode == "both" else [mode]
        losses = {w: self._measured_on(ctx, w) for w in weights}  # inf for the options never derived
        if mode != "final":
            ctx.extra["derive_averaged_steps"] = self.weight_avg_steps
        for w in weights:  # derive_losses: the one weight set's (averaged with both); derive_losses_final beside
            key = "derive_losses_final" if (mode, w) == ("both", "final") else "derive_losses"
            ctx.extra[key] = {k: [round(float(v), 6) if math.isfinite(v) else None for v in loss]
                              for k, loss in losses[w].items()}  # None: never derived (``none``)
        cells = {w: self._read_cell(ctx, losses[w], w) for w in weights}
        if len({str(a) for a in cells.values()}) == 1:
            return cells[weights[0]]
        # both, and they differ: each cell scored whole on the averaged weights (the last weights win a tie)
        with self._averaged_weights(ctx.model):
            whole = {w: self.path_loss(ctx, cells[w]) for w in weights}
        ctx.extra["derive_cells"] = {w: {"arch": str(cells[w]), "held_out_loss_averaged": round(whole[w], 6)}
                                     for w in weights}
        return cells[min(weights, key=lambda w: whole[w])]

    def _read_cell(self, ctx: LoopContext, losses: dict[str, torch.Tensor], weights: str) -> Arch:
        """The cell of lowest measured loss per decision, capped by ``max_param_free``; where the cap changes it,
        the uncapped cell goes to ``derive_uncapped[weights]`` in the result."""
        dec, cap = self.space.decisions(), self.options.max_param_free
        uncapped = Arch.of(self.space.name, lowest_loss_choices(losses, dec))
        if cap is None:
            return uncapped
        cell = Arch.of(self.space.name, lowest_loss_choices(losses, dec, cap, self.space.parameter_free,
                                                            self.space.skip_cap_decisions()))
        if str(uncapped) != str(cell):
            ctx.extra.setdefault("derive_uncapped", {})[weights] = str(uncapped)
        return cell

    def _measured_on(self, ctx: LoopContext, weights: str) -> dict[str, torch.Tensor]:
        """``measured_losses`` on the last (``final``) or the ``averaged`` weights."""
        with self._averaged_weights(ctx.model) if weights == "averaged" else nullcontext():
            return self.measured_losses(ctx)

    def _derive_batches(self, ctx: LoopContext) -> tuple[list[Batch], int]:
        """The held-out batches the derivation measures on (the loop's evaluation size, no augmentation), and
        their number of images."""
        if ctx.held_out is None:
            raise ConfigError("proxyless.derive 'measured' needs a held-out split (set held_out > 0)")
        cap = ctx.cfg.eval_max_batches or None  # the loop's held-out evaluation size (0 or None: every batch)
        batches = list(islice(iterate_batches(ctx.held_out, ctx.cfg.eval_batch_size, None, augment=False,
                                              device=ctx.device), cap))
        return batches, sum(len(x) for x, _ in batches)

    @torch.no_grad()
    def path_loss(self, ctx: LoopContext, arch: Arch) -> float:
        """Held-out loss of the supernet on the single path ``arch``, measured as ``measured_losses`` measures
        each option (the same batches, train-mode BatchNorm, running statistics untouched)."""
        batches, n = self._derive_batches(ctx)
        ctx.model.train()
        with frozen_running_stats(ctx.model):
            return self._held_out_loss(ctx, arch, batches, n)

    @staticmethod
    def _held_out_loss(ctx: LoopContext, arch: Arch, batches: list[Batch], n: int) -> float:
        """Mean loss of the supernet's path ``arch`` over ``batches`` (``n`` images in all)."""
        ctx.model.set_path(arch)
        return sum(float(ctx.criterion(ctx.model(x), x, y)) * len(x) for x, y in batches) / n

    @torch.no_grad()
    def measured_losses(self, ctx: LoopContext) -> dict[str, torch.Tensor]:
        """Per decision (n,): the trained supernet's held-out loss with each option (inf for ``none``), averaged
        over ``derive_paths`` draws of the other decisions (uniform for fair weight paths, else softmax(alpha);
        never ``none``; the same draws for every option); train-mode BatchNorm on the held-out batches as in an
        architecture step, running statistics untouched. Deterministic for the run's seed (also when a killed
        run finalizes again)."""
        batches, n = self._derive_batches(ctx)
        dec = self.space.decisions()
        fair = self.options.sampling == "fair"
        keep = {k: connected_mask(dec[k]) for k in self.keys}  # (n,) the options drawn and derived
        draw = {k: keep[k] * (1.0 if fair else torch.softmax(self.alphas[k].detach().cpu().double(), 0))
                for k in self.keys}  # (n,) unnormalized probabilities of the options the other decisions take
        gen = make_generator(ctx.seed, "proxyless", "derive")
        out = {}
        ctx.model.train()
        with frozen_running_stats(ctx.model):
            for k in self.keys:
                total = torch.where(keep[k] > 0, 0.0, math.inf)
                for _ in range(self.options.derive_paths):
                    rest = {q: dec[q][int(torch.multinomial(draw[q], 1, generator=gen))] for q in self.keys}
                    for j, option in enumerate(dec[k]):
                        if keep[k][j] > 0:
                            total[j] += self._held_out_loss(ctx, Arch.of(self.space.name, {**rest, k: option}),
                                                            batches, n)
                out[k] = total / self.options.derive_paths
        return out

    def epoch_end(self, ctx: LoopContext) -> dict[str, Any]:
        rec = {**self.alpha_record(), "expected_macs": float(self.expected_macs()), "paths": self.diagnostics_record()}
        self._reset_diagnostics()
        return rec

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "arch_opt": self.arch_opt.state_dict(),
                "diag": {k: {n: v.clone() for n, v in d.items()} for k, d in self.diag.items()},
                "weight_avg": None if self.weight_avg is None else [a.cpu().clone() for a in self.weight_avg],
                "weight_avg_steps": self.weight_avg_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.arch_opt.load_state_dict(state["arch_opt"])
        if "diag" in state:  # checkpoints written before the counters existed start them afresh
            self.diag = {k: {n: v.clone() for n, v in d.items()} for k, d in state["diag"].items()}
        if state.get("weight_avg") is not None:
            self.weight_avg = [a.to(self.device).clone() for a in state["weight_avg"]]
        self.weight_avg_steps = int(state.get("weight_avg_steps", 0))
