"""Named teachers and how their weights are found: explicit path, torch hub cache, then download."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfnas.assets import assets_root
from dfnas.errors import TeacherError
from dfnas.registry import Registry
from dfnas.teachers import resnet_cifar

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PUBLIC_BASE = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


@dataclass(frozen=True)
class NamedTeacher:
    """A published checkpoint: architecture factory + file name (whose 8 hex digits prefix its SHA-256)."""

    factory: Callable[[int], nn.Module]
    filename: str
    num_classes: int = 10

    @property
    def hash_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[1].split(".")[0]

    @property
    def url(self) -> str:
        return PUBLIC_BASE + self.filename


TEACHERS: Registry[NamedTeacher] = Registry("teacher")
_NAMED = {
    "cifar10_resnet20": NamedTeacher(resnet_cifar.resnet20, "resnet20-12fca82f.th"),
    "cifar10_resnet32": NamedTeacher(resnet_cifar.resnet32, "resnet32-d509ac18.th"),
    "cifar10_resnet44": NamedTeacher(resnet_cifar.resnet44, "resnet44-014dd654.th"),
    "cifar10_resnet56": NamedTeacher(resnet_cifar.resnet56, "resnet56-4bfd9763.th"),
}
for _name, _t in _NAMED.items():
    TEACHERS.register(_name)(lambda _t=_t: _t)


def teacher_dirs(explicit: str | Path | None = None) -> list[Path]:
    """Directories searched for named checkpoints before the hub cache: explicit, $DFNAS_TEACHERS, assets."""
    dirs: list[Path] = []
    if explicit:
        dirs.append(Path(explicit))
    if os.environ.get("DFNAS_TEACHERS"):
        dirs.append(Path(os.environ["DFNAS_TEACHERS"]))
    root = assets_root()
    if root is not None:
        dirs.append(root / "teachers")
    return dirs


def resolve_checkpoint(name: str, weights: str | Path | None = None, download: bool = True) -> Path:
    """Find the checkpoint file of named teacher ``name``.

    Order: ``weights`` (a file, or a directory holding the published file name), ``$DFNAS_TEACHERS`` and
    the assets directory, the torch hub checkpoint cache, then a download from the public address with the
    SHA-256 prefix checked (``download=False`` turns the network off).
    """
    spec = TEACHERS.build(name)
    if weights is not None and Path(weights).is_file():
        return Path(weights)
    if weights is not None and not Path(weights).exists():
        raise TeacherError(f"teacher weights {str(weights)!r} do not exist (expected a checkpoint file or a "
                           f"directory containing {spec.filename})")
    for d in teacher_dirs(weights):
        cand = d / spec.filename
        if cand.is_file():
            return cand
    hub = Path(torch.hub.get_dir()) / "checkpoints" / spec.filename
    if hub.is_file():
        return hub
    if not download:
        raise TeacherError(f"teacher {name!r}: {spec.filename} not found in {[str(d) for d in teacher_dirs(weights)]}"
                           f" nor in the hub cache {str(hub.parent)!r}, and downloading is off; pass --weights PATH "
                           "or set DFNAS_ASSETS")
    hub.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(hub), hash_prefix=spec.hash_prefix, progress=True)
    except (OSError, RuntimeError) as e:
        raise TeacherError(f"teacher {name!r}: download of {spec.url} failed ({e}); pass --weights PATH to a "
                           f"local copy of {spec.filename}") from None
    return hub


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint (``{'state_dict': ...}`` or a bare state dict), stripping a ``module.`` prefix."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TeacherError(f"teacher checkpoint {str(path)!r} does not exist") from None
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError) for bad files
        raise TeacherError(f"teacher checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e}); "
                           "expected a torch.save'd state dict") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherError(f"teacher checkpoint {str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing/unexpected/mismatched keys."""
    own = model.state_dict()
    # old checkpoints predate BatchNorm's num_batches_tracked counter: keep the model's value for it
    state = dict(state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:3]}")
        raise TeacherError(f"checkpoint {source!r} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
