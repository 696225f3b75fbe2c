"""One precedence for every command's configuration: preset < config file < ``--set`` < explicit flag."""

from __future__ import annotations

import pytest

from dfnas.config import expand_shorthands
from dfnas.errors import ConfigError
from dfnas.pipeline.config import load_run_config
from dfnas.search.commands import search_config
from dfnas.spaces.archfile import write_arch_files
from dfnas.spaces.nb201 import NB201Space
from dfnas.synthesis.config import make_config
from dfnas.train.commands import train_config

NB201 = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


def test_run_preset_then_set_then_flags(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("teacher: {name: cifar10_resnet20, weights: /from/preset}\nsearch: {epochs: 1}\n")
    assert load_run_config(preset).teacher.weights == "/from/preset"
    assert load_run_config(preset, ["teacher.weights=/from/set"]).teacher.weights == "/from/set"
    cfg = load_run_config(preset, ["teacher.weights=/from/set", "teacher.name=cifar10_resnet32"],
                          weights="/from/flag", teacher="cifar10_resnet44")
    assert (cfg.teacher.weights, cfg.teacher.name) == ("/from/flag", "cifar10_resnet44")
    assert load_run_config(preset, ["device=cpu"], device="cuda").device == "cuda"
    assert load_run_config(preset, ["search.epochs=2"]).search.epochs == 2


def test_synthesize_preset_then_set_then_flags():
    assert make_config("tiny").num_images == 16
    assert make_config("tiny", ["num_images=20"]).num_images == 20
    assert make_config("tiny", ["num_images=20"], num_images=30).num_images == 30
    assert make_config("tiny", ["num_images=20"], num_images=None).num_images == 20  # a flag left unset
    cfg = make_config("tiny", ["teacher.weights=/from/set"], weights="/from/flag", method="generator")
    assert (cfg.teacher.weights, cfg.method) == ("/from/flag", "generator")


def test_search_file_then_set_then_flags(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: spos\nepochs: 1\nseed: 4\nspace: {name: nb201, options: {C: 4}}\n")
    cfg = search_config(config=f)
    assert (cfg.method, cfg.epochs, cfg.seed, cfg.space.options) == ("spos", 1, 4, {"C": 4})
    cfg = search_config(config=f, overrides=["epochs=2", "method=proxyless", "space.C=6"])
    assert (cfg.method, cfg.epochs, cfg.space.options) == ("proxyless", 2, {"C": 6})
    cfg = search_config(config=f, overrides=["epochs=2", "method=proxyless", "seed=5"], epochs=3, method="darts")
    assert (cfg.method, cfg.epochs, cfg.seed) == ("darts", 3, 5)
    cfg = search_config(config=f, overrides=["space.name=darts", "space.C=2"], space="nb201")
    assert (cfg.space.name, cfg.space.options) == ("nb201", {"C": 2})
    # --space naming another space drops the file's options (they belong to the file's space), not --set's
    cfg = search_config(config=f, overrides=["space.layers=3"], space="darts")
    assert (cfg.space.name, cfg.space.options) == ("darts", {"layers": 3})


def test_train_file_then_set_then_flags(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("epochs: 1\nlr: 0.1\n")
    cfg, a, space = train_config(NB201, config=f)
    assert (cfg.epochs, cfg.lr, a.space, space) == (1, 0.1, "nb201", {"name": "nb201"})
    cfg, _, _ = train_config(NB201, config=f, overrides=["epochs=2", "lr=0.2"])
    assert (cfg.epochs, cfg.lr) == (2, 0.2)
    cfg, _, space = train_config(NB201, config=f, overrides=["epochs=2", "space.C=16"], epochs=3, seed=7)
    assert (cfg.epochs, cfg.seed, space) == (3, 7, {"name": "nb201", "C": 16})
    write_arch_files(tmp_path, NB201Space(C=8, N=1), NB201Space.parse(NB201))  # the arch file's settings < --set
    _, a, space = train_config(tmp_path / "arch.json", overrides=["space.C=16"])
    assert str(a) == NB201 and (space["C"], space["N"]) == (16, 1)


def test_the_space_shorthand_and_typos():
    assert expand_shorthands(["space.C=16", "space.name=darts", "space.options.N=2", "epochs=3"], ("space",)) == [
        "space.options.C=16", "space.name=darts", "space.options.N=2", "epochs=3"]
    assert expand_shorthands(["search.space.C=16", "space.C=1"], ("search.space",)) == [
        "search.space.options.C=16", "space.C=1"]
    with pytest.raises(ConfigError, match="--set epoch=3"):
        search_config(overrides=["epoch=3"])
    with pytest.raises(ConfigError, match="--set lrr=1"):
        train_config(NB201, overrides=["lrr=1"])
