"""Exported networks: ``arch.json`` (architecture + space settings), ``model.safetensors`` (weights) and
``model.onnx`` (the same network as an ONNX graph, when the optional ``onnx`` package is installed).

An export directory is self-describing: ``load_exported`` rebuilds the plain network with
``space.build_network(arch)`` (no ``Choice`` modules, no supernet) and loads the weights strictly.

    DIR/arch.json          {"format", "arch": Arch.to_json(), "space": Space.config(), "weights", "onnx", "info"}
    DIR/model.safetensors  the plain network's state dict (float tensors + BN counters)
    DIR/model.onnx         input "input" (batch, channels, size, size), output "logits"; see ``onnx_file``
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfnas.errors import ArchError, DfnasError
from dfnas.export.onnx_file import ONNX_FILE, write_onnx
from dfnas.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file

FORMAT = "dfnas-export/1"
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"


def _plain_state(space: Any, arch: Any, model: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict of the plain network for ``arch``: from a plain model as is, from a supernet via
    ``subnet_state_dict`` (a model holding ``Choice`` modules is treated as a supernet); plus its parameter
    count."""
    from dfnas.spaces.base import Choice, Supernet, subnet_state_dict

    if isinstance(model, Supernet) and any(isinstance(m, Choice) for m in model.modules()):
        state = subnet_state_dict(model, arch)
    else:
        state = model.state_dict()
    # check the weights fit the network that load_exported will build, before anything is written
    ref_net = space.build_network(arch)
    ref = ref_net.state_dict()
    missing = sorted(set(ref) - set(state))
    unexpected = sorted(set(state) - set(ref))
    bad = [k for k in ref if k in state and tuple(ref[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        raise ArchError(f"weights do not fit architecture {arch} of space {space.name!r}: missing {missing[:4]}, "
                        f"unexpected {unexpected[:4]}, shape mismatches {bad[:4]}")
    # safetensors refuses shared or non-contiguous storage: store independent contiguous CPU copies
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return plain, sum(p.numel() for p in ref_net.parameters())


def export_network(space: Any, arch: Any, model: nn.Module, out_dir: str | Path,
                   info: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write ``arch.json``, ``model.safetensors`` and ``model.onnx`` for ``arch`` into ``out_dir``; return it.

    ``model`` is the trained plain network of ``arch`` or a supernet (its weights for ``arch`` are taken).
    ``info`` (JSON-able) is stored in arch.json, e.g. where the weights came from and their accuracy.
    Without the ``onnx`` package the ONNX file is skipped: arch.json's ``onnx`` says why, and ``log``
    (default: stderr) gets a line saying how to install it. The weights are written first and arch.json
    last, so arch.json marks a complete export.
    """
    from safetensors.torch import save

    space.validate(arch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, params = _plain_state(space, arch, model)
    # one metadata key holding sorted JSON: safetensors stores several keys in hash-map order, which changes
    # from one process to the next, so two exports of the same run would differ byte for byte
    meta = {"dfnas": json.dumps({"format": FORMAT, "arch": str(arch), "space": space.name}, sort_keys=True)}
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata=meta))
    # the ONNX graph is traced from the network load_exported would rebuild, with exactly these weights
    plain = space.build_network(arch)
    plain.load_state_dict(state)
    in_channels = int(getattr(space, "in_channels", 3))  # spaces without the setting take RGB
    onnx_meta = write_onnx(plain, (in_channels, space.input_size, space.input_size), out / ONNX_FILE, log=log)
    atomic_write_json(out / ARCH_FILE, {
        "format": FORMAT,
        "arch": arch.to_json(),
        "space": space.config(),
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(out / WEIGHTS_FILE), "params": params},
        "onnx": onnx_meta,
        "info": dict(info or {}),
    })
    return out


def read_export(export_dir: str | Path) -> dict[str, Any]:
    """The parsed ``arch.json`` of an export directory, checked for the expected format."""
    d = Path(export_dir)
    meta = read_json(d / ARCH_FILE, what="exported architecture")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "arch" not in meta or "space" not in meta:
        raise DfnasError(f"{str(d / ARCH_FILE)!r} is not a dfnas export (expected format {FORMAT!r} with "
                         "'arch' and 'space')")
    return meta


def rebuild(meta: Mapping[str, Any]) -> tuple[Any, Any, nn.Module]:
    """(space, arch, untrained plain network) from a parsed arch.json."""
    from dfnas.spaces.base import Arch, space_from_config

    space = space_from_config({**meta["space"], "name": meta["space"].get("name") or meta["arch"].get("space")})
    arch = Arch.from_json(meta["arch"])
    return space, arch, space.build_network(arch)


def load_exported(export_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the exported plain network (no supernet code) and load its weights; returns it in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(export_dir)
    meta = read_export(d)
    _, arch, net = rebuild(meta)
    wpath = d / meta.get("weights", {}).get("file", WEIGHTS_FILE)
    if not wpath.is_file():
        raise DfnasError(f"exported weights {str(wpath)!r} are missing")
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError) as e:
        raise DfnasError(f"exported weights {str(wpath)!r} cannot be read ({e})") from None
    own = net.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise DfnasError(f"exported weights {str(wpath)!r} do not match architecture {arch}; the export is "
                         "corrupt or was edited")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()
