"""Search-space plumbing shared by every space and method.

Vocabulary
- A *decision* is a named architectural choice (``key``) among ordered *options* (op names). In cell
  spaces one decision is shared by every cell (all cells share one genotype), so several ``Choice``
  modules can carry the same key.
- An ``Arch`` is a plain value: the space name plus ``{key: option}``. It round-trips through JSON and
  through the space's own string format, and builds a plain ``nn.Module`` with no supernet code.
- A supernet holds every option of every decision inside ``Choice`` modules. A search method decides what
  a ``Choice`` computes by setting, per key, either one active option (single path: SPOS, ProxylessNAS
  weight steps, evaluation) or a weight vector over options (weighted sum: DARTS, ProxylessNAS gates).

Weight sharing contract: the plain network built for an arch has, at the module path of each ``Choice``,
the chosen option's module itself. So supernet key ``<prefix>.candidates.<op>.<rest>`` maps to plain key
``<prefix>.<rest>`` (see ``subnet_state_dict``); a plain net then equals the supernet with that path active.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dfnas.errors import ArchError
from dfnas.registry import Registry


@dataclass(frozen=True)
class Arch:
    """An architecture as data: ``space`` name + ordered ``(key, option)`` pairs."""

    space: str
    choices: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, space: str, mapping: Mapping[str, str]) -> Arch:
        return cls(space, tuple(mapping.items()))

    def as_dict(self) -> dict[str, str]:
        return dict(self.choices)

    def __getitem__(self, key: str) -> str:
        return self.as_dict()[key]

    def to_json(self) -> dict[str, Any]:
        """JSON form: space, the space's string, and the explicit choices."""
        return {"space": self.space, "arch": get_space_cls(self.space).format(self), "choices": self.as_dict()}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | str) -> Arch:
        """Inverse of ``to_json`` (also accepts a JSON string); validated against the space."""
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ArchError(f"architecture JSON is not valid JSON ({e})") from None
        if not isinstance(obj, Mapping) or "space" not in obj:
            raise ArchError("architecture JSON must be an object with 'space' and 'arch' or 'choices'")
        space_cls = get_space_cls(str(obj["space"]))
        if "arch" in obj:
            arch = space_cls.parse(str(obj["arch"]))
            if "choices" in obj and arch.as_dict() != dict(obj["choices"]):
                raise ArchError("architecture JSON: 'arch' string and 'choices' disagree")
            return arch
        arch = cls.of(str(obj["space"]), dict(obj["choices"]))
        space_cls.validate(arch)
        return arch

    def __str__(self) -> str:
        return get_space_cls(self.space).format(self)


