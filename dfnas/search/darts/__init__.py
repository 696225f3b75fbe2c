"""DARTS: differentiable architecture search (first/second order, beta-decay and SDARTS-RS remedies)."""

from dfnas.search.darts.method import DartsConfig, DartsMethod

__all__ = ["DartsConfig", "DartsMethod"]
