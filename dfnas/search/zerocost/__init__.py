"""Training-free search with zero-cost proxies (NASWOT, synflow, jacob_cov, snip, grad_norm, params, flops).

Importing this package registers every proxy in ``ZERO_COST_PROXIES`` and the search methods ``zerocost``
and one per proxy (``naswot``, ``synflow`` ...) in ``SEARCH_METHODS``.
"""

from dfnas.search.zerocost.method import ZeroCostConfig, ZeroCostMethod, candidate_archs
from dfnas.search.zerocost.proxies import ZERO_COST_PROXIES, ZeroCostProxy, build_proxy, proxy_names, register_proxy
from dfnas.search.zerocost.scoring import combined_scores, parse_proxies, proxy_batches, ranks, score_arch

__all__ = [
    "ZERO_COST_PROXIES", "ZeroCostConfig", "ZeroCostMethod", "ZeroCostProxy", "build_proxy", "candidate_archs",
    "combined_scores", "parse_proxies", "proxy_batches", "proxy_names", "ranks", "register_proxy", "score_arch",
]
