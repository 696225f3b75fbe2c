"""Search spaces. Importing this package registers every space in ``SPACES``."""

from dfnas.spaces import darts, nb201, proxyless, resnet, spos  # noqa: F401  (register "darts", "nb201", ...)
from dfnas.spaces.base import (
    SPACES,
    Arch,
    ChainSpace,
    Choice,
    Space,
    Supernet,
    build_space,
    get_space_cls,
    subnet_state_dict,
)
from dfnas.spaces.flops import (
    base_macs,
    choice_costs,
    cost_tables,
    count_flops,
    count_macs,
    count_params,
    expected_macs,
    space_cost,
)

__all__ = [
    "SPACES", "Arch", "ChainSpace", "Choice", "Space", "Supernet", "build_space", "get_space_cls",
    "subnet_state_dict", "base_macs", "choice_costs", "cost_tables", "count_flops", "count_macs", "count_params",
    "expected_macs", "space_cost",
]
