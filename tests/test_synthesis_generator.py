"""Few-step generator synthesis: determinism, resume to the same bytes, rounds, state errors, similarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_synthesis import _all_shards as _shards
from test_synthesis import _run, _run_killed

from dfnas.data.shards import list_shards, read_manifest, read_synthetic
from dfnas.errors import ConfigError, DataError
from dfnas.synthesis import make_config
from dfnas.synthesis.generator import ConditionalGenerator, adversarial_loss
from dfnas.synthesis.inspect import class_similarity, similarity_spearman
from dfnas.synthesis.runner import data_identity
from dfnas.synthesis.toy import toy_teacher


@pytest.fixture(scope="module")
def teacher():
    return toy_teacher(num_classes=4, input_size=8, seed=0)


def _cfg(*overrides: str):
    return make_config("tiny", ["plots=false", "method=generator", "generator.warmup_batches=2",
                                "generator.warmup_steps=2", "generator.width=4", "generator.latent_dim=8",
                                *overrides])


@pytest.fixture(scope="module")
def gen_dataset(tmp_path_factory, teacher) -> Path:
    return _run(_cfg(), tmp_path_factory.mktemp("gen") / "ds", teacher)


def test_generator_dataset_format_and_rounds(gen_dataset: Path, teacher) -> None:
    man = read_manifest(gen_dataset)
    assert man["complete"] and man["method"] == "generator" and man["label_mode"] == "distill"
    assert man["canvas_size"] == 12  # 8 px * 1.25 rounded up to a multiple of 4
    assert man["config"]["lowres_fraction"] == 0.0 and man["config"]["generator"]["width"] == 4
    ds = read_synthetic(gen_dataset)
    assert ds.images.shape == (16, 3, 12, 12) and ds.rounds.tolist() == [0] * 8 + [1] * 8
    assert torch.equal(ds.targets[:8], torch.nn.functional.one_hot(torch.arange(8) % 4, 4).float())
    t = man["config"]["calibration_temperature"]
    with torch.no_grad():  # round 1 is conditioned on the teacher's soft predictions for round 0
        prev = teacher(ds.images[:8, :, 2:10, 2:10].float() / 255)
    assert torch.allclose(ds.targets[8:], torch.softmax(prev / t, 1), atol=1e-5)
    assert (gen_dataset / "state" / "generator_rank0.pt").is_file()
    assert len({ds.images[i].numpy().tobytes() for i in range(16)}) == 16  # no two images alike


def test_generator_is_deterministic_and_resumes_to_the_same_bytes(tmp_path: Path, teacher, gen_dataset: Path,
                                                                  monkeypatch) -> None:
    out = tmp_path / "resumed"
    # dies in round 1, after the generator has carried state over three shards
    _run_killed(_cfg(), out, teacher, monkeypatch, shards=3)
    assert len(list_shards(out)) == 3
    _run(_cfg(), out, teacher)
    a, b = _shards(gen_dataset), _shards(out)
    assert a.keys() == b.keys()
    for key in a:
        for name in a[key]:
            assert np.array_equal(a[key][name], b[key][name]), (key, name)


def test_shard_written_but_state_behind_is_made_again_identically(tmp_path: Path, teacher, gen_dataset: Path,
                                                                   monkeypatch) -> None:
    import dfnas.synthesis.methods as methods

    real_after, calls = methods.GeneratorMethod.after_shard, []

    def dying_after(self, out, rank, position):
        if position == 2:  # shard 2 is on disk, the state saying so is not
            raise KeyboardInterrupt
        calls.append(position)
        return real_after(self, out, rank, position)

    monkeypatch.setattr(methods.GeneratorMethod, "after_shard", dying_after)
    out = tmp_path / "behind"
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), out, teacher)
    assert len(list_shards(out)) == 2
    monkeypatch.setattr(methods.GeneratorMethod, "after_shard", real_after)
    _run(_cfg(), out, teacher)
    a, b = _shards(gen_dataset), _shards(out)
    assert all(np.array_equal(a[k]["images"], b[k]["images"]) for k in a)


def test_corrupt_or_foreign_generator_state_is_refused(tmp_path: Path, teacher, monkeypatch) -> None:
    import dfnas.synthesis.runner as runner

    out = tmp_path / "bad"
    real_write = runner.write_shard

    def kill(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_shard", kill)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), out, teacher)
    monkeypatch.setattr(runner, "write_shard", real_write)
    state = out / "state" / "generator_rank0.pt"
    good = state.read_bytes()
    state.write_bytes(b"garbage")
    with pytest.raises(DataError, match="generator state .* is corrupt"):
        _run(_cfg(), out, teacher)
    st = torch.load(__import__("io").BytesIO(good), weights_only=True)
    st["config_hash"] = "0000"
    torch.save(st, state)
    with pytest.raises(DataError, match="another configuration"):
        _run(_cfg(), out, teacher)


def test_generator_config_errors(teacher, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="generator.steps"):
        _cfg("generator.steps=0")
    with pytest.raises(ConfigError, match="generator.lr"):
        _cfg("generator.lr=.inf")
    with pytest.raises(ConfigError, match="divisible by 4"):
        _run(_cfg("canvas_size=10"), tmp_path / "c", teacher)
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        _cfg("generator.step=3")


def test_generator_output_shape_and_range() -> None:
    torch.manual_seed(0)
    g = ConditionalGenerator(num_classes=5, canvas_size=16, channels=1, latent_dim=6, width=3)
    with torch.no_grad():
        out = g(torch.randn(7, 6), torch.softmax(torch.randn(7, 5), 1))
    assert out.shape == (7, 1, 16, 16) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ConfigError, match="divisible by 4"):
        ConditionalGenerator(num_classes=5, canvas_size=18)


def test_adversarial_loss_counts_only_agreeing_images() -> None:
    t = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    same = adversarial_loss(t.clone(), t)  # identical predictions: JS = 0
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # image 0 agrees (class 0), image 1 does not
    p_s, p_t = torch.softmax(s[0], 0), torch.softmax(t[0], 0)
    m = (p_s + p_t) / 2
    js = 0.5 * float((p_s * (p_s / m).log()).sum() + (p_t * (p_t / m).log()).sum())
    assert float(adversarial_loss(s, t)) == pytest.approx(-js, rel=1e-5)


def test_class_similarity_on_a_constructed_example() -> None:
    # two images of class 0 and one of class 1 over 3 classes; class 2 has no image
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.3, 0.6, 0.1]])
    s = class_similarity(probs, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(s[0], torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    assert torch.allclose(s[1], torch.tensor([0.3, 0.6, 0.1], dtype=torch.float64))
    assert bool(torch.isnan(s[2]).all())
    a = torch.tensor([[0, 1, 2], [3, 0, 4], [5, 6, 0]], dtype=torch.float64)
    assert similarity_spearman(a, a * 10 + 1) == pytest.approx(1.0)
    assert similarity_spearman(a, -a) == pytest.approx(-1.0)
    # off-diagonal values 1..6 against the ranks 1,2,3,4,6,5: rho = 1 - 6 * 2 / (6 * 35) = 0.942857
    b = torch.tensor([[9, 1, 2], [3, 9, 4], [6, 5, 9]], dtype=torch.float64)
    assert similarity_spearman(a, b) == pytest.approx(1 - 12 / 210)


def test_normalized_output_has_the_teachers_input_statistics(tmp_path: Path, teacher, gen_dataset: Path) -> None:
    gen = ConditionalGenerator(4, 12, 3, latent_dim=8, width=4, output="normalized", mean=(0.2, 0.5, 0.7),
                               std=(0.1, 0.2, 0.05)).train()
    z, y = torch.randn(64, 8), torch.nn.functional.one_hot(torch.arange(64) % 4, 4).float()
    out = gen(z, y)  # (64, 3, 12, 12): per channel, batch mean/std equal the declared ones by construction
    assert torch.allclose(out.mean((0, 2, 3)), torch.tensor([0.2, 0.5, 0.7]), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.tensor([0.1, 0.2, 0.05]), atol=1e-3)
    with pytest.raises(ConfigError, match="generator.output"):
        _cfg("generator.output=tanh")
    ds = _run(_cfg("generator.output=normalized"), tmp_path / "norm", teacher)
    man, old = read_manifest(ds), read_manifest(gen_dataset)
    # the original output keeps the hash it had before the option existed; another output is another dataset
    assert man["config_hash"] != old["config_hash"]
    assert "output" not in data_identity(old["config"], old["teacher"])["config"]["generator"]
    assert data_identity(man["config"], man["teacher"])["config"]["generator"]["output"] == "normalized"
    assert man["config"]["generator"]["output"] == "normalized"
    assert not torch.equal(read_synthetic(ds).images, read_synthetic(gen_dataset).images)


def test_redraws_replace_unrecognized_images_and_keep_the_recognized_ones(tmp_path: Path, monkeypatch) -> None:
    import json

    # a toy teacher whose classes a briefly trained generator reaches only sometimes
    teacher = toy_teacher(num_classes=4, input_size=8, seed=1)
    fast = ("generator.lr=0.1", "generator.latent_lr=0.5")
    plain = read_synthetic(_run(_cfg(*fast), tmp_path / "plain", teacher))
    agree = plain.logits.argmax(1) == plain.targets.argmax(1)
    assert 0 < int(agree[:8].sum()) < 8  # round 0: some first draws recognized, not all
    out = _run(_cfg(*fast, "generator.redraws=6"), tmp_path / "redrawn", teacher)
    ds = read_synthetic(out)
    log = [json.loads(line) for line in (out / "synthesis_log.jsonl").read_text().splitlines()]
    done = [r for r in log if r.get("event") == "shard_done"]
    assert sum(r["redrawn_images"] for r in done) > 0
    # the stored logits are the teacher's on the stored images (centre crops); the images still unrecognized
    # are the ones the log counts
    with torch.no_grad():
        again = teacher(ds.images[:, :, 2:10, 2:10].float() / 255)
    assert torch.allclose(ds.logits, again, atol=1e-5)
    recognized = ds.logits.argmax(1) == ds.targets.argmax(1)
    assert int((~recognized).sum()) == sum(r["unrecognized"] for r in done)
    assert int(recognized[:8].sum()) > int(agree[:8].sum())  # round 0, same targets: more recognized
    # redraws do not train the meta generator: round 0's images recognized at the first draw are unchanged
    assert torch.equal(ds.targets[:8], plain.targets[:8])
    assert torch.equal(ds.images[:8][agree[:8]], plain.images[:8][agree[:8]])
    # a redrawing run resumes to the same bytes (the redraws draw from the shard's own generators)
    resumed = tmp_path / "resumed"
    _run_killed(_cfg(*fast, "generator.redraws=6"), resumed, teacher, monkeypatch, shards=2)
    _run(_cfg(*fast, "generator.redraws=6"), resumed, teacher)
    a, b = _shards(out), _shards(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k][n], b[k][n]) for k in a for n in a[k])
    # no redraws is the dataset it was before the option existed (same hash); redraws make another dataset
    man, old = read_manifest(out), read_manifest(tmp_path / "plain")
    assert man["config_hash"] != old["config_hash"] and man["config"]["generator"]["redraws"] == 6
    assert "redraws" not in data_identity(old["config"], old["teacher"])["config"]["generator"]
    with pytest.raises(ConfigError, match="generator.redraws must be >= 0"):
        _cfg("generator.redraws=-1")
