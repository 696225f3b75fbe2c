"""Readers for real image datasets (baselines and evaluation only): ImageFolder trees, the CIFAR-10
python batch files, and ``.npz`` files (``images`` uint8 NHWC, ``labels``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from dfnas.data.imageset import ImageSet
from dfnas.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _to_set(images: np.ndarray, labels: np.ndarray, names: list[str], source: str,
            num_classes: int | None = None) -> ImageSet:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{source}: images must be (N, H, W, C) with C in (1, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{source}: images must be uint8, got {images.dtype}")
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    k = num_classes or max(len(names), int(labels.max()) + 1 if len(labels) else 0)
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"{source}: labels must lie in [0, {k}), got [{labels.min()}, {labels.max()}]")
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    t = torch.nn.functional.one_hot(torch.from_numpy(labels), k).float()
    return ImageSet(x, t, input_size=int(images.shape[1]), class_names=names or [str(i) for i in range(k)],
                    label_mode="hard", info={"source": source, "kind": "real"})


def read_npz(path: str | Path, class_names: list[str] | None = None) -> ImageSet:
    p = Path(path)
    try:
        with np.load(p) as d:
            if "images" not in d or "labels" not in d:
                raise DataError(f"{str(p)!r} must contain arrays 'images' (uint8 NHWC) and 'labels'; "
                                f"found {list(d.keys())}")
            images, labels = d["images"], d["labels"]
    except (OSError, ValueError) as e:
        raise DataError(f"{str(p)!r} is not a readable .npz file ({e})") from None
    return _to_set(images, labels, class_names or [], str(p), len(class_names) if class_names else None)


def read_imagefolder(path: str | Path, limit_per_class: int | None = None) -> ImageSet:
    """``root/<class>/<image>``; classes sorted by name unless they are the CIFAR-10 names (CIFAR order)."""
    from PIL import Image

    from dfnas.teachers.hub import CIFAR10_CLASSES

    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{str(root)!r} has no class sub-directories (expected root/<class>/<image>)")
    if sorted(CIFAR10_CLASSES) == classes:
        classes = list(CIFAR10_CLASSES)
    imgs, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_EXTS)
        for f in files[:limit_per_class]:
            try:
                with Image.open(f) as im:
                    imgs.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise DataError(f"image {str(f)!r} cannot be read ({e})") from None
            labels.append(ci)
    if not imgs:
        raise DataError(f"{str(root)!r} holds no images with extensions {IMAGE_EXTS}")
    shapes = {a.shape for a in imgs}
    if len(shapes) != 1:
        raise DataError(f"{str(root)!r}: images have different sizes {sorted(shapes)[:3]}; resize them first")
    return _to_set(np.stack(imgs), np.array(labels), classes, str(root))


def read_cifar_batches(path: str | Path) -> ImageSet:
    """A directory with ``data_batch_*``/``test_batch`` pickles (or a single batch file)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("data_batch_*")) or sorted(p.glob("test_batch"))
    if not files:
        raise DataError(f"{str(p)!r} holds no CIFAR-10 python batch files (data_batch_1..5 or test_batch)")
    xs, ys = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            ys.append(np.asarray(d[b"labels"]))
        except (OSError, KeyError, pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{str(f)!r} is not a CIFAR-10 python batch file ({type(e).__name__})") from None
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    from dfnas.teachers.hub import CIFAR10_CLASSES

    return _to_set(np.concatenate(xs), np.concatenate(ys), list(CIFAR10_CLASSES), str(p), 10)


def read_real(path: str | Path, limit_per_class: int | None = None) -> ImageSet:
    """Dispatch on what ``path`` is: ``.npz`` file, CIFAR batch files, or an ImageFolder tree."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"dataset {str(p)!r} does not exist")
    if p.suffix == ".npz":
        from dfnas.teachers.hub import CIFAR10_CLASSES

        ds = read_npz(p, CIFAR10_CLASSES if "cifar" in str(p).lower() else None)
    elif (p.is_file() and "batch" in p.name) or (p.is_dir() and (any(p.glob("data_batch_*"))
                                                                 or (p / "test_batch").exists())):
        ds = read_cifar_batches(p)
    elif p.is_dir():
        ds = read_imagefolder(p, limit_per_class)
    else:
        raise DataError(f"dataset {str(p)!r}: expected a .npz file, CIFAR-10 batch files or an ImageFolder tree")
    if limit_per_class is not None and p.suffix == ".npz":
        keep = torch.cat([torch.nonzero(ds.hard_labels == c).flatten()[:limit_per_class]
                          for c in range(ds.num_classes)]).sort().values
        ds = ds.subset(keep)
    return ds
