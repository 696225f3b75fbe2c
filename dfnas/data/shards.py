"""On-disk format of a synthesized dataset (also used by the unreal baselines).

    DIR/manifest.json                 resolved config, seed, versions, teacher identity, label_mode, ...
    DIR/shards/r{round:02d}_s{shard:04d}.npz
        images  uint8 (N, H, W, C)    the canvas (H, W >= input size)
        targets float32 (N, K)        target distribution the images were optimized towards
        logits  float32 (N, K)        teacher logits on the final (uint8, centre-cropped) images
        rounds  int16 (N,)            recursion round

Every shard is written atomically (temp file + rename), so a shard file either exists whole or not at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfnas.data.imageset import ImageSet
from dfnas.errors import DataError
from dfnas.io import atomic_savez, read_json

MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"r(\d{2})_s(\d{4})\.npz$")


def shard_path(root: str | Path, round_idx: int, shard_idx: int) -> Path:
    return Path(root) / "shards" / f"r{round_idx:02d}_s{shard_idx:04d}.npz"


def write_shard(path: str | Path, images: np.ndarray, targets: np.ndarray, logits: np.ndarray,
                rounds: np.ndarray) -> Path:
    """Atomically write one shard; shapes are checked so a bad shard is never written."""
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"shard images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if targets.shape[0] != n or logits.shape != targets.shape or rounds.shape != (n,):
        raise DataError(f"shard arrays disagree: images {images.shape}, targets {targets.shape}, "
                        f"logits {logits.shape}, rounds {rounds.shape}")
    return atomic_savez(path, images=images, targets=targets.astype(np.float32),
                        logits=logits.astype(np.float32), rounds=rounds.astype(np.int16))


SHARD_KEYS = ("images", "targets", "logits", "rounds")


def read_shard(path: str | Path, keys: tuple[str, ...] = SHARD_KEYS) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of one shard (only those are decompressed: leave out "images" to save memory)."""
    try:
        with np.load(path) as d:
            return {k: d[k] for k in keys}
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"shard {str(path)!r} is corrupt or incomplete ({e}); delete it and rerun to "
                        "regenerate it") from None


def list_shards(root: str | Path) -> list[tuple[int, int, Path]]:
    """(round, shard, path) of every complete shard, sorted."""
    out = []
    for p in (Path(root) / "shards").glob("r*_s*.npz"):
        m = SHARD_RE.search(p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(out)


def is_synthetic_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: str | Path) -> dict[str, Any]:
    return read_json(Path(root) / MANIFEST, what="dataset manifest")


def read_synthetic(root: str | Path, rounds: list[int] | None = None) -> ImageSet:
    """Load every shard of a synthesized dataset into one ImageSet (optionally only some rounds)."""
    root = Path(root)
    man = read_manifest(root)
    if not man.get("complete", False):
        raise DataError(f"dataset {str(root)!r} is incomplete (synthesis was interrupted); rerun the same "
                        "`dfnas synthesize` command to finish it")
    parts = [read_shard(p) for r, _, p in list_shards(root) if rounds is None or r in rounds]
    if not parts:
        raise DataError(f"dataset {str(root)!r} has no shards" + (f" for rounds {rounds}" if rounds else ""))
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    images = torch.from_numpy(np.ascontiguousarray(cat["images"].transpose(0, 3, 1, 2)))
    return ImageSet(images, torch.from_numpy(cat["targets"]), int(man["input_size"]),
                    list(man["class_names"]), torch.from_numpy(cat["logits"]),
                    torch.from_numpy(cat["rounds"].astype(np.int64)), man.get("label_mode", "distill"),
                    info={"source": str(root), "kind": man.get("method", "synthetic"),
                          "teacher": man.get("teacher", {}), "config_hash": man.get("config_hash")})
