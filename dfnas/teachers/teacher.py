"""The frozen ``Teacher`` wrapper: pixels in [0, 1] -> logits, with normalization and identity attached."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dfnas.errors import TeacherError

# class names TorchScript keeps (``original_name``) for the BatchNorm layers of a scripted or traced model
_BATCHNORM_NAMES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer, also inside a TorchScript model (scripted, traced or loaded),
    whose submodules are ``RecursiveScriptModule``s that only remember their original class name."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") in _BATCHNORM_NAMES


class _CompiledCache(dict):
    """Compiled inference copies of a teacher's model, one per device; never copied or pickled (a copy of the
    teacher compiles its own on first use)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _CompiledCache:
        return _CompiledCache()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_CompiledCache, ())


def compile_for_inference(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """A TorchScript copy of ``model`` for gradient-free inference (traced on ``example`` (B, C, H, W),
    frozen, BatchNorm folded into the convolutions), or None when the model cannot be traced or the copy
    disagrees with it on ``example``. About 25 % less time per teacher pass on CPU (ResNet-20, batch 128)."""
    if isinstance(model, torch.jit.ScriptModule):
        return None  # a TorchScript teacher stays as it was given
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            want, got = model(example), fast(example)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return None
    if any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
        return None  # data-dependent Python control flow: the trace would hold only the branch taken here
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    tol = 1e-3 * (1.0 + float(want.abs().max()))  # float reordering only; a wrong trace is off by far more
    return fast if float((got - want).abs().max()) <= tol else None


@dataclass
class TeacherSpec:
    """What a teacher expects and where it came from (saved in every manifest)."""

    name: str
    num_classes: int
    input_size: int = 32
    in_channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    source: str = ""  # file the weights came from
    sha256: str = ""
    class_names: list[str] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name, "num_classes": self.num_classes, "input_size": self.input_size,
            "in_channels": self.in_channels, "mean": list(self.mean), "std": list(self.std),
            "source": self.source, "sha256": self.sha256, "class_names": self.class_names,
        }


class Teacher(nn.Module):
    """A frozen classifier taking images in [0, 1]; all parameters have ``requires_grad=False``.

    Synthesis needs gradients with respect to the input only; leaving weight gradients off saves the
    weight-gradient convolutions in every backward pass (see ``benchmarks/synthesis_speed.py``).
    """

    def __init__(self, model: nn.Module, spec: TeacherSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        c = spec.in_channels
        if len(spec.mean) != c or len(spec.std) != c:
            raise TeacherError(f"teacher {spec.name!r}: mean/std need {c} values (one per channel), "
                               f"got {len(spec.mean)}/{len(spec.std)}")
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, c, 1, 1))
        # plain attribute, not a submodule: compiled copies stay out of modules(), state_dict() and batchnorms()
        object.__setattr__(self, "_compiled", _CompiledCache())
        self.freeze()

    def freeze(self) -> Teacher:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.model(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, D): ``forward_features`` when the model has it, else the logits."""
        f = getattr(self.model, "forward_features", None)
        z = self.normalize(x)
        return f(z) if callable(f) else self.model(z)

    def batchnorms(self) -> list[nn.Module]:
        """BatchNorm layers in forward order (module registration order), TorchScript ones included."""
        return [m for m in self.model.modules() if is_batchnorm(m)]

    def bn_term_unavailable(self) -> str | None:
        """Why the BatchNorm feature-statistics term cannot be computed for this teacher (None when it can).

        The term reads each BatchNorm layer's input with a forward hook; TorchScript modules refuse hooks
        (scripted) or never call them (traced), so their layers are found but cannot be observed.
        """
        bns = self.batchnorms()
        if not bns:
            return "has no BatchNorm layers"
        if any(isinstance(m, torch.jit.ScriptModule) for m in bns):
            return "is a TorchScript model (forward hooks cannot observe the inputs of its BatchNorm layers)"
        return None

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of x (B, C, H, W) in [0, 1] without gradients (labelling, evaluation).

        Runs a compiled inference copy of the model (``compile_for_inference``), made on the first call per
        device; equal to ``forward`` up to float rounding. Models that cannot be traced run ``forward``."""
        z = self.normalize(x)
        key = str(z.device)
        if key not in self._compiled:
            self._compiled[key] = compile_for_inference(self.model, z)
        fast = self._compiled[key]
        return fast(z) if fast is not None else self.model(z)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Logits for a float tensor in [0, 1], in batches."""
        outs = [self.logits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)
