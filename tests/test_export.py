"""Export round trip: arch.json + model.safetensors rebuild the same plain network, outputs equal; model.onnx
computes the same outputs in onnxruntime, and its absence (no onnx package) is reported."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dfnas.errors import ArchError, DfnasError
from dfnas.export import export_network, load_exported, read_export
from dfnas.spaces import Choice, build_space, subnet_state_dict


def _space():
    return build_space("nb201", C=4, N=1)


def _perturb_bn(net: torch.nn.Module, g: torch.Generator) -> None:
    # non-default BN statistics, so a loader that forgot buffers would give different outputs
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_round_trip_plain_network(tmp_path):
    space = _space()
    g = torch.Generator().manual_seed(1)
    arch = space.sample(g)
    net = space.build_network(arch).eval()
    _perturb_bn(net, g)
    export_network(space, arch, net, tmp_path / "exp", info={"weights": "test"})
    loaded = load_exported(tmp_path / "exp")
    assert not any(isinstance(m, Choice) for m in loaded.modules())
    x = torch.rand(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    meta = read_export(tmp_path / "exp")
    assert meta["arch"]["arch"] == str(arch)
    assert meta["space"] == {"name": "nb201", "num_classes": 10, "input_size": 32, "C": 4, "N": 1}
    assert meta["info"] == {"weights": "test"}
    assert meta["weights"]["params"] == sum(p.numel() for p in net.parameters())


def test_export_from_supernet_equals_supernet_path(tmp_path):
    space = _space()
    g = torch.Generator().manual_seed(2)
    arch = space.sample(g)
    sup = space.build_supernet().eval()
    _perturb_bn(sup, g)
    sup.set_path(arch)
    export_network(space, arch, sup, tmp_path)
    loaded = load_exported(tmp_path)
    x = torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.allclose(sup(x), loaded(x), atol=1e-6)
    assert set(loaded.state_dict()) == set(subnet_state_dict(sup, arch))


def test_export_rejects_weights_of_another_arch(tmp_path):
    space = _space()
    a = space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    b = space.parse("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
    with pytest.raises(ArchError, match="do not fit"):
        export_network(space, a, space.build_network(b), tmp_path)
    assert not (tmp_path / "arch.json").exists()


def test_load_rejects_bad_exports(tmp_path):
    with pytest.raises(DfnasError, match="does not exist"):
        load_exported(tmp_path)
    (tmp_path / "arch.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DfnasError, match="not a dfnas export"):
        load_exported(tmp_path)
    space = _space()
    arch = space.sample(torch.Generator().manual_seed(3))
    export_network(space, arch, space.build_network(arch), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DfnasError, match="cannot be read"):
        load_exported(tmp_path)


def test_two_exports_of_the_same_network_are_byte_identical(tmp_path):
    import subprocess
    import sys

    # separate processes: safetensors orders several metadata keys by a per-process hash seed
    code = ("import sys, torch; from dfnas.spaces import build_space; from dfnas.export import export_network; "
            "sp = build_space('nb201', C=4, N=1, num_classes=3, input_size=8); "
            "a = sp.parse('|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|skip_connect~2|'); "
            "torch.manual_seed(0); export_network(sp, a, sp.build_network(a), sys.argv[1])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    files = ["model.safetensors", "arch.json"]
    if importlib.util.find_spec("onnx") is not None:  # the TorchScript exporter writes the same ONNX bytes too
        files.append("model.onnx")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


# every space at 16 px with a handful of channels (as in test_spaces), so each export takes about a second
TINY = {
    "nb201": {"C": 4, "N": 1, "input_size": 16},
    "darts": {"C": 4, "layers": 3, "input_size": 16},
    "proxyless": {"width_mult": 0.25, "layers_per_stage": [1, 2, 1, 1, 2], "input_size": 16},
    "spos": {"width_mult": 0.25, "layers": [2, 1, 1, 2], "input_size": 16},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_matches_pytorch(tmp_path, name):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from dfnas.export import ONNX_OPSET
    from dfnas.io import sha256_file

    space = build_space(name, **TINY[name])
    g = torch.Generator().manual_seed(4)
    arch = space.sample(g)
    net = space.build_network(arch).eval()
    _perturb_bn(net, g)
    export_network(space, arch, net, tmp_path)
    meta = read_export(tmp_path)["onnx"]
    assert meta["file"] == "model.onnx" and meta["opset"] == ONNX_OPSET
    assert meta["sha256"] == sha256_file(tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, 16, 16, generator=g)  # batch 5: the graph was traced at batch 1, the batch is dynamic
    (y_onnx,) = sess.run(None, {meta["input"]: x.numpy()})
    with torch.no_grad():
        y_torch = load_exported(tmp_path)(x).numpy()
    assert y_onnx.shape == y_torch.shape == (5, space.num_classes)
    assert float(abs(y_onnx - y_torch).max()) <= 1e-4


def test_export_without_onnx_writes_the_rest_and_says_so(tmp_path, monkeypatch, capsys):
    import sys

    space = _space()
    arch = space.sample(torch.Generator().manual_seed(5))
    net = space.build_network(arch).eval()
    (tmp_path / "model.onnx").write_bytes(b"from an earlier export")  # stale: must not survive
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    export_network(space, arch, net, tmp_path)
    assert not (tmp_path / "model.onnx").exists()
    meta = read_export(tmp_path)
    assert meta["onnx"]["file"] is None and "pip install" in meta["onnx"]["skipped"]
    assert "onnx" in meta["onnx"]["skipped"]
    err = capsys.readouterr().err
    assert "model.onnx skipped" in err and "dfnas[onnx]" in err
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_exported(tmp_path)(x), net(x))
