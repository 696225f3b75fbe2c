"""``RunConfig``: the typed configuration of ``dfnas run`` and the YAML presets it is built from.

A preset is a YAML mapping of ``RunConfig`` keys (``dfnas/presets/<name>.yaml``, or any file path); keys it
leaves out keep the dataclass defaults. ``--set a.b.c=value`` overrides apply on top, then ``from_dict``
checks every key (unknown keys are rejected with a "did you mean" hint).

Conventions that keep one source of truth per setting:
- the teacher is configured once, in the top-level ``teacher`` section (``synthesis.teacher`` stays unset);
- ``seed`` seeds every stage unless a section sets its own ``seed``;
- ``device`` (or ``--device``) places every stage; section-level ``device`` keys must stay ``auto``;
- ``search.space.C=16`` is shorthand for ``search.space.options.C=16`` (likewise ``export.space``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from dfnas.config import from_dict, identity_dict, load_yaml, merge_layers, to_dict
from dfnas.errors import ConfigError
from dfnas.io import config_hash
from dfnas.search.api import SearchConfig
from dfnas.synthesis.config import SynthesisConfig
from dfnas.teachers.loader import TeacherConfig
from dfnas.train.api import TrainConfig

SECTIONS_WITH_SEED = ("synthesis", "search", "train")
SECTIONS_WITH_DEVICE = ("search", "train")
# settings that change logs or pictures only, never results: left out of the run identity
_NOT_IDENTITY = ("name", "device", "report", "synthesis.log_every", "synthesis.grid_per_class",
                 "search.checkpoint_every_steps", "search.log_every_steps", "train.checkpoint_every_steps",
                 "train.log_every_steps")


@dataclass
class ExportConfig:
    """How the exported network gets its weights.

    ``distill``: the found architecture is trained from scratch by distillation on the synthetic data
    (settings in the ``train`` section). ``inherit``: the supernet's weights for the found path, with
    BatchNorm statistics recalibrated on the synthetic data (no extra training).
    """

    weights: Literal["distill", "inherit"] = "distill"
    # space settings of the exported network over the searched ones, e.g. {"C": 16, "N": 5} to train the
    # found cell in the benchmark's full-size network (only with weights: distill)
    space: dict[str, Any] = field(default_factory=dict)
    recalibrate_batches: int = 8  # synthetic batches used to recalibrate BN for weights: inherit

    def __post_init__(self) -> None:
        if self.weights not in ("distill", "inherit"):
            raise ConfigError(f"export.weights must be 'distill' or 'inherit', got {self.weights!r}")
        if self.weights == "inherit" and self.space:
            raise ConfigError("export.space changes the network's size, so its weights cannot be inherited from "
                              "the supernet; use export.weights=distill or leave export.space empty")
        if self.recalibrate_batches < 1:
            raise ConfigError(f"export.recalibrate_batches must be >= 1, got {self.recalibrate_batches}")


@dataclass
class ReportConfig:
    """Evaluation-only extras of the report (the pipeline itself never reads real data)."""

    # real labelled test set for the teacher's and the exported network's top-1: "auto" = the shared assets'
    # cifar10/exact_test_1017.npz when present and the teacher is a 10-class 32 px model; null = none
    real_test: str | None = "auto"
    max_test_images: int | None = None  # evaluate on at most this many real test images (None: all)


@dataclass
class RunConfig:
    """Everything ``dfnas run`` does: teacher -> synthesis -> search -> train/export -> report."""

    name: str = "default"  # recorded in the report; the preset's name by default
    seed: int = 0
    device: str = "auto"
    online_teacher: bool = False  # search/train distill from the teacher on every augmented batch
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    search: SearchConfig = field(default_factory=lambda: SearchConfig(method="spos"))
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        if to_dict(self.synthesis.teacher) != to_dict(TeacherConfig()):
            raise ConfigError("set the teacher in the top-level 'teacher' section (or with --teacher/--weights), "
                              "not under synthesis.teacher")
        for sec in SECTIONS_WITH_DEVICE:
            if getattr(self, sec).device != "auto":
                raise ConfigError(f"{sec}.device: set the device once at the top level (device: ...) or with "
                                  "--device; stages of one run share it")
        self.search.check()
        # the synthesis stage reads the one teacher section
        self.synthesis = dataclasses.replace(self.synthesis, teacher=self.teacher)

    def identity(self) -> dict[str, Any]:
        """The settings that determine results (used to refuse resuming a run dir with another config)."""
        d = identity_dict(self)
        d["synthesis"].pop("teacher", None)  # same as the top-level teacher
        for key in _NOT_IDENTITY:
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.get(p, {})
            node.pop(parts[-1], None)
        # where the weights live (or that a factory loads them itself) does not change them (sha256 is checked)
        for k in ("weights", "download", "factory_loads_weights"):
            d["teacher"].pop(k, None)
        # settings added after runs existed, left out while they cannot change results, so older run
        # directories still resume: the training-free block unless the search is training-free (fields marked
        # ADDED_LATER, e.g. the generator's output layer and redraws, are left out by identity_dict)
        if not self._training_free():
            d["search"].pop("zerocost", None)
        return d

    def _training_free(self) -> bool:
        """Whether the search method trains no supernet (its options then live in ``search.zerocost``)."""
        from dfnas.errors import ConfigError
        from dfnas.search.base import get_method_cls

        try:
            return bool(get_method_cls(self.search.method).training_free)
        except ConfigError:  # an unknown method is reported by the search stage itself
            return False

    def identity_hash(self) -> str:
        """Short stable hash of ``identity()``."""
        return config_hash(self.identity())


def presets_dir() -> Path:
    """The directory of the bundled presets (package data)."""
    return Path(str(resources.files("dfnas") / "presets"))


def list_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def resolve_preset(preset: str | Path) -> Path:
    """A bundled preset name, or a path to a YAML file; ConfigError listing the names otherwise."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"preset file {str(p)!r} does not exist")
        return p
    cand = presets_dir() / f"{preset}.yaml"
    if not cand.is_file():
        import difflib

        names = list_presets()
        close = difflib.get_close_matches(str(preset), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {str(preset)!r}{hint}; expected one of: {', '.join(names)}, or a path "
                          "to a YAML file")
    return cand