class Choice(nn.Module):
    """A decision point in a supernet: ``candidates[op]`` for every option of decision ``key``.

    What ``forward`` computes is set from outside by the search method:
    - ``active = op``: only that candidate runs (single path);
    - ``weights = w`` (1-D tensor over options, same order as ``options``): sum of ``w[i] * op_i(x)``
      over options with non-zero weight (``torch.zeros`` for the rest, shape-preserving).
    """

    def __init__(self, key: str, candidates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.key = key
        self.options = list(candidates)
        self.candidates = nn.ModuleDict(dict(candidates))
        self.active: str | None = None
        self.weights: torch.Tensor | None = None
        self.subset: list[int] | None = None  # weighted mode: compute only these option indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights is not None:
            out: torch.Tensor | None = None
            indices = self.subset if self.subset is not None else range(len(self.options))
            for i in indices:
                # exact zeros skip the op (pruned DARTS edges cost nothing) unless a gradient w.r.t. that weight
                # is wanted; ``subset`` restricts the computation further (ProxylessNAS runs only its two paths)
                if self.subset is not None or self.weights.requires_grad or float(self.weights[i]) != 0.0:
                    y = self.weights[i] * self.candidates[self.options[i]](x)
                    out = y if out is None else out + y
            if out is None:
                raise RuntimeError(f"choice {self.key!r}: all option weights are zero")
            return out
        if self.active is None:
            raise RuntimeError(f"choice {self.key!r} has no active option: the search method must set a path")
        return self.candidates[self.active](x)


class Supernet(nn.Module):
    """Base class of supernets: finds its ``Choice`` modules and sets paths or weights by key."""

    def choices(self) -> Iterator[tuple[str, Choice]]:
        for name, m in self.named_modules():
            if isinstance(m, Choice):
                yield name, m

    def set_path(self, path: Mapping[str, str] | Arch) -> None:
        """Single-path mode: every Choice runs only ``path[choice.key]``."""
        p = path.as_dict() if isinstance(path, Arch) else path
        for _, c in self.choices():
            if p[c.key] not in c.candidates:
                raise ArchError(f"option {p[c.key]!r} is not a candidate of decision {c.key!r}: {c.options}")
            c.active, c.weights, c.subset = p[c.key], None, None

    def set_weights(self, weights: Mapping[str, torch.Tensor],
                    subsets: Mapping[str, list[int]] | None = None) -> None:
        """Weighted mode: every Choice computes the ``weights[choice.key]``-weighted sum of its options.

        ``subsets[key]`` (optional) lists the only option indices to compute for that decision; the others
        contribute nothing and get no gradient (ProxylessNAS's two sampled paths).
        """
        for _, c in self.choices():
            c.weights, c.active = weights[c.key], None
            c.subset = None if subsets is None else list(subsets[c.key])


def subnet_state_dict(supernet: Supernet, path: Mapping[str, str] | Arch) -> dict[str, torch.Tensor]:
    """The supernet's weights for a plain network of ``path`` (see the module docstring for the mapping)."""
    p = path.as_dict() if isinstance(path, Arch) else path
    prefixes = {name: c for name, c in supernet.choices()}
    out: dict[str, torch.Tensor] = {}
    for k, v in supernet.state_dict().items():
        owner = None
        for name in prefixes:
            if k.startswith(name + ".candidates."):
                if owner is None or len(name) > len(owner):
                    owner = name
        if owner is None:
            out[k] = v
            continue
        op, _, rest = k[len(owner) + len(".candidates."):].partition(".")
        if op == p[prefixes[owner].key]:
            out[f"{owner}.{rest}"] = v
    return out


class Space(ABC):
    """A search space: its decisions, supernet, plain-network builder and string format."""

    name: str = ""
    # CPU-sized settings a search uses unless its configuration sets them (``space_from_config(...,
    # cpu_defaults=True)``); the constructor's defaults are the papers' sizes
    cpu_defaults: ClassVar[Mapping[str, Any]] = {}
    # options that carry structure rather than an operation (DARTS's 'none' = edge not selected): a restricted
    # space (``restrict_space``) always keeps them, and a pre-filter does not count them among those it keeps
    structural_options: ClassVar[tuple[str, ...]] = ()
    # options that learn no transformation of their input (skip, pooling): what a cap on parameter-free options
    # counts (``proxyless.max_param_free``)
    parameter_free: ClassVar[frozenset[str]] = frozenset()
    # set for a fixed network family (``cifar_resnet``): why nothing searches it and what to do instead; its
    # networks still train and export
    not_searchable: ClassVar[str | None] = None

    def __init__(self, num_classes: int = 10, input_size: int = 32, in_channels: int = 3, **kwargs: Any) -> None:
        self.num_classes = num_classes
        self.input_size = input_size
        self.in_channels = in_channels
        if kwargs:
            raise ArchError(f"space {self.name!r}: unknown option(s) {sorted(kwargs)}")
        if in_channels < 1 or input_size < 1 or num_classes < 2:
            raise ArchError(f"space {self.name!r} needs in_channels >= 1, input_size >= 1 and num_classes >= 2, got "
                            f"in_channels={in_channels}, input_size={input_size}, num_classes={num_classes}")

    @classmethod
    @abstractmethod
    def decisions(cls) -> dict[str, list[str]]:
        """Ordered ``{key: options}`` of the space."""

    @classmethod
    @abstractmethod
    def format(cls, arch: Arch) -> str:
        """The space's canonical string for ``arch``."""

    @classmethod
    @abstractmethod
    def parse(cls, s: str) -> Arch:
        """Parse the canonical string; raise ArchError with what was expected."""

    @classmethod
    def validate(cls, arch: Arch) -> None:
        """Raise ArchError unless ``arch`` belongs to this space."""
        if arch.space != cls.name:
            raise ArchError(f"architecture is of space {arch.space!r}, not {cls.name!r}")
        dec = cls.decisions()
        got = arch.as_dict()
        if set(got) != set(dec):
            raise ArchError(f"architecture for space {cls.name!r} must set decisions {sorted(dec)}, got {sorted(got)}")
        for k, v in got.items():
            if v not in dec[k]:
                raise ArchError(f"option {v!r} is not allowed for decision {k!r} of space {cls.name!r}; "
                                f"expected one of {dec[k]}")

    def check(self, arch: Arch) -> None:
        """Raise ArchError unless ``arch`` fits this space *instance*.

        ``validate`` is a classmethod and can only check what every configuration shares; spaces whose
        decisions depend on their settings (chain spaces: number of layers, which layers may be skipped)
        override ``decisions`` per instance, and this compares ``arch`` against those.
        """
        self.validate(arch)
        dec = self.decisions()
        got = arch.as_dict()
        if set(got) != set(dec):
            raise ArchError(f"architecture for this {self.name!r} space ({self.config()}) must set decisions "
                            f"{sorted(dec)}, got {sorted(got)}")
        for k, v in got.items():
            if v not in dec[k]:
                raise ArchError(f"option {v!r} is not allowed for decision {k!r} of this {self.name!r} space; "
                                f"expected one of {dec[k]}")

    @classmethod
    def function_key(cls, arch: Arch) -> str:
        """A key that two architectures share when they compute the same function, so a search can skip
        evaluating the second. By default the space's string (no equivalences known); spaces with known
        isomorphisms (NAS-Bench-201) override it."""
        cls.validate(arch)
        return cls.format(arch)

    def skip_cap_decisions(self) -> list[str]:
        """The decisions a cap on skips (``darts.max_skip``) or on parameter-free options
        (``proxyless.max_param_free``) counts and may rule out: every decision here; the DARTS space narrows it
        to the normal cell, as P-DARTS does."""
        return list(self.decisions())

    def sample(self, generator: torch.Generator) -> Arch:
        """Uniformly random architecture (each decision independently)."""
        out = {}
        for k, opts in self.decisions().items():
            out[k] = opts[int(torch.randint(len(opts), (1,), generator=generator))]
        return Arch.of(self.name, out)

    def fair_paths(self, generator: torch.Generator) -> list[Arch]:
        """FairNAS's strict fairness (Chu et al., ICCV 2021): m paths, m = the most options any decision has, in
        which every decision takes each of its options once (a random order per decision; cycled where a
        decision has fewer than m)."""
        dec = self.decisions()
        m = max(len(opts) for opts in dec.values())
        order = {k: torch.randperm(len(opts), generator=generator).tolist() for k, opts in dec.items()}
        return [Arch.of(self.name, {k: dec[k][order[k][i % len(dec[k])]] for k in dec}) for i in range(m)]

    def derive(self, weights: Mapping[str, torch.Tensor]) -> Arch:
        """Discrete architecture from architecture parameters: argmax per decision (spaces may override)."""
        return Arch.of(self.name, {k: opts[int(torch.as_tensor(weights[k]).argmax())]
                                   for k, opts in self.decisions().items()})

    @abstractmethod
    def build_supernet(self) -> Supernet:
        """A supernet holding every option of every decision."""

    @abstractmethod
    def build_network(self, arch: Arch) -> nn.Module:
        """A plain network for ``arch`` (no Choice modules), module paths matching the supernet's."""

    def config(self) -> dict[str, Any]:
        """Space settings needed to rebuild the same networks (saved with exported architectures).

        ``in_channels`` appears only when it is not 3, so that the configs (and the run hashes built on them)
        of the RGB spaces stay what they were before the setting existed.
        """
        cfg: dict[str, Any] = {"name": self.name, "num_classes": self.num_classes, "input_size": self.input_size}
        if self.in_channels != 3:
            cfg["in_channels"] = self.in_channels
        return cfg

    def check_input(self) -> None:
        """Raise ArchError unless a network of this space runs on (in_channels, input_size) images: one
        sampled network's forward pass on two blank images, so a misfit is found before any work starts."""
        net = self.build_network(self.sample(torch.Generator().manual_seed(0))).eval()
        try:
            with torch.no_grad():
                out = net(torch.zeros(2, self.in_channels, self.input_size, self.input_size))
        except RuntimeError as e:
            raise ArchError(f"space {self.name!r} ({self.config()}) cannot take {self.in_channels}-channel "
                            f"{self.input_size} px images: {str(e).splitlines()[0]}") from None
        if tuple(out.shape) != (2, self.num_classes):
            raise ArchError(f"space {self.name!r} gives outputs of shape {tuple(out.shape)} for "
                            f"{self.input_size} px images, expected (2, {self.num_classes})")


class ChainSpace(Space):
    """A space that is a chain of searchable layers: decisions ``layer0 .. layer{n-1}``, in order.

    The number of layers and each layer's options depend on the instance's settings, so ``decisions`` is an
    instance method here; the classmethods ``validate`` / ``parse`` check what holds for every setting
    (layer keys contiguous, ops known) and ``Space.check`` compares with one instance.
    String: the ops joined by ``-``, e.g. ``mb_k3_e6-zero-mb_k5_e3``.
    """

    ops: tuple[str, ...] = ()  # every op any layer may take, in canonical order

    @staticmethod
    def layer_key(i: int) -> str:
        return f"layer{i}"

    @abstractmethod
    def layer_options(self) -> list[list[str]]:
        """Options of each searchable layer, in order."""

    def decisions(self) -> dict[str, list[str]]:  # type: ignore[override]
        return {self.layer_key(i): list(opts) for i, opts in enumerate(self.layer_options())}

    @classmethod
    def validate(cls, arch: Arch) -> None:
        if arch.space != cls.name:
            raise ArchError(f"architecture is of space {arch.space!r}, not {cls.name!r}")
        got = arch.as_dict()
        want = [cls.layer_key(i) for i in range(len(got))]
        if not got or set(got) != set(want):
            raise ArchError(f"architecture for space {cls.name!r} must set decisions layer0..layer<n-1>, "
                            f"got {list(got)}")
        for k, v in got.items():
            if v not in cls.ops:
                raise ArchError(f"unknown op {v!r} for {k!r} of space {cls.name!r}; expected one of {list(cls.ops)}")

    @classmethod
    def format(cls, arch: Arch) -> str:
        d = arch.as_dict()
        return "-".join(d[cls.layer_key(i)] for i in range(len(d)))

    @classmethod
    def parse(cls, s: str) -> Arch:
        items = [t.strip() for t in s.strip().split("-")]
        for i, op in enumerate(items):
            if op not in cls.ops:
                raise ArchError(f"architecture {s!r}: unknown op {op!r} at layer {i}; expected ops joined by '-', "
                                f"each one of {list(cls.ops)}")
        return Arch.of(cls.name, {cls.layer_key(i): op for i, op in enumerate(items)})


def restrict_space(space: Space, allowed: Mapping[str, list[str]]) -> Space:
    """A copy of ``space`` whose decisions offer only ``allowed[key]`` (kept in the space's own order).

    Name, string format and plain networks stay those of ``space`` (a found architecture is an architecture
    of the full space, and NAS-Bench-201 lookups work unchanged); ``decisions``, ``sample``, ``validate`` and
    ``derive`` see only the allowed options, and the supernet holds only their candidates, so a search method
    sizes its architecture weights, draws its paths and spends its weight steps on them alone. Used by the
    zero-cost pre-filter of ``dfnas.search.zerocost.prefilter``. The space's ``structural_options`` are always
    kept. ArchError for an unknown decision or option, or a decision left without an operation.
    """
    dec = space.decisions()
    if set(allowed) != set(dec):
        raise ArchError(f"restricting space {space.name!r}: allowed options must name every decision {sorted(dec)}, "
                        f"got {sorted(allowed)}")
    sub: dict[str, list[str]] = {}
    for k, opts in dec.items():
        unknown = sorted(set(allowed[k]) - set(opts))
        if unknown or not set(allowed[k]) - set(space.structural_options):
            raise ArchError(f"restricting space {space.name!r}: decision {k!r} must keep one or more of "
                            f"{[o for o in opts if o not in space.structural_options]}, got {list(allowed[k])}")
        sub[k] = [o for o in opts if o in set(allowed[k]) or o in space.structural_options]
    base_cls = type(space)

    def decisions(cls: type[Space]) -> dict[str, list[str]]:
        return {k: list(v) for k, v in sub.items()}

    def build_supernet(self: Space) -> Supernet:
        net = base_cls.build_supernet(self)
        for _, c in net.choices():  # drop the candidates of the options left out (their weights too)
            for op in [o for o in c.options if o not in sub[c.key]]:
                del c.candidates[op]
            c.options = [o for o in c.options if o in sub[c.key]]
        return net

    cls = type(f"Restricted{base_cls.__name__}", (base_cls,), {
        "decisions": classmethod(decisions), "build_supernet": build_supernet, "__module__": base_cls.__module__,
        "__doc__": f"{base_cls.__name__} restricted to the options {sub}."})
    out = object.__new__(cls)
    out.__dict__.update(space.__dict__)
    return out


SPACES: Registry[type[Space]] = Registry("search space")


def register_space(cls: type[Space]) -> type[Space]:
    """Class decorator: register a Space subclass under ``cls.name``."""
    SPACES.register(cls.name)(lambda: cls)
    return cls


def get_space_cls(name: str) -> type[Space]:
    return SPACES.get(name)()


def build_space(name: str, **kwargs: Any) -> Space:
    """Instantiate space ``name`` with its settings (e.g. ``C``, ``N`` for nb201)."""
    cls = get_space_cls(name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ArchError(f"space {name!r}: unknown option(s) {unknown}; accepted: {sorted(params)}")
    return cls(**kwargs)


@dataclass
class SpaceConfig:
    """Typed space settings; ``options`` are passed to the space (e.g. {"C": 8, "N": 1})."""

    name: str = "nb201"
    options: dict[str, Any] = field(default_factory=dict)


def space_from_config(settings: Space | SpaceConfig | Mapping[str, Any], ds: Any = None, *,
                      cpu_defaults: bool = False, num_classes: int | None = None,
                      input_size: int | None = None, in_channels: int | None = None) -> Space:
    """The one way from saved or configured space settings to a ``Space``.

    ``settings`` is a Space (returned as is), a ``SpaceConfig`` or ``{"name", "options"}`` mapping (a search
    configuration), or ``Space.config()`` output (``{"name", "C", ...}`` as arch.json records it). Options
    are the space's ``cpu_defaults`` (only when asked: a search) < the given settings; the class count, input
    size and image channels come from ``ds``
    (an ``ImageSet``), else from the keywords, wherever the settings leave them unset.
    """
    import dfnas.spaces  # noqa: F401  (registers every space)
    from dfnas.config import from_dict
    from dfnas.errors import ConfigError

    if isinstance(settings, Space):
        return settings
    if isinstance(settings, Mapping) and "options" in settings:
        settings = from_dict(SpaceConfig, dict(settings), "space")
    if isinstance(settings, SpaceConfig):
        name, opts = settings.name, dict(settings.options)
    elif isinstance(settings, Mapping) and settings.get("name"):
        name, opts = str(settings["name"]), {k: v for k, v in settings.items() if k != "name"}
    else:
        raise ConfigError(f"space settings must name the space, got {settings!r}")
    if cpu_defaults:
        opts = {**get_space_cls(name).cpu_defaults, **opts}
    if ds is not None:
        num_classes, input_size, in_channels = ds.num_classes, ds.input_size, ds.in_channels
    for key, value in (("num_classes", num_classes), ("input_size", input_size), ("in_channels", in_channels)):
        if value is not None:
            opts.setdefault(key, value)
    return build_space(name, **opts)
