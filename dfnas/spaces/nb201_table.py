"""The NAS-Bench-201 ground truth (NATS-Bench topology, 200-epoch test accuracy) as a lookup table.

File: ``<assets>/nb201/nats_bench.csv`` (see the assets README), resolved by ``dfnas.assets.nb201_table_path``
(``DFNAS_NB201`` = the CSV itself, or ``DFNAS_ASSETS`` = the assets folder). Columns used:
``CIFAR10TestAccuracy200Epochs, CIFAR100TestAccuracy200Epochs, ImageNetTestAccuracy200Epochs,
ArchitectureString``; row i (0-based, header excluded) is benchmark index i. Accuracies are in percent.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfnas.assets import nb201_table_path
from dfnas.errors import ArchError, DfnasError
from dfnas.spaces.base import Arch
from dfnas.spaces.nb201 import NB201Space, function_key

NUM_CELLS = 5 ** 6
_COLUMNS = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "imagenet16": "ImageNetTestAccuracy200Epochs",
    "arch": "ArchitectureString",
}
# loaded tables by resolved path: the file is 3 MB and read by several stages of one run
_CACHE: dict[Path, NB201Table] = {}


class NB201Table:
    """All 15,625 NAS-Bench-201 cells with their test accuracies; look up by arch or string."""

    def __init__(self, strings: list[str], cifar10: np.ndarray, cifar100: np.ndarray, imagenet16: np.ndarray,
                 source: str = "") -> None:
        if not (len(strings) == len(cifar10) == len(cifar100) == len(imagenet16)):
            raise DfnasError("NAS-Bench-201 table: columns have different lengths")
        self.strings = strings
        self.cifar10, self.cifar100, self.imagenet16 = cifar10, cifar100, imagenet16
        self.source = source
        self._index = {s: i for i, s in enumerate(strings)}
        if len(self._index) != len(strings):
            raise DfnasError(f"NAS-Bench-201 table {source}: architecture strings are not unique")
        self._sorted_c10 = np.sort(cifar10)

    @classmethod
    def load(cls, path: str | Path | None = None) -> NB201Table:
        """Read the CSV (cached per path). Raises DfnasError naming the settings when it cannot be found."""
        p = nb201_table_path(path)
        if p is None or not p.is_file():
            where = f" (looked at {p})" if p is not None else ""
            raise DfnasError(f"NAS-Bench-201 table not found{where}: set DFNAS_NB201 to the nats_bench.csv file, "
                             "or DFNAS_ASSETS to the shared assets folder containing nb201/nats_bench.csv")
        key = p.resolve()
        if key not in _CACHE:
            _CACHE[key] = cls._read(key)
        return _CACHE[key]

    @classmethod
    def _read(cls, path: Path) -> NB201Table:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise DfnasError(f"NAS-Bench-201 table {path} is empty") from None
            missing = [c for c in _COLUMNS.values() if c not in header]
            if missing:
                raise DfnasError(f"NAS-Bench-201 table {path}: missing column(s) {missing}; header is {header}")
            col = {k: header.index(c) for k, c in _COLUMNS.items()}
            strings: list[str] = []
            acc: dict[str, list[float]] = {"cifar10": [], "cifar100": [], "imagenet16": []}
            for lineno, row in enumerate(reader, start=2):
                try:
                    for k in acc:
                        acc[k].append(float(row[col[k]]))
                    strings.append(row[col["arch"]].strip())
                except (IndexError, ValueError) as e:
                    raise DfnasError(f"NAS-Bench-201 table {path}, line {lineno}: bad row ({e})") from None
        if len(strings) != NUM_CELLS:
            raise DfnasError(f"NAS-Bench-201 table {path} has {len(strings)} rows, expected {NUM_CELLS}")
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in acc.items()}
        return cls(strings, arrays["cifar10"], arrays["cifar100"], arrays["imagenet16"], source=str(path))

    def __len__(self) -> int:
        return len(self.strings)

    def index(self, arch_or_string: Arch | str) -> int:
        """Benchmark index of an nb201 Arch or string (any spacing; canonicalised through the parser)."""
        if isinstance(arch_or_string, Arch):
            NB201Space.validate(arch_or_string)
            s = NB201Space.format(arch_or_string)
        else:
            s = arch_or_string.strip()
            if s not in self._index:
                s = NB201Space.format(NB201Space.parse(s))  # raises ArchError for a malformed string
        if s not in self._index:
            raise ArchError(f"architecture {s!r} is not in the NAS-Bench-201 table {self.source}")
        return self._index[s]

    def arch(self, index: int) -> Arch:
        """The Arch at benchmark index ``index``."""
        return NB201Space.parse(self.strings[index])

    def percentile(self, cifar10_accuracy: float) -> float:
        """Percent of the 15,625 cells whose CIFAR-10 accuracy is <= ``cifar10_accuracy``."""
        n = int(np.searchsorted(self._sorted_c10, cifar10_accuracy, side="right"))
        return 100.0 * n / len(self._sorted_c10)

    def row(self, index: int) -> dict[str, Any]:
        """Everything known about benchmark index ``index`` (see ``lookup``)."""
        return {"cifar10": float(self.cifar10[index]), "cifar100": float(self.cifar100[index]),
                "imagenet16": float(self.imagenet16[index]), "index": int(index),
                "percentile": self.percentile(float(self.cifar10[index])), "arch": self.strings[index]}

    def lookup(self, arch_or_string: Arch | str) -> dict[str, Any]:
        """``{cifar10, cifar100, imagenet16, index, percentile, arch}``: test accuracies (%), benchmark index,
        percentile = % of all cells with CIFAR-10 accuracy <= this one, canonical string."""
        return self.row(self.index(arch_or_string))

    def best(self, dataset: str = "cifar10") -> dict[str, Any]:
        """``lookup`` of the cell with the highest test accuracy on ``dataset`` (cifar10/cifar100/imagenet16)."""
        return self.row(int(np.argmax(self.accuracies(dataset))))

    def accuracies(self, dataset: str = "cifar10") -> np.ndarray:
        """Test accuracies (%) of all cells in benchmark-index order, shape (15625,)."""
        if dataset not in ("cifar10", "cifar100", "imagenet16"):
            raise DfnasError(f"unknown NAS-Bench-201 dataset {dataset!r}; expected cifar10, cifar100 or imagenet16")
        return getattr(self, dataset)

    def sample_stratified(self, n: int, generator: torch.Generator, dataset: str = "cifar10",
                          distinct: bool = True) -> list[Arch]:
        """``n`` distinct cells spread over the accuracy ranking, sorted by increasing accuracy.

        The cells are sorted by accuracy and cut into ``n`` equal-count strata; one cell is drawn uniformly
        from each. Every part of the distribution is then represented in proportion to its mass, including
        the long tail of weak cells, as wanted for ranking-correlation benchmarks.

        With ``distinct`` (the default) no two cells compute the same function (``function_key``): a draw
        equivalent to an earlier pick is replaced by the stratum's cell of a new function nearest to it in
        the accuracy order. The replacement draws no random number, so the other strata draw what
        ``distinct=False`` draws and the two samples differ only where the old one repeated a function.
        ``distinct=False`` is the sampling of results recorded before the key existed.
        """
        if not 1 <= n <= len(self):
            raise DfnasError(f"sample_stratified: n must be in 1..{len(self)}, got {n}")
        order = np.argsort(self.accuracies(dataset), kind="stable")
        edges = (np.arange(n + 1) * len(order)) // n  # integer bounds: every stratum has >= 1 cell
        picks: list[int] = []
        keys: set[str] = set()
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            j = lo + int(torch.randint(hi - lo, (1,), generator=generator))
            if distinct and function_key(self.arch(int(order[j]))) in keys:
                fresh = [c for c in range(lo, hi) if function_key(self.arch(int(order[c]))) not in keys]
                if not fresh:
                    raise DfnasError(f"sample_stratified: every cell of accuracy stratum {len(picks) + 1} of {n} "
                                     "computes the same function as an earlier pick; ask for fewer cells")
                j = min(fresh, key=lambda c: (abs(c - j), c))
            picks.append(int(order[j]))
            keys.add(function_key(self.arch(int(order[j]))))
        return [self.arch(i) for i in picks]
