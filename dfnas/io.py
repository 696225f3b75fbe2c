"""Atomic file writes, JSON-lines metric logs, and run metadata (versions, seeds, host)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dfnas.errors import DfnasError


def ensure_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check we can write into it; raise DfnasError otherwise."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DfnasError(f"{what} {str(p)!r} cannot be created: {e.strerror or e}") from None
    if not p.is_dir():
        raise DfnasError(f"{what} {str(p)!r} exists and is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise DfnasError(f"{what} {str(p)!r} is not writable; choose another --out or fix its permissions")
    return p


def check_writable(path: str | Path, what: str, hint: str) -> None:
    """DfnasError naming ``path`` unless files can be written there (into its nearest existing ancestor when it
    does not exist yet); ``hint`` says what to do instead."""
    p = Path(path)
    existing = next((q for q in (p, *p.parents) if q.exists()), p)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DfnasError(f"{what} {str(p)!r} is not writable; {hint}")


def _write_error(path: Path, e: OSError) -> DfnasError:
    """The DfnasError for a failed write of ``path``: a full disk, a directory that is not writable, or else."""
    if e.errno == errno.ENOSPC:
        return DfnasError(f"no space left on device while writing {str(path)!r}; free space and rerun "
                          "(completed files are kept and the run resumes)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DfnasError(f"cannot write {str(path)!r}: the directory {str(path.parent)!r} is not writable "
                          f"({e.strerror or e}); fix its permissions, or copy the directory somewhere writable and "
                          "rerun there")
    return DfnasError(f"cannot write {str(path)!r}: {e.strerror or e}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write via ``write(fh)`` to a temp file in the same directory, fsync, then rename over ``path``.

    A crash or full disk leaves the previous file (if any) untouched: readers never see half a file.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:  # nothing was created: a read-only directory or file system, a full disk
        raise _write_error(p, e) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_error(p, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_savez(path: str | Path, **arrays: Any) -> Path:
    import numpy as np

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def read_json(path: str | Path, what: str = "file") -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DfnasError(f"{what} {str(p)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise DfnasError(f"{what} {str(p)!r} is not valid JSON ({e})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def config_hash(cfg: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config (used to refuse resuming with a different config)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_info() -> dict[str, Any]:
    """Versions and host facts saved next to every output, for reproducibility."""
    import numpy as np
    import torch

    import dfnas

    return {
        "dfnas": dfnas.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        # the CPU and the vector instructions torch dispatches to: kernels differ between them, and so does the
        # order of float sums, so a long search can follow another trajectory on another machine
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }


class MetricLogger:
    """Appends one JSON object per line to ``path``; mirrors scalars to TensorBoard when installed.

    Lines are flushed immediately, so a killed run keeps every metric logged before the kill.
    """

    def __init__(self, path: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", buffering=1)
        except OSError as e:
            raise _write_error(self.path, e) from None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(str(self.path.parent / "tb"))
            except ImportError:
                self._tb = None

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        rec = {k: (float(v) if hasattr(v, "item") and not isinstance(v, (list, dict)) else v)
               for k, v in record.items()}
        self._fh.write(json.dumps(rec, default=str) + "\n")
        if self._tb is not None and step is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield records of a JSON-lines file, skipping a torn last line left by a kill."""
    p = Path(path)
    if not p.exists():
        return
    with open(p) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
