"""``load_teacher``: one entry point for named teachers, ``file.py:factory`` models and TorchScript files."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfnas.config import apply_overrides, from_dict
from dfnas.errors import TeacherError
from dfnas.io import sha256_file
from dfnas.teachers.hub import (
    CIFAR10_CLASSES,
    TEACHERS,
    load_into,
    load_state_dict_file,
    resolve_checkpoint,
)
from dfnas.teachers.teacher import Teacher, TeacherSpec


@dataclass
class TeacherConfig:
    """How to obtain the teacher. ``name`` is a registered name, ``file.py:factory`` or a TorchScript file."""

    name: str = "cifar10_resnet20"
    weights: str | None = None  # checkpoint file, or directory holding the named file
    input_size: int | None = None  # declared; inferred (32) when None
    in_channels: int | None = None
    num_classes: int | None = None  # declared class count; checked against the model's output
    mean: list[float] | None = None
    std: list[float] | None = None
    download: bool = True
    allow_no_batchnorm: bool = False  # run with the feature term off when the teacher has no BN layer
    # a file.py:factory that returns a trained model by itself (it loads its own checkpoint): no weights needed;
    # without it a factory teacher needs ``weights``, so an untrained net is never taken for the teacher
    factory_loads_weights: bool = False


def teacher_config(name: str, weights: str | None = None, settings: list[str] | None = None,
                   **fields: object) -> TeacherConfig:
    """A TeacherConfig from a teacher reference, a weights path and ``teacher.KEY=VALUE`` declarations.

    ``settings`` are the ``--input-size/--in-channels/--num-classes/--mean/--std/--factory-loads-weights``
    flags in the form ``synthesize`` and ``run`` receive them as overrides; ``fields`` are defaults they override.
    """
    data = apply_overrides({"teacher": {**fields, "name": name, "weights": weights}}, list(settings or []))
    if set(data) != {"teacher"}:
        raise TeacherError(f"teacher settings must be teacher.KEY=VALUE, got {settings}")
    return from_dict(TeacherConfig, data["teacher"], where="teacher")


def is_factory_reference(ref: str) -> bool:
    """Whether a teacher reference is a ``path/to/file.py:factory``."""
    return ":" in ref and ref.rpartition(":")[0].endswith(".py")


def _import_factory(ref: str) -> nn.Module:
    path_s, _, fn_name = ref.rpartition(":")
    path = Path(path_s)
    if not path.is_file():
        raise TeacherError(f"teacher module {path_s!r} does not exist (expected path/to/file.py:factory)")
    spec = importlib.util.spec_from_file_location(f"dfnas_user_teacher_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise TeacherError(f"teacher module {path_s!r} cannot be imported")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # user code may raise anything while importing
        raise TeacherError(f"importing teacher module {path_s!r} failed: {type(e).__name__}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise TeacherError(f"teacher module {path_s!r} has no callable {fn_name!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise TeacherError(f"teacher factory {ref!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _probe(model: nn.Module, channels: int, size: int, name: str) -> int:
    """Run a dummy batch to check the model is an image classifier; return its class count."""
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # any failure means it is not a classifier of (channels, size, size) images
        raise TeacherError(f"teacher {name!r} is not an image classifier of {channels}x{size}x{size} inputs: "
                           f"forward failed with {type(e).__name__}: {e}; if it takes other inputs, declare them "
                           "with --in-channels and --input-size (and its normalization with --mean/--std)") from None
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 2 or y.shape[1] < 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise TeacherError(f"teacher {name!r} is not an image classifier: expected logits of shape (batch, "
                           f"classes>=2) for a ({channels}, {size}, {size}) image batch, got {shape}")
    if not torch.isfinite(y).all():
        raise TeacherError(f"teacher {name!r} produces non-finite logits; the weights are likely corrupt")
    return int(y.shape[1])


def load_teacher(cfg: TeacherConfig | str = "cifar10_resnet20", device: torch.device | str = "cpu",
                 **overrides: object) -> Teacher:
    """Build the frozen teacher described by ``cfg`` on ``device``.

    Raises TeacherError for missing/corrupt checkpoints, mismatched state dicts, a wrong class count,
    a model that is not an image classifier, or one without BatchNorm unless allowed.
    """
    if isinstance(cfg, str):
        cfg = TeacherConfig(name=cfg, **overrides)  # type: ignore[arg-type]
    name = cfg.name
    source, sha = "", ""
    class_names: list[str] = []
    mean = cfg.mean or [0.485, 0.456, 0.406]
    std = cfg.std or [0.229, 0.224, 0.225]
    if name in TEACHERS:
        named = TEACHERS.build(name)
        path = resolve_checkpoint(name, cfg.weights, download=cfg.download)
        model = named.factory(named.num_classes)
        load_into(model, load_state_dict_file(path), str(path))
        source, sha = str(path.resolve()), sha256_file(path)  # absolute: found again from any directory
        if not sha.startswith(named.hash_prefix):
            raise TeacherError(f"teacher checkpoint {str(path)!r} has SHA-256 {sha[:8]}..., expected prefix "
                               f"{named.hash_prefix} for {name}; the file is corrupt or a different model")
        class_names = list(CIFAR10_CLASSES)
    elif is_factory_reference(name):
        model = _import_factory(name)
        if cfg.weights:
            load_into(model, load_state_dict_file(Path(cfg.weights)), cfg.weights)
            source, sha = str(Path(cfg.weights).resolve()), sha256_file(cfg.weights)
        elif cfg.factory_loads_weights:
            source = name
        else:
            raise TeacherError(f"teacher {name!r} is a model factory but no weights were given, so it would be an "
                               "untrained net: pass --weights CKPT (a state dict of the model it builds), or "
                               "--factory-loads-weights if the factory returns a trained model by itself")
    elif Path(name).is_file():
        try:
            model = torch.jit.load(name, map_location="cpu")
        except Exception as e:  # torch.jit raises RuntimeError/ValueError variants on bad files
            raise TeacherError(f"teacher file {name!r} is not a TorchScript model ({type(e).__name__}: {e}); for "
                               "a state dict use --teacher file.py:factory --weights CKPT") from None
        source, sha = str(Path(name).resolve()), sha256_file(name)
    else:
        raise TeacherError(f"unknown teacher {name!r}; expected one of {TEACHERS.names()}, a "
                           "path/to/file.py:factory, or a TorchScript file")

    channels = cfg.in_channels or 3
    size = cfg.input_size or 32
    model.eval()
    classes = _probe(model, channels, size, name)
    if cfg.num_classes is not None and classes != cfg.num_classes:
        raise TeacherError(f"teacher {name!r} outputs {classes} classes but {cfg.num_classes} were declared "
                           "(--num-classes); check the checkpoint or the declaration")
    if len(mean) != channels:
        mean = [0.5] * channels if cfg.mean is None else mean
        std = [0.5] * channels if cfg.std is None else std
    spec = TeacherSpec(name=name, num_classes=classes, input_size=size, in_channels=channels,
                       mean=tuple(mean), std=tuple(std), source=source, sha256=sha,
                       class_names=class_names or [str(i) for i in range(classes)])
    teacher = Teacher(model, spec).to(device)
    if not teacher.batchnorms() and not cfg.allow_no_batchnorm:
        raise TeacherError(f"teacher {name!r} has no BatchNorm layers, so the feature-statistics term of "
                           "synthesis cannot be used; pass --allow-no-batchnorm to run with that term off")
    return teacher
