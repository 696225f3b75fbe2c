"""Architecture search: one shared training loop, methods (DARTS, ProxylessNAS, SPOS, fixed), ``run_search``.

Importing this package registers every method in ``SEARCH_METHODS``.
"""

from dfnas.search import fixed  # noqa: F401  (registers "fixed")
from dfnas.search.api import DEFAULT_EPOCHS, SearchConfig, SearchResult, make_space, run_search
from dfnas.search.base import SEARCH_METHODS, AlphaMethod, SearchMethod, build_method, get_method_cls
from dfnas.search.darts import DartsConfig, DartsMethod
from dfnas.search.loop import LoopConfig, LoopContext, LoopInterrupted, evaluate_loss_acc, run_loop
from dfnas.search.losses import Criterion, kd_loss, soft_cross_entropy
from dfnas.search.proxyless import ProxylessConfig, ProxylessMethod
from dfnas.search.spos import Evolution, EvolutionConfig, SposConfig, SposMethod
from dfnas.search.zerocost import ZeroCostConfig, ZeroCostMethod

__all__ = [
    "DEFAULT_EPOCHS", "SEARCH_METHODS", "AlphaMethod", "Criterion", "DartsConfig", "DartsMethod",
    "Evolution",
    "EvolutionConfig", "LoopConfig", "LoopContext", "LoopInterrupted", "ProxylessConfig", "ProxylessMethod",
    "SearchConfig", "SearchMethod", "SearchResult", "SposConfig", "SposMethod", "build_method",
    "evaluate_loss_acc", "get_method_cls", "kd_loss", "make_space", "run_search", "run_loop",
    "soft_cross_entropy", "ZeroCostConfig", "ZeroCostMethod",
]
