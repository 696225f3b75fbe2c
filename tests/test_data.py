"""Real-data readers (npz, ImageFolder, CIFAR python batches) and the shard round trip."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dfnas.data import open_dataset, read_real
from dfnas.data.imageset import ImageSet
from dfnas.data.shards import read_shard, shard_path, write_shard
from dfnas.errors import DataError


def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8).numpy()


def test_read_npz(tmp_path: Path) -> None:
    imgs, labels = _images(6), np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=labels)
    ds = read_real(tmp_path / "d.npz")
    assert len(ds) == 6 and ds.num_classes == 3 and ds.input_size == 8 and ds.label_mode == "hard"
    assert torch.equal(ds.images, torch.from_numpy(imgs).permute(0, 3, 1, 2))
    assert ds.hard_labels.tolist() == labels.tolist()
    assert len(read_real(tmp_path / "d.npz", limit_per_class=1)) == 3
    np.savez(tmp_path / "bad.npz", pixels=imgs)
    with pytest.raises(DataError, match="'images'"):
        read_real(tmp_path / "bad.npz")
    np.savez(tmp_path / "float.npz", images=imgs.astype(np.float32), labels=labels)
    with pytest.raises(DataError, match="uint8"):
        read_real(tmp_path / "float.npz")
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable"):
        read_real(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="does not exist"):
        read_real(tmp_path / "missing.npz")


def test_read_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    imgs = _images(5)
    root = tmp_path / "tree"
    layout = {"cat": [0, 1], "dog": [2, 3, 4]}
    for cls, idx in layout.items():
        (root / cls).mkdir(parents=True)
        for i in idx:
            Image.fromarray(imgs[i]).save(root / cls / f"{i:04d}.png")  # PNG: lossless, exact pixels
    (root / "cat" / "readme.txt").write_text("ignored")
    ds = open_dataset(root)
    assert ds.class_names == ["cat", "dog"] and ds.hard_labels.tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(ds.images[2], torch.from_numpy(imgs[2]).permute(2, 0, 1))
    assert len(read_real(root, limit_per_class=1)) == 2
    Image.fromarray(_images(1, size=9)[0]).save(root / "dog" / "9999.png")
    with pytest.raises(DataError, match="different sizes"):
        read_real(root)
    (root / "dog" / "9999.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="cannot be read"):
        read_real(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-directories"):
        read_real(empty)


def test_read_cifar_batch_pickle(tmp_path: Path) -> None:
    imgs = _images(4, size=32)
    # CIFAR python format: rows of 3072 bytes, channel-major (R plane, G plane, B plane)
    data = imgs.transpose(0, 3, 1, 2).reshape(4, -1)
    root = tmp_path / "cifar"
    root.mkdir()
    with open(root / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [3, 1, 4, 1]}, fh)
    with open(root / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": data[:1], b"labels": [9]}, fh)
    ds = read_real(root)
    assert len(ds) == 5 and ds.num_classes == 10 and ds.class_names[3] == "cat"
    assert ds.hard_labels.tolist() == [3, 1, 4, 1, 9]
    assert torch.equal(ds.images[:4], torch.from_numpy(imgs).permute(0, 3, 1, 2))
    single = read_real(root / "data_batch_2")
    assert len(single) == 1
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        read_real(root)


def test_shard_round_trip_and_checks(tmp_path: Path) -> None:
    imgs = _images(3, size=10)
    t = np.eye(4, dtype=np.float32)[[0, 1, 2]]
    p = write_shard(shard_path(tmp_path, 1, 2), imgs, t, t * 3, np.array([1, 1, 1]))
    assert p.name == "r01_s0002.npz"
    back = read_shard(p)
    assert np.array_equal(back["images"], imgs) and back["rounds"].dtype == np.int16
    with pytest.raises(DataError, match="disagree"):
        write_shard(shard_path(tmp_path, 0, 0), imgs, t[:2], t[:2], np.zeros(2))
    assert not shard_path(tmp_path, 0, 0).exists()
    p.write_bytes(b"torn")
    with pytest.raises(DataError, match="corrupt"):
        read_shard(p)


def _mix_set(n: int = 12) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 10, 10), dtype=torch.uint8, generator=g)
    logits = torch.randn(n, 4, generator=g)
    return ImageSet(images, logits.softmax(1), 8, [f"c{i}" for i in range(4)], logits,
                    torch.zeros(n, dtype=torch.long), "distill", {})


def test_mix_batch_mixup_and_cutmix_follow_their_definitions():
    from dfnas.data.imageset import mix_batch
    from dfnas.errors import ConfigError

    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(6, generator=g)
    lam = float(torch.rand((), generator=g))
    mixed = mix_batch(x, "mixup", torch.Generator().manual_seed(5))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    cut = mix_batch(x, "cutmix", torch.Generator().manual_seed(5))
    from_a, from_b = (cut == x).all(1), (cut == x[perm]).all(1)  # (B, S, S): each pixel from one of the two
    assert bool((from_a | from_b).all())
    pasted = (~from_a).float().mean().item()  # share of pixels taken from the partner (box clipped at borders)
    assert 0 < pasted <= (1 - lam) + 0.1
    assert torch.equal(mix_batch(x, "none", g), x)
    with pytest.raises(ConfigError, match="mix 'mixupp' is not one of"):
        mix_batch(x, "mixupp", g)


def test_mixed_batches_are_reproducible_from_the_generator_state():
    from dfnas.data.imageset import iterate_batches

    ds = _mix_set()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first = [x for x, _ in iterate_batches(ds, 4, g, mix="cutmix")]
    g.set_state(state)
    again = [x for x, _ in iterate_batches(ds, 4, g, mix="cutmix")]
    plain = [x for x, _ in iterate_batches(ds, 4, torch.Generator().manual_seed(3))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, plain, strict=True))


def test_mix_needs_an_online_teacher(tmp_path):
    from dfnas.errors import ConfigError
    from dfnas.repro import make_generator
    from dfnas.search.base import build_method
    from dfnas.search.loop import LoopConfig, run_loop
    from dfnas.search.losses import Criterion
    from dfnas.spaces import build_space

    space = build_space("nb201", num_classes=4, input_size=8, C=2, N=1)
    m = build_method("darts", space, {}, make_generator(0, "m"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="needs an online teacher"):
        run_loop(m, _mix_set(), _mix_set(), LoopConfig(epochs=1, batch_size=4, mix="mixup"), Criterion("distill"),
                 tmp_path, torch.device("cpu"), "h", seed=0, progress=False)
    with pytest.raises(ConfigError, match="mix 'blend' is not one of"):
        LoopConfig(mix="blend").check()


def test_agreed_and_balanced_subsets_draw_per_class():
    # 3 classes x 6 images; targets cycle 0,1,2; the teacher agrees on images 0..11 and disagrees on 12..17
    n, k = 18, 3
    target = torch.arange(n) % k
    pred = torch.where(torch.arange(n) < 12, target, (target + 1) % k)
    logits = torch.nn.functional.one_hot(pred, k).float() * 5.0
    ds = ImageSet(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.nn.functional.one_hot(target, k).float(), 8,
                  ["a", "b", "c"], logits, label_mode="distill")
    sub = ds.agreed_subset(9, torch.Generator().manual_seed(0))
    assert len(sub) == 9
    assert torch.bincount(sub.targets.argmax(1), minlength=k).tolist() == [3, 3, 3]
    assert torch.equal(sub.logits.argmax(1), sub.targets.argmax(1))  # every kept image is recognized
    again = ds.agreed_subset(9, torch.Generator().manual_seed(0))
    assert torch.equal(sub.logits, again.logits) and torch.equal(sub.targets, again.targets)
    with pytest.raises(DataError, match=r"class 0 \(a\) has 4 images the teacher assigns to it, fewer than the 5"):
        ds.agreed_subset(15, torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="not a positive multiple of 3"):
        ds.agreed_subset(10, torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="needs stored teacher logits"):
        ImageSet(ds.images, ds.targets, 8, ds.class_names).agreed_subset(3, torch.Generator().manual_seed(0))
    # balanced_subset: the same per-class draw over every image, recognized or not, logits not needed
    plain = ImageSet(ds.images, ds.targets, 8, ds.class_names)
    bal = plain.balanced_subset(15, torch.Generator().manual_seed(0))
    assert torch.bincount(bal.targets.argmax(1), minlength=k).tolist() == [5, 5, 5]
    both = ds.balanced_subset(18, torch.Generator().manual_seed(0))
    assert torch.equal(both.logits, ds.logits)  # all 18 taken: the whole set, in its order
    with pytest.raises(DataError, match=r"class 0 \(a\) has 6 images, fewer than the 7"):
        plain.balanced_subset(21, torch.Generator().manual_seed(0))
