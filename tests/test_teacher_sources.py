"""Where a command's teacher comes from: explicit flags, or the manifest of the dataset it acts on.

A ``file.py:factory`` teacher needs its weights; every command taking a teacher takes the same declarations
(``--mean/--std/--in-channels/--input-size``); a dataset's teacher (weights found from any working directory,
SHA-256 checked) is reused by ``inspect``, ``search`` and ``train``; TorchScript teachers keep their BatchNorm
layers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dfnas.cli import main
from dfnas.data.shards import read_manifest, read_synthetic
from dfnas.errors import TeacherError
from dfnas.io import sha256_file
from dfnas.synthesis.toy import toy_teacher
from dfnas.teachers import TeacherConfig, load_teacher

# a few steps of an untrained-looking toy inversion agree with the targets at chance level: expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*agrees with the targets:UserWarning")

MODELS = '''
import torch
from dfnas.synthesis.toy import ToyNet, toy_teacher

def build():
    torch.manual_seed(0)  # an untrained net: its weights come from --weights
    return ToyNet(num_classes=4)

def build_gray():
    torch.manual_seed(0)
    return ToyNet(num_classes=4, in_channels=1)

def trained():
    return toy_teacher(num_classes=4, input_size=32, seed=2).model  # loads its own weights
'''

TINY = ["--preset", "tiny", "--set", "steps=2", "--set", "plots=false", "--num-images", "8", "--device", "cpu",
        "--quiet"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("models") / "nets.py"
    p.write_text(MODELS)
    return p


def _gray_state(seed: int) -> dict[str, torch.Tensor]:
    from dfnas.synthesis.toy import ToyNet

    torch.manual_seed(seed)
    return ToyNet(num_classes=4, in_channels=1).state_dict()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ckpt") / "toy.pt"
    torch.save(toy_teacher(num_classes=4, input_size=32, seed=2).model.state_dict(), p)
    return p


def _npz(path: Path, n: int = 32, size: int = 32, channels: int = 3, labels: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    np.savez(path, images=images, labels=np.arange(n) % 4 if labels is None else labels)
    return path


def _stored_entropy(ds: Path) -> float:
    """Mean entropy of the teacher's stored logits: what ``inspect`` must measure with the same teacher."""
    p = torch.softmax(read_synthetic(ds).logits.double(), 1)
    return float(-(p * p.clamp_min(1e-30).log()).sum(1).mean())


