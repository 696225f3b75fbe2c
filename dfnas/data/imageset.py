"""``ImageSet``: the in-memory dataset every stage trains on, with canvas crops and flips as augmentation.

Images are kept as uint8 (N, C, H, W). H and W may exceed the network input (the synthesis canvas, e.g.
40 px for 32 px inputs): training takes a random input-sized crop, evaluation the centre crop. Real images
of exactly the input size are zero-padded by ``pad`` first, which is the standard pad-4 random crop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dfnas.errors import ConfigError, DataError

LABEL_MODES = ("distill", "hard", "soft")


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    targets: torch.Tensor  # float32 (N, K): class probabilities (one-hot for hard labels)
    input_size: int
    class_names: list[str]
    logits: torch.Tensor | None = None  # float32 (N, K): teacher logits on the centre crop, for distillation
    rounds: torch.Tensor | None = None  # int64 (N,): recursion round that produced each image (0 for real)
    label_mode: str = "hard"  # which supervision search/training uses: "distill" | "hard" | "soft"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.targets.shape[0] != n or self.targets.dim() != 2:
            raise DataError(f"targets must be (N={n}, K), got {tuple(self.targets.shape)}")
        if self.logits is not None and self.logits.shape != self.targets.shape:
            raise DataError(f"logits shape {tuple(self.logits.shape)} != targets shape {tuple(self.targets.shape)}")
        if self.rounds is None:
            self.rounds = torch.zeros(n, dtype=torch.long)
        if self.label_mode not in LABEL_MODES:
            raise DataError(f"label_mode {self.label_mode!r} not in {LABEL_MODES}")
        if self.label_mode == "distill" and self.logits is None:
            raise DataError("label_mode 'distill' needs stored teacher logits")
        if min(self.images.shape[-2:]) < self.input_size:
            raise DataError(f"images of {tuple(self.images.shape[-2:])} px are smaller than the input size "
                            f"{self.input_size}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return int(self.targets.shape[1])

    @property
    def in_channels(self) -> int:
        """Image channels (3 for RGB, 1 for grayscale)."""
        return int(self.images.shape[1])

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.targets.argmax(1)

    def subset(self, idx: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.targets[idx], self.input_size, self.class_names,
                        None if self.logits is None else self.logits[idx], self.rounds[idx],
                        self.label_mode, dict(self.info))

    def agreed_subset(self, n: int, generator: torch.Generator) -> ImageSet:
        """``n`` images, ``n / K`` per target class (argmax of the targets), drawn uniformly among those whose
        stored teacher logits pick their target class: the images the teacher recognizes, class-balanced."""
        return self.balanced_subset(n, generator, recognized_only=True)

    def balanced_subset(self, n: int, generator: torch.Generator, recognized_only: bool = False) -> ImageSet:
        """``n`` images, ``n / K`` per target class (argmax of the targets), drawn uniformly within each class;
        ``recognized_only``: only among the images whose stored teacher logits pick their target class."""
        k = self.num_classes
        what = "agreed_subset" if recognized_only else "balanced_subset"
        if recognized_only and self.logits is None:
            raise DataError(f"{what} needs stored teacher logits; this dataset has none")
        if n < 1 or n % k:
            raise DataError(f"{what} takes n / {k} images per class; n={n} is not a positive multiple of {k}")
        target = self.targets.argmax(1)  # (N,)
        eligible = self.logits.argmax(1) == target if recognized_only else torch.ones_like(target, dtype=torch.bool)
        picked = []
        for c in range(k):
            pool = torch.nonzero(eligible & (target == c)).flatten()
            if len(pool) < n // k:
                which = "images the teacher assigns to it" if recognized_only else "images"
                raise DataError(f"class {c} ({self.class_names[c]}) has {len(pool)} {which}, fewer than the "
                                f"{n // k} asked for")
            picked.append(pool[torch.randperm(len(pool), generator=generator)[: n // k]])
        return self.subset(torch.cat(picked).sort().values)

    def split(self, held_out: float, generator: torch.Generator) -> tuple[ImageSet, ImageSet]:
        """Random (train, held-out) split; ``held_out`` is a fraction in (0, 1)."""
        n = len(self)
        k = int(round(n * held_out))
        if not 0 < held_out < 1 or k < 1 or n - k < 1:
            raise DataError(f"held-out fraction {held_out} of {n} images leaves "
                            f"{n - k} to train on and {k} held out; both must be at least 1")
        perm = torch.randperm(n, generator=generator)
        return self.subset(perm[k:]), self.subset(perm[:k])

    def check_compatible(self, num_classes: int, input_size: int, what: str = "dataset",
                         in_channels: int | None = None) -> None:
        """Raise DataError unless this set has ``num_classes`` classes, ``input_size`` inputs and (when given)
        ``in_channels`` channels."""
        if in_channels is not None and self.in_channels != in_channels:
            raise DataError(f"{what} has {self.in_channels}-channel images but the network takes {in_channels}")
        if self.num_classes != num_classes:
            raise DataError(f"{what} has {self.num_classes} classes but {num_classes} are expected")
        if self.input_size != input_size:
            raise DataError(f"{what} has {self.input_size}px inputs but {input_size}px are expected")
        if len(self) == 0:
            raise DataError(f"{what} is empty")
        present = int((self.hard_labels.bincount(minlength=num_classes) > 0).sum())
        if present < 2:
            raise DataError(f"{what} holds only {present} class; a classifier needs at least 2")

    def supervision(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-sample target for ``idx``: logits (distill), probabilities (soft) or class indices (hard)."""
        if self.label_mode == "distill":
            assert self.logits is not None
            return self.logits[idx]
        if self.label_mode == "soft":
            return self.targets[idx]
        return self.targets[idx].argmax(1)


