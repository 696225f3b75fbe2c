"""Re-rank SPOS's best candidates after a short fine-tuning of their inherited weights (``spos.rerank_top``).

Why: a long-trained supernet's inherited weights rank the space as a whole, but the evolution's leaders score
within the noise of one another, and on an easy held-out set (synthetic images the teacher labels with
~99 % confidence) top-1 saturates, so the leaders tie. Fine-tuning each leader alone for a few hundred
steps from its inherited weights removes part of the weight-sharing interference and separates them.

Each of the evolution's ``rerank_top`` best candidates (distinct functions, in the evolution's order) starts
from the supernet's weights on its path, trains alone for ``rerank_steps`` weight steps on the training split
(the loop's augmentation, SGD and clipping; the same batches for every candidate; cosine from ``rerank_lr``
to 0), and is scored on every held-out image: minus the held-out search loss (``rerank_score: loss``) or
top-1 (``accuracy``). The best of them is the search's result; ties go to the evolution's order. The
supernet's weights are restored after each candidate, so the checkpoint keeps them, and a killed search
resumes at the next candidate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from dfnas.errors import DfnasError
from dfnas.repro import make_generator
from dfnas.search.loop import LoopContext, evaluate_loss_acc, finetune
from dfnas.spaces.base import Arch


def rerank(ctx: LoopContext, candidates: list[tuple[Arch, float]], steps: int, lr: float, score: str,
           done: list[dict[str, Any]], on_candidate: Callable[[], None]) -> Arch:
    """The best of ``candidates`` ((architecture, evolution score), best first) after fine-tuning each.

    ``done`` holds the records of candidates already fine-tuned (a resumed search) and gains one per new
    candidate; ``on_candidate`` is called after each, with the supernet's weights back in place."""
    if len(done) > len(candidates) or any(r["arch"] != str(a) for r, (a, _) in zip(done, candidates, strict=False)):
        raise DfnasError("the checkpoint's re-ranked candidates are not this evolution's best; delete the run "
                         "directory to start over")
    assert ctx.held_out is not None  # SPOS needs a held-out split (checked before training)
    model = ctx.model
    supernet = copy.deepcopy(model.state_dict())
    for arch, evo_score in candidates[len(done):]:
        model.set_path(arch)
        train_loss = finetune(model, ctx.train, ctx.cfg, ctx.criterion, ctx.device,
                              make_generator(ctx.seed, "spos", "rerank"), steps, lr)
        ev = evaluate_loss_acc(model, ctx.held_out, ctx.criterion, ctx.device, ctx.cfg.eval_batch_size, None)
        model.load_state_dict(supernet)
        done.append({"arch": str(arch), "evolution_score": evo_score, "train_loss": train_loss,
                     "held_out_loss": ev["loss"], "held_out_acc": ev["acc"]})
        ctx.logger.log({"kind": "rerank", **done[-1]}, step=ctx.step)
        on_candidate()

    def value(r: dict[str, Any]) -> float:
        return float(r["held_out_acc"]) if score == "accuracy" else -float(r["held_out_loss"])

    best = max(range(len(done)), key=lambda i: (value(done[i]), -i))
    return candidates[best][0]
