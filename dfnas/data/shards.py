"""On-disk format of a synthesized dataset (also used by the unreal baselines).

    DIR/manifest.json                 resolved config, seed, versions, teacher identity, label_mode, ...
    DIR/shards/r{round:02d}_s{shard:04d}.npz
        images  uint8 (N, H, W, C)    the canvas (H, W >= input size)
        targets float32 (N, K)        target distribution the images were optimized towards
        logits  float32 (N, K)        teacher logits on the final (uint8, centre-cropped) images
        rounds  int16 (N,)            recursion round

Every shard is written atomically (temp file + rename), so a shard file either exists whole or not at all.
The manifest records each shard's image count and SHA-256 (``shards``: {file name: {"images", "sha256"}}),
so readers and a rerun of ``synthesize`` detect a shard that went missing or was damaged afterwards.
"""

from __future__ import annotations

import hashlib
import io
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


def read_shard(path: str | Path, keys: tuple[str, ...] = SHARD_KEYS, data: bytes | None = None
               ) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of one shard (only those are decompressed: leave out "images" to save memory).

    ``data``: the file's bytes when the caller has already read them (to check a checksum).
    """
    try:
        with np.load(io.BytesIO(data) if data is not None else path) as d:
            return {k: d[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(f"shard {str(path)!r} is corrupt or incomplete ({e}); rerun the same `dfnas synthesize` "
                        "command to regenerate it") from None


def shard_record(path: str | Path, count: int) -> dict[str, Any]:
    """The manifest's entry for a shard file just written: its image count and SHA-256."""
    return {"images": int(count), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def expected_shards(man: dict[str, Any]) -> dict[tuple[int, int], int] | None:
    """{(round, shard): image count} the manifest's settings imply; None when the manifest lacks them."""
    per_round = man.get("images_per_round")
    batch = (man.get("config") or {}).get("batch_size")
    if not isinstance(per_round, list) or not isinstance(batch, int) or batch < 1:
        return None
    return {(r, s): min(batch, n - s * batch) for r, n in enumerate(per_round) for s in range(-(-n // batch))}


def load_checked_shard(root: str | Path, r: int, s: int, count: int, record: dict[str, Any] | None,
                       keys: tuple[str, ...] = SHARD_KEYS) -> dict[str, np.ndarray]:
    """Shard (r, s) of ``root`` after checking it against the manifest: it exists, its SHA-256 equals the
    recorded one (when recorded) and it holds ``count`` images. DataError saying what is wrong otherwise."""
    path = shard_path(root, r, s)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"shard {path.name} is missing") from None
    except OSError as e:
        raise DataError(f"shard {path.name} cannot be read ({e.strerror or e})") from None
    if record and record.get("sha256") and hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DataError(f"shard {path.name} is damaged (its SHA-256 differs from the one in the manifest)")
    arrays = read_shard(path, tuple(dict.fromkeys((*keys, "rounds"))), data)
    if len(arrays["rounds"]) != count:
        raise DataError(f"shard {path.name} holds {len(arrays['rounds'])} images, the manifest expects {count}")
    return {k: arrays[k] for k in keys}


def shard_problems(root: str | Path, man: dict[str, Any],
                   which: list[tuple[int, int]] | None = None) -> dict[tuple[int, int], str]:
    """{(round, shard): what is wrong} for the expected shards (``which``: only those) that are missing,
    damaged or of the wrong size; empty when every one checks out."""
    expected = expected_shards(man) or {}
    records = man.get("shards") or {}
    problems = {}
    for rs in (which if which is not None else sorted(expected)):
        r, s = rs
        try:
            load_checked_shard(root, r, s, expected[rs], records.get(shard_path(root, r, s).name), ("rounds",))
        except DataError as e:
            problems[rs] = str(e)
    return problems


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
    expected = expected_shards(man)
    if expected is None:  # a manifest without the settings that name its shards: read what is there
        parts = [read_shard(p) for r, _, p in list_shards(root) if rounds is None or r in rounds]
    else:
        parts = _read_expected(root, man, expected, rounds)
    if not parts:
        raise DataError(f"dataset {str(root)!r} has no shards" + (f" for rounds {rounds}" if rounds else ""))
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    images = torch.from_numpy(np.ascontiguousarray(cat["images"].transpose(0, 3, 1, 2)))
    return ImageSet(images, torch.from_numpy(cat["targets"]), int(man["input_size"]),
                    list(man["class_names"]), torch.from_numpy(cat["logits"]),
                    torch.from_numpy(cat["rounds"].astype(np.int64)), man.get("label_mode", "distill"),
                    info={"source": str(root), "kind": man.get("method", "synthetic"),
                          "teacher": man.get("teacher", {}), "config_hash": man.get("config_hash")})


def _read_expected(root: Path, man: dict[str, Any], expected: dict[tuple[int, int], int],
                   rounds: list[int] | None) -> list[dict[str, np.ndarray]]:
    """The expected shards of ``rounds`` (all when None), each checked against the manifest; DataError naming
    every missing or damaged shard and how many images the dataset lacks (a short dataset is never used)."""
    records = man.get("shards") or {}
    parts, problems, lacking = [], [], 0
    for (r, s), count in sorted(expected.items()):
        if rounds is not None and r not in rounds:
            continue
        try:
            parts.append(load_checked_shard(root, r, s, count, records.get(shard_path(root, r, s).name)))
        except DataError as e:
            problems.append(str(e))
            lacking += count
    if problems:
        total = sum(c for (r, _), c in expected.items() if rounds is None or r in rounds)
        shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
        raise DataError(f"dataset {str(root)!r} is damaged: {lacking} of the {total} images its manifest lists "
                        f"are missing or unreadable ({shown}); rerun the same `dfnas synthesize` command (or "
                        "`dfnas run`) to regenerate them")
    return parts
