"""``fixed``: no architecture parameters; the loop trains the plain network of a given architecture.

This is how ``dfnas.train`` trains a found architecture from scratch with the very loop the searches use.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dfnas.errors import ConfigError
from dfnas.search.base import SearchMethod, register_method
from dfnas.spaces.base import Arch


@dataclass
class FixedConfig:
    """The architecture to train (an ``Arch`` or its JSON form)."""

    arch: Arch | dict | None = None


@register_method
class FixedMethod(SearchMethod):
    name = "fixed"
    config_cls = FixedConfig

    def _arch(self) -> Arch:
        a = self.options.arch
        if a is None:
            raise ConfigError("method 'fixed' needs an architecture (fixed.arch)")
        arch = a if isinstance(a, Arch) else Arch.from_json(a)
        check = getattr(self.space, "check", self.space.validate)
        check(arch)
        return arch

    def build_model(self) -> nn.Module:
        return self.space.build_network(self._arch())

    def current_arch(self) -> Arch:
        return self._arch()
