"""Library function behind ``dfnas export``: find an architecture and its trained weights, then export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dfnas.errors import DfnasError
from dfnas.export.network import export_network
from dfnas.io import read_json


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file or a ``.safetensors`` file."""
    if not path.is_file():
        raise DfnasError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load/safetensors raise many types for a bad file
        raise DfnasError(f"weights file {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DfnasError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return obj


def _from_train_dir(d: Path) -> tuple[Any, dict[str, Any], Path]:
    """(arch, space settings, weights file) of a ``dfnas train`` directory (or a run's ``train/``)."""
    from dfnas.spaces.base import Arch

    for cand in (d, d / "train"):
        if (cand / "result.json").is_file() and (cand / "model.pt").is_file():
            res = read_json(cand / "result.json", what="training result")
            if not isinstance(res, dict) or "arch" not in res or "space" not in res:
                raise DfnasError(f"{str(cand / 'result.json')!r} records no architecture and space")
            return Arch.from_json(res["arch"]), dict(res["space"]), cand / "model.pt"
    raise DfnasError(f"{str(d)!r} holds no trained network (expected result.json and model.pt from `dfnas train`, "
                     "or a `dfnas run` directory with train/); use --arch and --weights instead")


def export_command(out: str | Path, run_dir: str | Path | None = None, arch: str | Path | None = None,
                   weights: str | Path | None = None, device: str = "cpu") -> Path:
    """``dfnas export``: from a training run directory, or from an architecture file plus a weights file."""
    from dfnas.spaces.archfile import read_arch_or_string
    from dfnas.spaces.base import space_from_config

    if run_dir is not None:
        a, space_cfg, wpath = _from_train_dir(Path(run_dir))
    else:
        if arch is None or weights is None:
            raise DfnasError("export needs --run DIR, or both --arch and --weights")
        a, space_cfg = read_arch_or_string(arch)
        wpath = Path(weights)
    space = space_from_config(space_cfg)
    net = space.build_network(a)
    state = _load_state(wpath)
    own = net.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise DfnasError(f"weights {str(wpath)!r} do not fit architecture {a} with space settings {space.config()}")
    net.load_state_dict(state)
    return export_network(space, a, net, out, info={"weights_source": str(wpath)})
