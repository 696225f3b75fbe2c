"""Search spaces. Importing this package registers every space in ``SPACES``."""

from dfnas.spaces import nb201  # noqa: F401  (registers "nb201")
from dfnas.spaces.base import (
    SPACES,
    Arch,
    Choice,
    Space,
    Supernet,
    build_space,
    get_space_cls,
    subnet_state_dict,
)

__all__ = ["SPACES", "Arch", "Choice", "Space", "Supernet", "build_space", "get_space_cls", "subnet_state_dict"]
