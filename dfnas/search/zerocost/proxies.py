"""Zero-cost proxies: score an untrained network in one or a few forward/backward passes.

Each proxy maps (freshly initialized network, batch of images, class labels) to one number; higher means
"predicted to train to a better accuracy". Formulas (from the papers, not from their code):

- ``naswot`` (Mellor et al., ICML 2021): for a batch of B images, every ReLU unit gives each image a binary
  code (unit active or not). K_H[i, j] = number of units on which images i and j agree; score = log|det K_H|.
  Networks that separate the images into more distinct activation patterns score higher.
- ``synflow`` (Tanaka et al. 2020, as a NAS proxy in Abdelfattah et al., ICLR 2021): replace every weight by
  its absolute value, drop BatchNorm, work in float64, feed one all-ones input, R = sum of the outputs;
  score = sum over Conv/Linear weights of |theta * dR/dtheta|. Data-independent.
- ``jacob_cov`` (Mellor et al., arXiv v1 2020): J = input gradients of the summed outputs, one row per
  image; C = correlation matrix of the rows (B, B) with eigenvalues v; score = -sum(log(v + k) + 1 / (v + k)),
  k = 1e-5. Images whose gradients are less correlated score higher.
- ``snip`` (Lee et al. 2019): sum over Conv/Linear weights of |theta * dL/dtheta|, L = cross-entropy on the batch.
- ``grad_norm``: sum over Conv/Linear layers of the Frobenius norm of dL/dW.
- ``params``, ``flops``: parameter count and MACs ("FLOPs" in the NAS literature, see ``dfnas.spaces.flops``).

A proxy never modifies the network it is given (synflow works on a copy), and every pass runs in train mode
(BatchNorm on batch statistics), as the papers score freshly initialized networks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dfnas.errors import DfnasError
from dfnas.registry import Registry

_WEIGHTED = (nn.Conv2d, nn.Linear)  # the layers whose weights the gradient proxies sum over (as the papers)
_RELUS = (nn.ReLU, nn.ReLU6)  # activations whose on/off pattern NASWOT reads (ReLU6: on = input > 0)
JACOB_COV_K = 1e-5  # the constant of the jacob_cov score (Mellor et al. v1)


class ZeroCostProxy:
    """One proxy: ``score(net, x, y)`` for a network, images (B, C, S, S) and class indices (B,)."""

    name: ClassVar[str] = ""
    uses_data: ClassVar[bool] = True  # False: the score depends only on the network (and the input shape)
    min_batch: ClassVar[int] = 1  # fewest images per batch the score is defined for

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        raise NotImplementedError


ZERO_COST_PROXIES: Registry[type[ZeroCostProxy]] = Registry("zero-cost proxy")


def register_proxy(cls: type[ZeroCostProxy]) -> type[ZeroCostProxy]:
    """Class decorator: register a proxy under ``cls.name``."""
    ZERO_COST_PROXIES.register(cls.name)(lambda: cls)
    return cls


def build_proxy(name: str) -> ZeroCostProxy:
    """An instance of proxy ``name`` (ConfigError listing the proxies for an unknown name)."""
    return ZERO_COST_PROXIES.get(name)()()


def proxy_names() -> list[str]:
    return ZERO_COST_PROXIES.names()


def _weighted_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, _WEIGHTED)]


def _loss_gradients(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dL/dweight) of every Conv/Linear layer, L = mean cross-entropy of ``net(x)`` against ``y``.

    Runs on a copy so the caller's network keeps no gradients and no updated BatchNorm statistics.
    """
    net = copy.deepcopy(net).train()
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y.long()).backward()
    return [(m.weight.detach(), m.weight.grad.detach()) for m in _weighted_layers(net) if m.weight.grad is not None]


def _replace_modules(net: nn.Module, match: Callable[[nn.Module], bool], make: Callable[[], nn.Module]) -> None:
    """Replace, in place, every submodule for which ``match`` holds by ``make()``."""
    for name, m in list(net.named_modules()):
        if name and match(m):
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, make())


@register_proxy
class NaswotProxy(ZeroCostProxy):
    name = "naswot"
    min_batch = 2

    @torch.no_grad()
    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        b = len(x)
        k = torch.zeros(b, b, dtype=torch.float64, device=x.device)  # K_H, accumulated over every ReLU call
        calls = 0

        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:  # before the op: in-place ReLUs are safe
            nonlocal k, calls
            c = (inp[0] > 0).flatten(1).float()  # (B, units) binary codes; float32 counts are exact < 2**24
            agree = c @ c.T + (1 - c) @ (1 - c).T  # (B, B): units on which image i and image j agree
            k += agree.double()
            calls += 1

        handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, _RELUS)]
        was = net.training
        try:
            net.train()
            net(x)
        finally:
            for h in handles:
                h.remove()
            net.train(was)
        if calls == 0:
            raise DfnasError(f"proxy 'naswot' needs ReLU activations, and this network ({type(net).__name__}) "
                             "has none; choose another proxy")
        return float(torch.linalg.slogdet(k).logabsdet)  # -inf when two images share every code


@register_proxy
class SynflowProxy(ZeroCostProxy):
    name = "synflow"
    uses_data = False

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        net = copy.deepcopy(net)
        # BatchNorm off (on one all-ones image it would zero everything); ReLU6 -> ReLU, since with positive
        # weights and inputs every activation is positive and saturation at 6 would cut the flow
        _replace_modules(net, lambda m: isinstance(m, nn.modules.batchnorm._BatchNorm), nn.Identity)
        _replace_modules(net, lambda m: isinstance(m, nn.ReLU6), nn.ReLU)
        net = net.double().train()
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        net.zero_grad(set_to_none=True)
        ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)  # (1, C, S, S)
        net(ones).sum().backward()
        with torch.no_grad():
            total = sum(float((m.weight * m.weight.grad).abs().sum()) for m in _weighted_layers(net)
                        if m.weight.grad is not None)
        return float(total)


@register_proxy
class JacobCovProxy(ZeroCostProxy):
    name = "jacob_cov"
    min_batch = 2

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        net = copy.deepcopy(net).train()
        xg = x.detach().clone().requires_grad_(True)
        out = net(xg)  # (B, K)
        out.backward(torch.ones_like(out))  # row i of J = d(sum_k out[i, k]) / d x[i]: images do not mix
        assert xg.grad is not None
        j = xg.grad.flatten(1).double()  # (B, C*S*S)
        if bool((j.std(dim=1) == 0).any()):
            return -math.inf  # an image the output does not depend on: no correlation defined, worst score
        ev = torch.linalg.eigvalsh(torch.corrcoef(j))  # (B,) real: the correlation matrix is symmetric
        return float(-(torch.log(ev + JACOB_COV_K) + 1.0 / (ev + JACOB_COV_K)).sum())


@register_proxy
class SnipProxy(ZeroCostProxy):
    name = "snip"

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(sum(float((w * g).abs().sum()) for w, g in _loss_gradients(net, x, y)))


@register_proxy
class GradNormProxy(ZeroCostProxy):
    name = "grad_norm"

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(sum(float(g.norm()) for _, g in _loss_gradients(net, x, y)))


@register_proxy
class ParamsProxy(ZeroCostProxy):
    name = "params"
    uses_data = False

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        from dfnas.spaces.flops import count_params

        return float(count_params(net))


@register_proxy
class FlopsProxy(ZeroCostProxy):
    name = "flops"
    uses_data = False

    def score(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        from dfnas.spaces.flops import count_macs

        return float(count_macs(net, int(x.shape[-1]), int(x.shape[1])))
