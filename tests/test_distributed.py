"""Scale-out with torch.distributed on 2 gloo processes (a FileStore; torchrun on 127.0.0.1).

- the batch-split DDP wrapper gives exactly the single-process full-batch gradient;
- synthesis split over 2 ranks writes the same dataset as one process with the same seed;
- DDP supernet search (SPOS, DARTS, ProxylessNAS) keeps parameters, sampled paths and alphas identical on every rank;
- ``dfnas search`` (``search_command``) in a 2-rank job searches on both ranks and finds what the search stage of
  ``dfnas run`` finds; ``dfnas train`` (``train_command``) trains on both ranks with identical parameters;
- ``torchrun --nproc_per_node 2 dfnas run --preset tiny`` runs end to end (real teacher).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dfnas import distributed as D
from dfnas.assets import asset_path

REPO = Path(__file__).resolve().parent.parent


def _entry(rank: int, world: int, store: str, fn, args: tuple) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        D.shutdown()


def _spawn(tmp_path: Path, fn, world: int, *args, timeout_s: float = 240.0) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes; fail on an error or a hang."""
    import torch.multiprocessing as mp

    store = tmp_path / f"store-{fn.__name__}-{world}-{time.monotonic_ns()}"
    ctx = mp.start_processes(_entry, args=(world, str(store), fn, args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} on {world} processes did not finish in {timeout_s}s")


def _all_worker(rank: int, world: int, out: str) -> None:
    """Every 2-process check in one job (starting processes is the slow part)."""
    _grad_worker(rank, world, out)
    _synth_worker(rank, world, str(Path(out) / "synthesis"))
    _command_worker(rank, world, str(Path(out) / "synthesis"))
    for method in ("spos", "darts", "proxyless", "spos-fair"):
        _search_worker(rank, world, str(Path(out) / method), method)


@pytest.fixture(scope="module")
def dist_job(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _spawn(out, _all_worker, 2, str(out), timeout_s=400)
    return out


# -- 1. gradients ---------------------------------------------------------------------------------------

class _NoBN(nn.Module):
    """No BatchNorm, so a slice of the batch computes exactly what the full batch computes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(2, 2)  # never used: DDP must cope (find_unused_parameters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _grad_worker(rank: int, world: int, out: str) -> None:
    from dfnas.search.distributed import SplitBatchDDP

    g = torch.Generator().manual_seed(0)
    model = _NoBN()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    wrapper = SplitBatchDDP(model, D.current(), torch.device("cpu"))
    assert wrapper.conv is model.conv and set(wrapper.state_dict()) == set(model.state_dict())
    grads = {}
    for b in (5, 1):  # an uneven split (3 + 2) and a batch smaller than the world (replicated)
        x = torch.rand(b, 3, 6, 6, generator=g)
        y = torch.randint(0, 3, (b,), generator=g)
        ref = copy.deepcopy(model)
        F.cross_entropy(ref(x), y).backward()
        model.zero_grad(set_to_none=True)
        wrapper.train()
        wrapper.ddp_next_forward()
        logits = wrapper(x)
        assert logits.shape == (b, 3)
        F.cross_entropy(logits, y).backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            if q.grad is None:
                assert p.grad is None or not p.grad.any(), name
                continue
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), (b, name, p.grad, q.grad)
        grads[b] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():  # outside weight steps: the plain module, every rank the whole batch
            assert torch.equal(wrapper(x), model(x))
    torch.save(grads, Path(out) / f"grads{rank}.pt")


def test_split_batch_ddp_gradient_equals_full_batch_gradient(dist_job):
    g0, g1 = (torch.load(dist_job / f"grads{r}.pt") for r in (0, 1))
    for b in g0:
        assert all(torch.equal(g0[b][k], g1[b][k]) for k in g0[b])


# -- 2. synthesis -----------------------------------------------------------------------------------------

def _synth_worker(rank: int, world: int, out: str) -> None:
    from dfnas.pipeline.config import build_run_config
    from dfnas.pipeline.stages import synthesis_stage
    from dfnas.synthesis.toy import toy_teacher

    cfg = build_run_config({"seed": 3, "synthesis": {"num_images": 12, "rounds": 2, "batch_size": 3, "steps": 3,
                                                     "log_every": 1, "grid_per_class": 2}})
    teacher = toy_teacher(num_classes=4, input_size=8, seed=0)
    if rank == 0:  # the single-process reference, same thread settings
        assert synthesis_stage(cfg, Path(out) / "one", teacher, torch.device("cpu"), D.SINGLE, progress=False)
    info = synthesis_stage(cfg, Path(out) / "two", teacher, torch.device("cpu"), D.current(), progress=False)
    assert (rank == 0) == bool(info)  # rank 0 reports the dataset


def test_synthesis_on_two_ranks_equals_one_process(dist_job):
    from dfnas.data.shards import list_shards, read_manifest, read_shard

    tmp_path = dist_job / "synthesis"
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert one["complete"] and two["complete"] and one["config_hash"] == two["config_hash"]
    assert two["world_size"] == 2
    s1, s2 = list_shards(tmp_path / "one"), list_shards(tmp_path / "two")
    assert [(r, s) for r, s, _ in s1] == [(r, s) for r, s, _ in s2] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (_, _, p1), (_, _, p2) in zip(s1, s2, strict=True):
        a, b = read_shard(p1), read_shard(p2)
        for k in a:
            assert np.array_equal(a[k], b[k]), (p1.name, k)
    # each rank logged its own shards; only rank 0 wrote the manifest and pictures
    assert (tmp_path / "two" / "synthesis_log.rank1.jsonl").is_file()
    assert (tmp_path / "two" / "samples.png").is_file()


# -- 3. search -----------------------------------------------------------------------------------------

def _toy_data():
    from dfnas.data import ImageSet

    g = torch.Generator().manual_seed(5)
    n, k = 40, 10
    logits = torch.randn(n, k, generator=g) * 3
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.softmax(logits, 1), 32, [str(i) for i in range(k)], logits, label_mode="distill")


def _search_worker(rank: int, world: int, out: str, method: str) -> None:
    from dfnas.config import from_dict
    from dfnas.search import SearchConfig, run_search

    sampling = {"sampling": "fair"} if method == "spos-fair" else {}  # FairNAS: five paths per weight step
    cfg = from_dict(SearchConfig, {"method": method.split("-")[0],
                                   "space": {"name": "nb201", "options": {"C": 4, "N": 1}},
                                   "epochs": 2, "batch_size": 7, "held_out": 0.5, "eval_max_batches": 1,
                                   "spos": {"population": 4, "top_k": 2, "generations": 2, "bn_batches": 1,
                                            "eval_batches": 1, **sampling}})
    res = run_search(cfg, _toy_data(), out, device="cpu", progress=False)  # the ranks: the running group
    # the found architecture is the same everywhere (run_search also checks this itself)
    archs = [None] * world
    dist.all_gather_object(archs, str(res.arch))
    assert len(set(archs)) == 1


@pytest.mark.parametrize("method", ["spos", "darts", "proxyless", "spos-fair"])
def test_ddp_search_keeps_every_rank_identical(dist_job, method):
    out = dist_job / method
    c0 = torch.load(out / "checkpoint.pt", weights_only=True)
    c1 = torch.load(out / ".ranks" / "rank1" / "checkpoint.pt", weights_only=True)
    assert c0["phase"] == c1["phase"] == "done" and c0["step"] == c1["step"] > 0
    params = [k for k in c0["model"] if "running_" not in k and "num_batches" not in k]
    assert params and all(torch.equal(c0["model"][k], c1["model"][k]) for k in params)
    if method == "spos-fair":  # every weight step trained every option: all conv weights left their init
        from dfnas.repro import make_generator
        from dfnas.search import build_method
        from dfnas.search.weights_init import init_parameters
        from dfnas.spaces import build_space

        space = build_space("nb201", num_classes=10, input_size=32, C=4, N=1)
        m = build_method("spos", space, {"sampling": "fair"}, make_generator(0, "m"), torch.device("cpu"))
        init = init_parameters(m.build_model(), make_generator(0, "loop", "init")).state_dict()
        convs = [k for k in params if k.endswith("weight") and c0["model"][k].dim() == 4]
        assert convs and all(not torch.equal(c0["model"][k], init[k]) for k in convs)
    assert torch.equal(c0["method"]["generator"], c1["method"]["generator"])  # same paths were drawn
    if method in ("darts", "proxyless"):
        assert all(torch.equal(c0["method"]["alphas"][k], c1["method"]["alphas"][k]) for k in c0["method"]["alphas"])
    import json

    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["arch_str"] == c0["arch"]["arch"]
    assert not (out / ".ranks" / "rank1" / "result.json").exists()


# -- 4. the commands under torchrun ---------------------------------------------------------------------------

COMMAND_SEARCH = {"method": "spos", "space": {"name": "nb201", "options": {"C": 4, "N": 1}}, "epochs": 2,
                  "batch_size": 4, "held_out": 0.5, "eval_max_batches": 1,
                  "spos": {"population": 4, "top_k": 2, "generations": 2, "bn_batches": 1, "eval_batches": 1}}


def _command_worker(rank: int, world: int, out: str) -> None:
    """On the 2-rank synthetic set: the run's search stage, then ``dfnas search`` and ``dfnas train`` as the CLI
    calls them (the process group is the running one, as torchrun's would be)."""
    import json

    from dfnas.config import to_dict
    from dfnas.pipeline.config import build_run_config
    from dfnas.pipeline.stages import search_stage
    from dfnas.search.commands import search_command
    from dfnas.train.commands import train_command

    root, data = Path(out), Path(out) / "two"
    cfg = build_run_config({"seed": 3, "search": COMMAND_SEARCH})
    info = search_stage(cfg, data, root / "search", torch.device("cpu"), D.current(), False, None, None)
    (root / f"search_config{rank}.json").write_text(json.dumps(to_dict(cfg.search)))  # the stage's own settings
    res = search_command(root / "cmd", data, config=root / f"search_config{rank}.json", device="cpu", progress=False)
    assert dist.is_initialized()  # a group the caller started is left running
    (root / f"archs{rank}.json").write_text(json.dumps({"stage": info["arch"], "command": str(res.arch)}))
    r = train_command(root / "train", root / "cmd" / "arch.json", data, epochs=1, device="cpu", progress=False,
                      overrides=["batch_size=4", "online.enabled=false", "seed=3"])
    (root / f"train{rank}.json").write_text(json.dumps({"arch_str": r["arch_str"], "world_size": r["world_size"]}))


def test_search_command_on_two_ranks_finds_the_run_stage_arch(dist_job):
    import json

    root = dist_job / "synthesis"
    a0, a1 = (json.loads((root / f"archs{r}.json").read_text()) for r in (0, 1))
    assert a0["command"] == a0["stage"] == a1["command"] == a1["stage"]
    for d in (root / "search", root / "cmd"):
        result = json.loads((d / "result.json").read_text())
        assert result["world_size"] == 2 and result["arch_str"] == a0["command"]
        assert json.loads((d / "config.json").read_text())["world_size"] == 2
        assert (d / ".ranks" / "rank1" / "checkpoint.pt").is_file()


def test_train_command_on_two_ranks_keeps_them_identical(dist_job):
    import json

    out = dist_job / "synthesis" / "train"
    c0 = torch.load(out / "checkpoint.pt", weights_only=True)
    c1 = torch.load(out / ".ranks" / "rank1" / "checkpoint.pt", weights_only=True)
    assert c0["phase"] == c1["phase"] == "done" and c0["step"] == c1["step"] > 0
    params = [k for k in c0["model"] if "running_" not in k and "num_batches" not in k]
    assert params and all(torch.equal(c0["model"][k], c1["model"][k]) for k in params)
    t0, t1 = (json.loads((dist_job / "synthesis" / f"train{r}.json").read_text()) for r in (0, 1))
    assert t0 == t1 and t0["world_size"] == 2
    assert (out / "model.pt").is_file() and not (out / ".ranks" / "rank1" / "model.pt").exists()


# -- 5. torchrun end to end --------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.skipif(asset_path("teachers", "resnet20-12fca82f.th") is None,
                    reason="ResNet-20 checkpoint not found in the shared assets (set DFNAS_ASSETS)")
def test_torchrun_two_processes_tiny_run(tmp_path):
    from dfnas.pipeline.rundir import read_marker

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dfnas.cli", "run", "--preset", "tiny", "--out", str(out), "--quiet", "--device", "cpu"]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("report:") == 1  # only rank 0 prints
    assert read_marker(out, "search")["world_size"] == 2
    assert (out / "report" / "report.md").is_file() and (out / "export" / "model.safetensors").is_file()
    assert (out / "data" / "synthesis_log.rank1.jsonl").is_file()
