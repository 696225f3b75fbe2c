"""DARTS (Liu et al., ICLR 2019): continuous relaxation, softmax(alpha)-weighted sum of every option.

Weight step: every Choice computes sum_i softmax(alpha)_i * op_i(x) (alpha fixed). Architecture step, on a
held-out batch, before each weight step, with Adam(3e-4, betas (0.5, 0.999), weight decay 1e-3):
- first order: d L_val(w, alpha) / d alpha;
- second order: d L_val(w', alpha) / d alpha with the unrolled weights w' = w - xi (m + dL_train/dw + wd w)
  (xi = the current weight learning rate, m = the SGD momentum buffer), whose implicit term
  -xi * d2 L_train / (d alpha d w) . dL_val/dw' is a finite-difference Hessian-vector product:
  (dL_train(w+)/d alpha - dL_train(w-)/d alpha) / (2 eps), w+- = w +- eps v, eps = r / ||v||.
Derivation: ``space.derive(softmax weights)`` (argmax per decision; top-2 edges in the DARTS space).
With ``max_skip`` (P-DARTS, Chen et al., ICCV 2019, who keep at most M = 2 skip connections in the DARTS normal
cell): while the derived architecture holds more than ``max_skip`` ``skip_connect`` options, the chosen skip
with the lowest softmax weight is ruled out on its decision and the architecture is derived again, so that
decision takes its next-best op. It counts the decisions of ``space.skip_cap_decisions()``: every decision
of NAS-Bench-201, the normal cell's edges in the DARTS space (as P-DARTS).
It changes only the derivation, so the supernet and alpha follow the same trajectory with or without it.

Collapse remedies (DARTS drifts to parameter-free ops, ending at all-skip cells on NAS-Bench-201):
- ``beta`` (beta-DARTS, Ye et al., CVPR 2022): add lambda * mean_k logsumexp(alpha_k) to the architecture
  loss, lambda rising linearly from 0 to ``beta_lambda`` over the search (their NB201 code reaches ~25);
- ``sdarts_rs`` (SDARTS-RS, Chen & Hsieh, ICML 2020): in weight steps add U(-eps, eps) noise to the softmax
  weights (clipped to [0, 1], renormalized), eps rising linearly from ``sdarts_eps_min`` to ``sdarts_eps``;
- ``drnas`` (DrNAS, Chen et al., ICLR 2021): the mixing weights are a sample of Dirichlet(elu(alpha) + 1),
  drawn afresh for every weight and architecture step and differentiated pathwise; the architecture loss adds
  ``drnas_reg`` * KL(Dirichlet(elu(alpha) + 1) || Dirichlet(1)) per decision (their default 1e-3), and
  held-out evaluation uses the Dirichlet mean. First order only (a second-order finite difference needs the
  same weights in each of its passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from dfnas.config import ADDED_LATER
from dfnas.errors import ConfigError
from dfnas.search.base import AlphaMethod, Batch, register_method
from dfnas.search.loop import LoopContext
from dfnas.spaces.base import Arch

REMEDIES = ("none", "beta", "sdarts_rs", "drnas")
SKIP = "skip_connect"  # the op max_skip counts (the NB201 and DARTS spaces' name for the identity edge)


@dataclass
class DartsConfig:
    order: Literal["first", "second"] = "first"
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    init_std: float = 1e-3  # alpha ~ N(0, init_std^2)
    remedy: Literal["none", "beta", "sdarts_rs", "drnas"] = "none"
    beta_lambda: float = 25.0  # final weight of the beta-decay term (linear ramp from 0)
    sdarts_eps_min: float = 0.03
    sdarts_eps: float = 0.3  # final noise amplitude on softmax weights
    drnas_reg: float = field(default=1e-3, metadata=ADDED_LATER)  # weight of the KL term to Dirichlet(1)
    hessian_r: float = 0.01  # finite-difference step: eps = hessian_r / ||dL_val/dw'||
    warmup_epochs: int = 0  # weight-only epochs before architecture steps start
    # P-DARTS's cap on skip connections in the derived architecture (None: no cap)
    max_skip: int | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if self.remedy not in REMEDIES:
            raise ConfigError(f"darts.remedy {self.remedy!r} is not one of {list(REMEDIES)}")
        if self.order not in ("first", "second"):
            raise ConfigError(f"darts.order must be 'first' or 'second', got {self.order!r}")
        if not 0 <= self.drnas_reg < float("inf"):
            raise ConfigError(f"darts.drnas_reg must be a finite number >= 0, got {self.drnas_reg}")
        if self.max_skip is not None and (isinstance(self.max_skip, bool) or not isinstance(self.max_skip, int)
                                          or self.max_skip < 0):
            raise ConfigError(f"darts.max_skip must be an integer >= 0 or null, got {self.max_skip!r}")
        if self.remedy == "drnas" and self.order == "second":
            raise ConfigError("darts.remedy 'drnas' samples new mixing weights at every pass and needs "
                              "darts.order 'first'")


@register_method
class DartsMethod(AlphaMethod):
    name = "darts"
    config_cls = DartsConfig
    needs_held_out = True
    default_epochs = 10

    def __init__(self, space: Any, options: Any, generator: torch.Generator, device: torch.device) -> None:
        super().__init__(space, options, generator, device)
        dec = space.decisions()
        if self.options.max_skip is not None and not any(SKIP in dec[k] for k in space.skip_cap_decisions()):
            raise ConfigError(f"darts.max_skip caps {SKIP!r} options, but space {space.name!r} has none "
                              f"(its options: {sorted({o for v in dec.values() for o in v})})")

    def current_arch(self) -> Arch:
        """The space's derivation of alpha, with at most ``max_skip`` skip connections when that is set."""
        arch = super().current_arch()  # the space's own derivation
        if self.options.max_skip is None:
            return arch
        logits = {k: a.detach().clone() for k, a in self.alphas.items()}  # edited below: skips ruled out
        decisions = self.space.decisions()
        # a decision whose only option is a skip (a restricted space) keeps it: there is nothing to fall back to
        counted = set(self.space.skip_cap_decisions())
        removable = [k for k in self.keys if k in counted and SKIP in decisions[k] and len(decisions[k]) > 1]
        skip_weight = {k: float(torch.softmax(logits[k], 0)[decisions[k].index(SKIP)]) for k in removable}
        while True:
            chosen = arch.as_dict()
            skips = [k for k in removable if chosen[k] == SKIP]
            if sum(chosen[k] == SKIP for k in counted) <= self.options.max_skip or not skips:
                return arch
            # rule out the weakest chosen skip (lowest softmax weight on its own decision), then derive again
            weakest = min(skips, key=skip_weight.__getitem__)
            logits[weakest][decisions[weakest].index(SKIP)] = -float("inf")
            removable.remove(weakest)
            arch = self.space.derive(logits)

    def finalize(self, ctx: LoopContext) -> Arch:
        """The derived architecture; with ``max_skip`` the result also records the uncapped derivation of the
        same alpha (``darts.arch_uncapped``), the cell the search gives without the cap."""
        arch = self.current_arch()
        if self.options.max_skip is not None:
            ctx.extra["darts"] = {"arch_uncapped": str(super().current_arch())}
        return arch

    def setup(self, ctx: LoopContext) -> None:
        o: DartsConfig = self.options
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=o.arch_lr, betas=tuple(o.arch_betas),
                                         weight_decay=o.arch_weight_decay)

    def _progress(self, ctx: LoopContext) -> float:
        return min(1.0, ctx.step / max(1, ctx.total_steps))

    def _weights(self, grad: bool) -> dict[str, torch.Tensor]:
        """Mixing weights per decision: softmax(alpha), or with DrNAS a Dirichlet sample (differentiable)."""
        if self.options.remedy == "drnas":
            return {k: self._dirichlet_sample(a if grad else a.detach()) for k, a in self.alphas.items()}
        return {k: torch.softmax(a if grad else a.detach(), 0) for k, a in self.alphas.items()}

    def _dirichlet_sample(self, alpha: torch.Tensor) -> torch.Tensor:
        """A pathwise-differentiable sample of Dirichlet(elu(alpha) + 1) (n,). torch's sampler takes no
        generator, so the global CPU generator is forked and seeded from the method's own (reproducible,
        and nothing outside changes); drawn on CPU so the values do not depend on the device."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            w = torch.distributions.Dirichlet(self._concentration(alpha.cpu())).rsample()
        return w.to(alpha.device)

    @staticmethod
    def _concentration(alpha: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.elu(alpha) + 1.0

    def _regularizer(self, ctx: LoopContext) -> torch.Tensor | None:
        if self.options.remedy == "drnas":
            dists = [torch.distributions.Dirichlet(self._concentration(a)) for a in self.alphas.values()]
            kl = [torch.distributions.kl_divergence(d, torch.distributions.Dirichlet(torch.ones_like(d.concentration)))
                  for d in dists]
            return self.options.drnas_reg * torch.stack(kl).sum()
        if self.options.remedy != "beta":
            return None
        # beta-decay: mean over decisions of logsumexp(alpha_k), weight ramping linearly with progress
        lam = self.options.beta_lambda * self._progress(ctx)
        return lam * torch.stack([torch.logsumexp(a, 0) for a in self.alphas.values()]).mean()

    def wants_arch_step(self, ctx: LoopContext) -> bool:
        return ctx.epoch >= self.options.warmup_epochs

    def _loss(self, ctx: LoopContext, batch: Batch) -> torch.Tensor:
        x, y = batch
        return ctx.criterion(ctx.model(x), x, y)

    def arch_step(self, ctx: LoopContext, held_out: Batch, train: Batch) -> dict[str, float]:
        ctx.model.train()
        alphas = self.arch_parameters()
        if self.options.order == "second":
            grads, val_loss = self._second_order_grads(ctx, held_out, train)
        else:
            ctx.model.set_weights(self._weights(grad=True))
            val_loss = self._loss(ctx, held_out)
            reg = self._regularizer(ctx)
            total = val_loss if reg is None else val_loss + reg
            # autograd.grad (not backward) leaves the network weights' .grad untouched
            grads = list(torch.autograd.grad(total, alphas))
        for a, g in zip(alphas, grads, strict=True):
            a.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        return {"arch_loss": float(val_loss.detach())}

    def _second_order_grads(self, ctx: LoopContext, held_out: Batch, train: Batch
                            ) -> tuple[list[torch.Tensor], torch.Tensor]:
        model, opt = ctx.model, ctx.optimizer
        alphas = self.arch_parameters()
        params = [p for g in opt.param_groups for p in g["params"]]
        xi = ctx.lr
        mom = opt.param_groups[0]["momentum"]
        wd = opt.param_groups[0]["weight_decay"]
        w0 = [p.detach().clone() for p in params]
        # the extra forwards must not change BN running statistics: restore all buffers afterwards
        bufs = [b.detach().clone() for b in model.buffers()]

        def grads_of(loss: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
            gs = torch.autograd.grad(loss, wrt, allow_unused=True)
            return [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, gs, strict=True)]

        # 1) unrolled weights w' = w - xi * (momentum * buf + dL_train/dw + wd * w), alpha held fixed
        model.set_weights(self._weights(grad=False))
        g_train = grads_of(self._loss(ctx, train), params)
        with torch.no_grad():
            for p, g in zip(params, g_train, strict=True):
                buf = opt.state.get(p, {}).get("momentum_buffer")
                step = g + wd * p if buf is None else mom * buf + g + wd * p
                p.sub_(xi * step)
        # 2) validation loss at w': gradients w.r.t. alpha (direct term) and w' (vector v)
        model.set_weights(self._weights(grad=True))
        val_loss = self._loss(ctx, held_out)
        reg = self._regularizer(ctx)
        g_all = grads_of(val_loss if reg is None else val_loss + reg, alphas + params)
        d_alpha, v = g_all[:len(alphas)], g_all[len(alphas):]
        # 3) finite-difference Hessian-vector product around the original w
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        eps = self.options.hessian_r / max(float(norm), 1e-12)
        hv: list[list[torch.Tensor]] = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, p0, t in zip(params, w0, v, strict=True):
                    p.copy_(p0 + sign * eps * t)
            model.set_weights(self._weights(grad=True))  # a fresh softmax graph for each backward
            hv.append(grads_of(self._loss(ctx, train), alphas))
        with torch.no_grad():
            for p, p0 in zip(params, w0, strict=True):
                p.copy_(p0)
            for b, b0 in zip(model.buffers(), bufs, strict=True):
                b.copy_(b0)
        grads = [da - xi * (gp - gn) / (2 * eps) for da, gp, gn in zip(d_alpha, hv[0], hv[1], strict=True)]
        return grads, val_loss

    def before_weight_step(self, ctx: LoopContext) -> None:
        w = self._weights(grad=False)
        if self.options.remedy == "sdarts_rs":
            o = self.options
            eps = o.sdarts_eps_min + (o.sdarts_eps - o.sdarts_eps_min) * self._progress(ctx)
            w = {k: self._perturb(p, eps) for k, p in w.items()}
        ctx.model.set_weights(w)

    def _perturb(self, p: torch.Tensor, eps: float) -> torch.Tensor:
        """softmax weights (n,) + U(-eps, eps), clipped to [0, 1] and renormalized (argmax kept if all 0)."""
        noise = (torch.rand(p.shape, generator=self.generator) * 2 - 1) * eps  # drawn on CPU, reproducible
        q = (p + noise.to(p.device)).clamp(0.0, 1.0)
        if float(q.sum()) == 0.0:
            q = torch.zeros_like(q)
            q[int(p.argmax())] = 1.0
        return q / q.sum()

    def prepare_eval(self, ctx: LoopContext) -> bool:
        drnas = self.options.remedy == "drnas"  # DrNAS evaluates at the Dirichlet mean, not at a random draw
        ctx.model.set_weights(self._dirichlet_means() if drnas else self._weights(grad=False))
        return True

    def _dirichlet_means(self) -> dict[str, torch.Tensor]:
        conc = {k: self._concentration(a.detach()) for k, a in self.alphas.items()}
        return {k: c / c.sum() for k, c in conc.items()}

    def epoch_end(self, ctx: LoopContext) -> dict[str, Any]:
        return self.alpha_record()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "arch_opt": self.arch_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.arch_opt.load_state_dict(state["arch_opt"])

