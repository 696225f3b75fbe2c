"""ProxylessNAS: binarized path-level gates with an optional expected-MACs term."""

from dfnas.search.proxyless.method import ProxylessConfig, ProxylessMethod, binary_gate_alpha_grad

__all__ = ["ProxylessConfig", "ProxylessMethod", "binary_gate_alpha_grad"]
