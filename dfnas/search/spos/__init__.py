"""SPOS: uniform single-path supernet training, then constrained evolutionary search."""

from dfnas.search.spos.evolution import Evolution, EvolutionConfig
from dfnas.search.spos.method import SposConfig, SposMethod

__all__ = ["Evolution", "EvolutionConfig", "SposConfig", "SposMethod"]