def _propagate(data: dict[str, Any]) -> dict[str, Any]:
    """Top-level seed into every section that does not set its own."""
    seed = data.get("seed", 0)
    for sec in SECTIONS_WITH_SEED:
        node = data.setdefault(sec, {})
        if not isinstance(node, dict):
            raise ConfigError(f"run config: {sec!r} must be a mapping, got {node!r}")
        node.setdefault("seed", seed)
    return data


def build_run_config(data: dict[str, Any], overrides: list[str] | None = None, where: str = "run config",
                     values: dict[str, Any] | None = None) -> RunConfig:
    """RunConfig from a preset mapping < ``KEY=VALUE`` overrides < ``values`` (dotted key -> value, taken as
    is rather than parsed as YAML: file paths and names from command-line flags); see ``merge_layers``."""
    merged = merge_layers(RunConfig, data, overrides, values, sections=("search.space",), where=where)
    return from_dict(RunConfig, _propagate(merged), where=where)


def load_run_config(preset: str | Path = "default", overrides: list[str] | None = None,
                    teacher: str | None = None, weights: str | None = None,
                    device: str | None = None) -> RunConfig:
    """Preset (name or YAML path) < ``--set`` overrides < explicit flags (teacher, weights, device)."""
    path = resolve_preset(preset)
    data = load_yaml(path)
    data.setdefault("name", path.stem)
    values = {k: v for k, v in (("teacher.name", teacher), ("teacher.weights", weights), ("device", device))
              if v is not None}
    return build_run_config(data, overrides, where=f"preset {path.stem!r}", values=values)