def crop_batch(images: torch.Tensor, size: int, pad: int, generator: torch.Generator | None,
               flip: bool) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, size, size) in [0, 1].

    With a generator: a random ``size`` crop (after zero-padding by ``pad`` when H == size) and a random
    horizontal flip with probability 0.5. Without: the centre crop, no flip.
    """
    x = images.float().div_(255.0)
    b, _, h, w = x.shape
    if generator is None:
        top, left = (h - size) // 2, (w - size) // 2
        return x[:, :, top:top + size, left:left + size]
    if h == size and w == size and pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
        h, w = h + 2 * pad, w + 2 * pad
    tops = torch.randint(0, h - size + 1, (b,), generator=generator)
    lefts = torch.randint(0, w - size + 1, (b,), generator=generator)
    # gather crops with one advanced-indexing op: rows (B, size, 1), cols (B, 1, size)
    ar = torch.arange(size)
    rows = (tops[:, None] + ar)[:, :, None]
    cols = (lefts[:, None] + ar)[:, None, :]
    out = x.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out.contiguous()


MIX_MODES = ("none", "mixup", "cutmix")


def mix_batch(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Mix each image of ``x`` (B, C, S, S) with another image of the batch; the supervision is not mixed.

    Meant for distillation from an online teacher, which labels the mixed images themselves (function
    matching, Beyer et al. 2022): the mixed batch shows the student inputs between the stored images.
    ``mixup``: lam x + (1 - lam) x[perm]; ``cutmix``: a box of area (1 - lam) S^2 pasted from x[perm];
    lam ~ U(0, 1) (Beta(1, 1)), one per batch.
    """
    if mode not in MIX_MODES:
        raise ConfigError(f"mix {mode!r} is not one of {list(MIX_MODES)}")
    if mode == "none" or len(x) < 2:
        return x
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=generator).to(x.device)
    lam = float(torch.rand((), generator=generator))
    if mode == "mixup":
        return x * lam + x[perm] * (1.0 - lam)
    cut_h, cut_w = int(round(h * math.sqrt(1.0 - lam))), int(round(w * math.sqrt(1.0 - lam)))
    cy = int(torch.randint(0, h, (1,), generator=generator))  # box centre
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]  # only the box of the partners is gathered
    return out


def iterate_batches(ds: ImageSet, batch_size: int, generator: torch.Generator | None, augment: bool = True,
                    pad: int = 4, drop_last: bool = False, device: torch.device | str = "cpu",
                    mix: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images (B, C, S, S) float, supervision) batches; shuffled when a generator is given.

    ``mix`` (with a generator): images mixed within the batch (``mix_batch``); the supervision stays the
    unmixed images', so only an online teacher gives the mixed images their labels."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        x = crop_batch(ds.images[idx], ds.input_size, pad, generator if augment else None, flip=augment)
        if mix != "none" and generator is not None:
            x = mix_batch(x, mix, generator)
        yield x.to(device, non_blocking=True), ds.supervision(idx).to(device, non_blocking=True)