def _inspect(ds: Path, capsys, *flags: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(ds), "--device", "cpu", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_factory_teacher_without_weights_is_refused(models: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(TeacherError, match=r"nets.py:build.*no weights.*--weights.*--factory-loads-weights"):
        load_teacher(TeacherConfig(name=f"{models}:build"))
    t = load_teacher(TeacherConfig(name=f"{models}:trained", factory_loads_weights=True))
    assert t.num_classes == 4 and t.spec.sha256 == ""
    data = _npz(tmp_path / "d.npz")
    assert main(["eval-teacher", "--teacher", f"{models}:build", "--data", str(data), "--device", "cpu"]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["eval-teacher", "--teacher", f"{models}:trained", "--factory-loads-weights", "--data", str(data),
                 "--device", "cpu"]) == 0
    # `search` names a teacher: it needs the weights too (the dataset here records none)
    assert main(["search", "--data", str(data), "--out", str(tmp_path / "s"), "--teacher", f"{models}:build",
                 "--quiet"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_commands_on_a_dataset_use_its_teacher_from_any_directory(models: Path, ckpt: Path, tmp_path: Path,
                                                                  monkeypatch, capsys) -> None:
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    shutil.copy(ckpt, made / "ckpt.pt")
    ds = tmp_path / "ds"
    monkeypatch.chdir(made)  # a relative --weights path
    assert main(["synthesize", "--teacher", f"{models}:build", "--weights", "ckpt.pt", "--out", str(ds), *TINY]) == 0
    man = read_manifest(ds)
    assert man["teacher"]["source"] == str(made / "ckpt.pt") and man["teacher"]["sha256"] == sha256_file(ckpt)
    assert man["config"]["teacher"]["weights"] == str(made / "ckpt.pt")
    monkeypatch.chdir(elsewhere)
    rep = _inspect(ds, capsys)  # the dataset's own teacher, with its weights
    assert rep["teacher"] == f"{models}:build"
    assert rep["metrics"]["agreement"] == pytest.approx(np.mean(man["summary"]["agreement_per_round"]))
    assert rep["metrics"]["mean_entropy"] == pytest.approx(_stored_entropy(ds))
    # the same teacher named on the command line: the weights still come from the manifest
    assert _inspect(ds, capsys, "--teacher", f"{models}:build")["metrics"] == rep["metrics"]
    search = ["search", "--data", str(ds), "--out", str(tmp_path / "s"), "--teacher", f"{models}:build",
              "--method", "spos", "--epochs", "1", "--quiet", "--set", "space.C=2", "--set", "batch_size=4",
              "--set", "spos.population=2", "--set", "spos.generations=1", "--set", "spos.eval_batches=1",
              "--set", "spos.bn_batches=1", "--nb201-table", str(tmp_path / "missing.csv")]
    assert main(search) == 0
    online = json.loads((tmp_path / "s" / "config.json").read_text())["online_teacher"]
    assert online["sha256"] == sha256_file(ckpt) and online["source"] == str(made / "ckpt.pt")
    assert main(["train", "--arch", str(tmp_path / "s" / "arch.json"), "--data", str(ds), "--out",
                 str(tmp_path / "t"), "--teacher", f"{models}:build", "--quiet", "--epochs", "1",
                 "--set", "max_steps=1", "--set", "batch_size=4", "--set", "online.enabled=false"]) == 0
    online = json.loads((tmp_path / "t" / "config.json").read_text())["online_teacher"]
    assert online["sha256"] == sha256_file(ckpt)
    # data-free (online) training without --teacher distils from the dataset's teacher
    from dfnas.train.api import manifest_teacher

    assert manifest_teacher(read_synthetic(ds), torch.device("cpu")).spec.sha256 == sha256_file(ckpt)


def test_changed_teacher_weights_are_refused(models: Path, ckpt: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "ckpt.pt"
    shutil.copy(ckpt, weights)
    ds = tmp_path / "ds"
    assert main(["synthesize", "--teacher", f"{models}:build", "--weights", str(weights), "--out", str(ds),
                 *TINY]) == 0
    torch.save(toy_teacher(num_classes=4, input_size=32, seed=5).model.state_dict(), weights)
    capsys.readouterr()
    assert main(["inspect", str(ds), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and str(weights) in err and "manifest" in err and "Traceback" not in err
    # explicit weights are the user's choice: not checked against the manifest
    assert _inspect(ds, capsys, "--weights", str(ckpt))["metrics"]["images"] == 8


def test_declared_normalization_reaches_every_command(models: Path, ckpt: Path, tmp_path: Path, capsys) -> None:
    data = _npz(tmp_path / "d.npz")
    with np.load(data) as d:
        x = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255

    def predict(mean: float | None) -> torch.Tensor:
        kw = {"mean": [mean] * 3, "std": [mean] * 3} if mean is not None else {}
        return load_teacher(TeacherConfig(name=f"{models}:build", weights=str(ckpt), **kw)).predict(x).argmax(1)

    labels = predict(0.5)  # the classes the teacher gives under its own normalization
    labels[-4:] = torch.arange(4)  # every class present
    data = _npz(tmp_path / "d.npz", labels=labels.numpy())

    def top1(mean: float | None) -> float:
        return float((predict(mean) == labels).float().mean())

    assert top1(0.5) > top1(None) + 0.2  # another normalization: another classifier
    norm = ["--mean", "[0.5,0.5,0.5]", "--std", "0.5,0.5,0.5"]
    common = ["--teacher", f"{models}:build", "--weights", str(ckpt), "--device", "cpu", "--json"]
    capsys.readouterr()
    assert main(["eval-teacher", "--data", str(data), *common, *norm]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(top1(0.5))
    assert main(["eval-teacher", "--data", str(data), *common]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(top1(None))
    # a dataset made by that teacher is inspected with it; a real set takes the declarations as flags
    ds = tmp_path / "ds"
    assert main(["synthesize", "--teacher", f"{models}:build", "--weights", str(ckpt), "--out", str(ds), *norm,
                 *TINY]) == 0
    rep = _inspect(ds, capsys)
    assert rep["metrics"]["mean_entropy"] == pytest.approx(_stored_entropy(ds))
    rep = _inspect(data, capsys, "--teacher", f"{models}:build", "--weights", str(ckpt), *norm)
    assert rep["metrics"]["agreement"] == pytest.approx(top1(0.5))


def test_a_one_channel_teacher_is_evaluated_and_inspected(models: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "gray.pt"
    torch.save(_gray_state(3), weights)
    data = _npz(tmp_path / "gray.npz", size=28, channels=1)
    teacher = ["--teacher", f"{models}:build_gray", "--weights", str(weights), "--device", "cpu"]
    capsys.readouterr()
    assert main(["eval-teacher", "--data", str(data), *teacher]) == 2
    assert "--in-channels" in capsys.readouterr().err  # the forward failed on 3-channel inputs
    gray = ["--in-channels", "1", "--input-size", "28", "--mean", "[0.5]", "--std", "[0.5]"]
    assert main(["eval-teacher", "--data", str(data), *teacher, *gray, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 32
    ds = tmp_path / "ds"
    assert main(["synthesize", "--out", str(ds), *teacher, *gray, *TINY]) == 0
    rep = _inspect(ds, capsys)  # channels, size and normalization from the manifest
    assert rep["metrics"]["mean_entropy"] == pytest.approx(_stored_entropy(ds))
    assert _inspect(data, capsys, *teacher, *gray)["metrics"]["images"] == 32


def test_the_run_command_takes_the_teacher_flags(models: Path) -> None:
    from dfnas._cli import run as run_cli
    from dfnas.cli import build_parser

    args = build_parser().parse_args(["run", "--teacher", f"{models}:trained", "--factory-loads-weights",
                                      "--mean", "[0.5,0.5,0.5]", "--in-channels", "3"])
    assert args.func is run_cli._run and args.factory_loads_weights and args.in_channels == 3


@pytest.mark.parametrize("how", ["script", "trace"])
def test_a_torchscript_teacher_keeps_its_batchnorm_layers(tmp_path: Path, capsys, how: str) -> None:
    from dfnas.synthesis import make_config, synthesize
    from dfnas.synthesis.losses import BNStatsLoss
    from dfnas.teachers.teacher import Teacher, TeacherSpec

    model = toy_teacher(num_classes=4, input_size=32, seed=2).model
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, torch.rand(2, 3, 32, 32))
    in_memory = Teacher(scripted, TeacherSpec(name=how, num_classes=4))  # not saved: still a ScriptModule
    assert len(in_memory.batchnorms()) == 2 and "TorchScript" in (in_memory.bn_term_unavailable() or "")
    path = tmp_path / "net.pt"
    torch.jit.save(scripted, path)
    teacher = load_teacher(TeacherConfig(name=str(path)))  # no --allow-no-batchnorm needed
    assert len(teacher.batchnorms()) == 2
    assert teacher.bn_term_unavailable() is not None and "TorchScript" in teacher.bn_term_unavailable()
    with pytest.raises(TeacherError, match="TorchScript.*bn_weight=0"), BNStatsLoss(teacher.batchnorms()):
        pass
    # synthesis uses the documented fallback: the BatchNorm term off, with a warning
    cfg = make_config("tiny", ["steps=1", "plots=false", "num_images=4"], teacher_name=str(path))
    with pytest.warns(UserWarning, match="TorchScript.*bn_weight=0"):
        out = synthesize(cfg, tmp_path / "ds", device="cpu", progress=False)
    assert read_manifest(out)["config"]["bn_weight"] == 0.0
    rep = _inspect(out, capsys)
    assert rep["metrics"]["images"] == 4 and np.isnan(rep["metrics"]["bn_distance"])  # not measurable
    assert rep["metrics"]["mean_entropy"] == pytest.approx(_stored_entropy(out))


def test_the_factory_opt_out_changes_no_identity_hash(tmp_path: Path) -> None:
    from dfnas.config import to_dict
    from dfnas.pipeline.config import load_run_config
    from dfnas.synthesis import make_config
    from dfnas.synthesis.runner import dataset_hash

    teacher = toy_teacher(num_classes=4, input_size=8)

    def data_hash(*overrides: str) -> str:
        resolved = to_dict(make_config("tiny", list(overrides)))
        return dataset_hash(resolved, teacher)

    assert data_hash() == data_hash("teacher.factory_loads_weights=true")
    run = load_run_config("tiny", device="cpu").identity_hash()
    assert run == load_run_config("tiny", ["teacher.factory_loads_weights=true"], device="cpu").identity_hash()
