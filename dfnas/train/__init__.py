"""Training a found architecture from scratch (the search loop with method ``fixed``) and evaluating it."""

from dfnas.train.api import TrainConfig, evaluate, resolve_space, train_network

__all__ = ["TrainConfig", "evaluate", "resolve_space", "train_network"]
