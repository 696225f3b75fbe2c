"""Up-front cost model of the benchmarks, calibrated by timing the real operations on this machine.

Each benchmark prints its estimate before it starts (``--estimate-only`` stops there): at the current load
and with the cores to itself, so a user knows whether a run fits their afternoon.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import SOURCES, DataBudget, fmt_duration, load_average, teacher


@dataclass
class Calibration:
    """Seconds per operation measured right now (other processes on the CPU inflate all of them)."""

    supernet_step: float  # forward + backward of the softmax-weighted NB201 supernet (DARTS), per image
    path_step: float  # forward + backward of one path of the supernet (SPOS / ProxylessNAS / a plain net)
    path_eval: float  # no-grad forward of one path, per image
    teacher_step: float  # forward + input-gradient backward of the teacher, per image (one synthesis step)
    teacher_eval: float  # no-grad teacher forward, per image

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def _time(fn: Callable[[], Any], reps: int = 2) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process divided by the torch thread count) per call."""
    fn()  # warm-up (allocations, first-call overheads)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps, (time.process_time() - c0) / reps / max(1, torch.get_num_threads())


def calibrate(space_opts: dict[str, Any], batch: int = 64, need_teacher: bool = True, need_supernet: bool = True
              ) -> tuple[Calibration, Calibration]:
    """Time the operations the benchmarks repeat, at the benchmark's sizes (a few seconds).

    Returns (wall-clock costs at the current load, costs on idle cores). The second is the process's CPU time
    per thread: what the wall time would be if no other process competed for the cores.
    """
    from dfnas.spaces import build_space

    g = torch.Generator().manual_seed(0)
    space = build_space("nb201", **space_opts)
    # initial weights come from the constructors' defaults: only the time per operation is measured here,
    # and every benchmark run re-initializes its networks from its own seeded generator
    net = space.build_supernet()
    x = torch.rand(batch, 3, 32, 32, generator=g)
    w = {k: torch.full((len(o),), 1.0 / len(o)) for k, o in space.decisions().items()}

    def weighted() -> None:
        net.set_weights(w)
        net(x).sum().backward()

    arch = space.sample(torch.Generator().manual_seed(1))

    def path() -> None:
        net.set_path(arch)
        net(x).sum().backward()

    def path_eval() -> None:
        net.set_path(arch)
        with torch.no_grad():
            net(x)

    timed = {"supernet_step": _time(weighted) if need_supernet else (0.0, 0.0), "path_step": _time(path),
             "path_eval": _time(path_eval),
             "teacher_step": (0.0, 0.0), "teacher_eval": (0.0, 0.0)}
    if need_teacher:
        t = teacher()
        xt = torch.rand(batch, 3, 32, 32, generator=g, requires_grad=True)

        def t_step() -> None:
            torch.autograd.grad(t(xt).sum(), xt)

        def t_eval() -> None:
            with torch.no_grad():
                t(xt.detach())

        timed["teacher_step"] = _time(t_step)
        timed["teacher_eval"] = _time(t_eval)
    return (Calibration(**{k: v[0] / batch for k, v in timed.items()}),
            Calibration(**{k: v[1] / batch for k, v in timed.items()}))


def estimate_line(total: Callable[[Calibration], float], cals: tuple[Calibration, Calibration]) -> str:
    """'X at the current load (L), Y on idle cores' for a cost model ``total(calibration) -> seconds``."""
    return (f"{fmt_duration(total(cals[0]))} at the current load ({load_average()}), "
            f"{fmt_duration(total(cals[1]))} with the cores to itself")


def synthesis_estimate(names: Iterable[str], budget: DataBudget, work: Path, cal: Calibration) -> float:
    """Seconds to make the not-yet-cached synthetic datasets among ``names``."""
    from dfnas.synthesis import SYNTHESIS_METHODS, make_config

    total = 0.0
    for name in names:
        src = SOURCES[name]
        n = src.stream or budget.n_images  # a stream source makes its whole run
        out = dataclasses.replace(budget, n_images=n).root(work) / src.folder
        if src.kind == "real" or (out / "manifest.json").is_file() and json.loads(
                (out / "manifest.json").read_text()).get("complete", False):
            continue
        cfg = make_config(budget.synth_preset, None, **{**budget.synth_overrides, **src.synthesis, "num_images": n})
        # the method's steps per shard = the steps each of its images is optimized for, whatever the split into
        # rounds and shards (`steps` for inversion; 1 for the baselines, which only label their images)
        steps = SYNTHESIS_METHODS.build(cfg.method).steps_per_shard(cfg)
        total += n * steps * cal.teacher_step
    return total
