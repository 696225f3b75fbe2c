"""The ``search``, ``train`` and ``nb201 lookup`` sub-commands: parse, run, exit codes, files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from dfnas._cli import search as search_cli
from dfnas.errors import DfnasError
from dfnas.spaces.nb201_table import NB201Table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfnas")
    sub = p.add_subparsers(dest="command", required=True)
    search_cli.register(sub)
    return p


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _npz(path, n=24, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=np.arange(n) % 3)
    return str(path)


def test_search_then_train_from_the_command_line(tmp_path, capsys):
    data = _npz(tmp_path / "d.npz")
    out = tmp_path / "s"
    code = _run(["search", "--data", data, "--out", str(out), "--method", "spos", "--epochs", "1", "--quiet",
                 "--set", "space.C=2", "--set", "batch_size=6", "--set", "spos.population=3",
                 "--set", "spos.generations=1", "--set", "spos.eval_batches=1", "--set", "spos.bn_batches=1",
                 "--nb201-table", str(tmp_path / "missing.csv")])
    assert code == 0 and (out / "arch.json").is_file()
    assert json.loads((out / "config.json").read_text())["space"]["C"] == 2
    assert "spos on nb201" in capsys.readouterr().out
    code = _run(["train", "--arch", str(out / "arch.json"), "--data", data, "--test", data, "--out",
                 str(tmp_path / "t"), "--quiet", "--set", "max_steps=2", "--set", "space.C=3", "--epochs", "1",
                 "--set", "batch_size=8"])
    assert code == 0
    res = json.loads((tmp_path / "t" / "result.json").read_text())
    assert res["space"]["C"] == 3 and res["test_top1"] is not None and res["weight_steps"] == 2
    assert "top-1" in capsys.readouterr().out


def test_nb201_lookup_command(tmp_path, capsys):
    try:
        NB201Table.load()
    except DfnasError:
        pytest.skip("NAS-Bench-201 table not available")
    assert _run(["nb201", "lookup", "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|"
                                    "skip_connect~1|skip_connect~2|", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["cifar10"] == pytest.approx(54.30, abs=0.01)  # the all-skip collapse cell (assets README)
    with pytest.raises(DfnasError, match="NAS-Bench-201 string"):
        _run(["nb201", "lookup", "|skip~0|"])


def test_unknown_override_is_a_clear_error(tmp_path):
    with pytest.raises(DfnasError, match="did you mean 'epochs'"):
        _run(["search", "--data", _npz(tmp_path / "d.npz"), "--out", str(tmp_path / "o"), "--set", "epoch=2"])
