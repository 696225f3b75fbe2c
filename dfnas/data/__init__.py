"""Datasets: the in-memory ``ImageSet``, the synthetic shard format, and real-data readers."""

from __future__ import annotations

from pathlib import Path

from dfnas.data.imageset import ImageSet, crop_batch, iterate_batches
from dfnas.data.readers import read_real
from dfnas.data.shards import is_synthetic_dir, read_synthetic


def open_dataset(path: str | Path, limit_per_class: int | None = None) -> ImageSet:
    """A synthesized dataset directory (has ``manifest.json``) or any real dataset ``read_real`` accepts."""
    if is_synthetic_dir(path):
        return read_synthetic(path)
    return read_real(path, limit_per_class)


__all__ = ["ImageSet", "crop_batch", "iterate_batches", "open_dataset", "read_real", "read_synthetic"]
