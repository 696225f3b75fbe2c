"""RunConfig and presets: loading, overrides, rejected typos, run-directory identity (no teacher needed)."""

from __future__ import annotations

import json

import pytest

from dfnas.errors import ConfigError, DfnasError
from dfnas.pipeline.config import build_run_config, list_presets, load_run_config
from dfnas.pipeline.rundir import is_done, open_run_dir, read_marker, stage


def test_bundled_presets_load():
    names = list_presets()
    assert {"default", "tiny", "nb201-paper", "darts-cifar10-paper"} <= set(names)
    for n in names:
        cfg = load_run_config(n)
        assert cfg.name == n
        assert cfg.synthesis.teacher == cfg.teacher  # one teacher section feeds synthesis
    d = load_run_config("darts-cifar10-paper")
    assert (d.search.space.name, d.search.space.options["layers"], d.search.space.options["C"]) == ("darts", 8, 16)
    assert (d.search.epochs, d.search.batch_size) == (50, 64)
    n = load_run_config("nb201-paper")
    assert n.search.space.options == {"C": 16, "N": 5}


def test_overrides_dotted_and_space_shorthand():
    cfg = load_run_config("tiny", ["search.epochs=3", "search.space.C=6", "synthesis.steps=2", "seed=7"])
    assert cfg.search.epochs == 3
    assert cfg.search.space.options["C"] == 6
    assert cfg.synthesis.steps == 2
    # the top-level seed reaches every stage that does not set its own
    assert (cfg.synthesis.seed, cfg.search.seed, cfg.train.seed) == (7, 7, 7)
    cfg = load_run_config("tiny", ["seed=7", "train.seed=1"])
    assert (cfg.search.seed, cfg.train.seed) == (7, 1)


def test_flags_are_taken_verbatim():
    cfg = load_run_config("tiny", teacher="models/net.py:build", weights="w/ckpt.pt", device="cpu")
    assert cfg.teacher.name == "models/net.py:build"
    assert cfg.synthesis.teacher.name == "models/net.py:build"
    assert cfg.teacher.weights == "w/ckpt.pt"
    assert cfg.device == "cpu"


@pytest.mark.parametrize("override, hint", [
    ("search.epoch=3", "did you mean 'epochs'"),
    ("synthesis.num_image=3", "did you mean 'num_images'"),
    ("serach.epochs=3", "did you mean 'search'"),
    ("search.spos.populaton=3", "did you mean 'population'"),
])
def test_typos_are_rejected_with_a_suggestion(override, hint):
    with pytest.raises(ConfigError, match=hint):
        load_run_config("tiny", [override])


def test_bad_values_and_sections():
    with pytest.raises(ConfigError, match=r"search\.epochs.*three"):
        load_run_config("tiny", ["search.epochs=three"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_run_config("tiny", ["synthesis.num_images=three"])
    with pytest.raises(ConfigError, match="top-level 'teacher'"):
        load_run_config("tiny", ["synthesis.teacher.name=cifar10_resnet32"])
    with pytest.raises(ConfigError, match="set the device once"):
        load_run_config("tiny", ["search.device=cpu"])
    with pytest.raises(ConfigError, match="search method"):
        load_run_config("tiny", ["search.method=dartz"])
    with pytest.raises(ConfigError, match="cannot be inherited"):
        load_run_config("tiny", ["export.weights=inherit", "export.space.C=16"])


def test_unknown_preset_and_preset_file_typo(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_run_config("tiyn")
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    p = tmp_path / "mine.yaml"
    p.write_text("search:\n  method: spos\n  epochz: 2\n")
    with pytest.raises(ConfigError, match="epochz.*did you mean 'epochs'"):
        load_run_config(p)
    p.write_text("search: {method: spos, epochs: 2}\n")
    cfg = load_run_config(p)
    assert cfg.name == "mine" and cfg.search.epochs == 2


def test_identity_ignores_device_and_report_only():
    a = load_run_config("tiny")
    assert a.identity_hash() == load_run_config("tiny", ["device=cpu", "report.real_test=null"]).identity_hash()
    assert a.identity_hash() == load_run_config("tiny", ["teacher.weights=/elsewhere"]).identity_hash()
    assert a.identity_hash() != load_run_config("tiny", ["search.epochs=5"]).identity_hash()


def test_run_dir_refuses_another_config_and_deletes_nothing(tmp_path):
    out = tmp_path / "run"
    cfg = load_run_config("tiny")
    open_run_dir(out, cfg)
    (out / "data").mkdir()
    (out / "data" / "keep.txt").write_text("precious")
    before = (out / "config.json").read_text()
    open_run_dir(out, cfg)  # same config: reopens
    with pytest.raises(DfnasError, match=r"different configuration \(search.epochs: 2 -> 5"):
        open_run_dir(out, load_run_config("tiny", ["search.epochs=5"]))
    assert (out / "config.json").read_text() == before
    assert (out / "data" / "keep.txt").read_text() == "precious"


def test_run_dir_refuses_foreign_directories(tmp_path):
    cfg = build_run_config({}, [])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(DfnasError, match="not empty and is not a `dfnas run` directory"):
        open_run_dir(other, cfg)
    assert (other / "notes.txt").read_text() == "x" and not (other / "config.json").exists()
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    (search_dir / "config.json").write_text(json.dumps({"config_hash": "abc", "identity": {}}))
    with pytest.raises(DfnasError, match="another kind of output"):
        open_run_dir(search_dir, cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_run_dir(empty, cfg) == empty


def test_stage_markers_record_attempts_and_time(tmp_path):
    (tmp_path / "stages").mkdir()
    with pytest.raises(RuntimeError), stage(tmp_path, "search") as st:
        st.info["x"] = 1
        raise RuntimeError("killed")
    m = read_marker(tmp_path, "search")
    assert m["status"] == "running" and m["attempts"] == 1 and not is_done(tmp_path, "search")
    with stage(tmp_path, "search") as st:
        st.info["arch"] = "a"
    m = read_marker(tmp_path, "search")
    assert m["status"] == "done" and m["attempts"] == 2 and m["arch"] == "a"
    assert m["seconds_total"] >= m["seconds"] >= 0
    assert is_done(tmp_path, "search") and not is_done(tmp_path, "train")


def test_a_set_typo_names_the_set_argument_and_close_keys(capsys, tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_run_config("tiny", ["search.epoch=3"])
    msg = str(ei.value)
    assert msg.startswith("--set search.epoch=3: unknown key 'epoch' in section 'search'")
    assert "search.epochs" in msg and "preset" not in msg
    with pytest.raises(ConfigError, match=r"--set search\.spcae\.name=nb201: unknown key 'spcae'.*search\.space"):
        load_run_config("tiny", ["search.space.C=4", "search.spcae.name=nb201"])
    from dfnas.cli import main

    for argv, arg, near in (
            (["synthesize", "--out", str(tmp_path / "d"), "--preset", "tiny", "--set", "stesp=3"], "stesp=3", "steps"),
            (["search", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--set", "spos.populaton=4"],
             "spos.populaton=4", "spos.population"),
            (["train", "--arch", "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "--data", str(tmp_path / "d"),
              "--out", str(tmp_path / "t"), "--set", "epoch=1"], "epoch=1", "epochs")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--set {arg}: unknown key" in err and near in err and "Traceback" not in err, err
    assert not (tmp_path / "d").exists() and not (tmp_path / "s").exists()
