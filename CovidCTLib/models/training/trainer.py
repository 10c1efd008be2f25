"""The one resumable training loop (segmentation trainers and the classifier, whose recipe plugs in as hooks).

Per epoch it runs ``steps_per_epoch`` optimiser steps on batches from ``make_batch``, then ``validate``;
it keeps ``best.pt`` (highest ``monitor`` value), writes ``last.pt`` every epoch (model, optimiser, epoch,
history, early-stopping counter, RNG state) so ``resume=True`` continues exactly, appends one JSON line per
epoch to ``log.jsonl`` and stops early after ``patience`` epochs without improvement.
Learning rate: cosine decay from ``lr`` to ``lr / 20`` over ``epochs``. On CUDA the forward pass runs under
autocast (mixed precision).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from CovidCTLib.models.training.checkpoints import load_checkpoint, save_checkpoint
from CovidCTLib.progress import Reporter


@dataclass
class TrainConfig:
    """Loop settings."""

    epochs: int = 30
    steps_per_epoch: int = 50
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 8
    seed: int = 0
    device: str = "cpu"
    max_steps: int | None = None  # stop after this many optimiser steps in total (smoke runs)
    monitor: str = "dice"


@dataclass
class LoopHooks:
    """Optional parts of a training recipe plugged into :func:`train_loop` (the classifier uses them all).

    ``step_lr(step)``: learning-rate factor by optimiser step (replaces the per-epoch cosine);
    ``start_epoch(epoch, rng)``: e.g. draw the epoch's permutation; ``after_step(model)``: e.g. update an
    exponential moving average; ``evaluated(model)``: the network that is validated, kept as best and
    returned (e.g. the EMA copy); ``before_validate(rng)``: e.g. recompute BatchNorm statistics;
    ``extra_state()`` / ``load_extra_state(state)``: what else ``last.pt`` must hold for an exact resume.
    A ``make_batch`` that returns None skips the step.
    """

    step_lr: Callable[[int], float] | None = None
    start_epoch: Callable[[int, np.random.Generator], None] | None = None
    after_step: Callable[[torch.nn.Module], None] | None = None
    evaluated: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    before_validate: Callable[[np.random.Generator], None] | None = None
    extra_state: Callable[[], dict[str, Any]] | None = None
    load_extra_state: Callable[[dict[str, Any]], None] | None = None


def _save(obj: Any, path: Path) -> None:
    save_checkpoint(obj, path)  # plain values only, loadable with weights_only=True


def train_loop(
    model: torch.nn.Module,
    make_batch: Callable[[np.random.Generator], Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    validate: Callable[[torch.nn.Module], dict[str, float]],
    out: Path,
    cfg: TrainConfig,
    resume: bool = False,
    reporter: Reporter | None = None,
    log: Callable[[str], None] = print,
    hooks: LoopHooks | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; returns ``{"best": metrics, "best_epoch": n, "history": [...]}``.

    ``hooks``: the optional parts of a recipe (:class:`LoopHooks`); the evaluated network (``hooks.evaluated``)
    is the one validated, saved in ``best.pt`` and holding the best weights at the end.
    """
    hooks = hooks or LoopHooks()
    out.mkdir(parents=True, exist_ok=True)
    device = cfg.device
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start_epoch, history, best, best_epoch, bad, steps_done = 0, [], -math.inf, -1, 0, 0
    last = out / "last.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history, best = ck["epoch"] + 1, ck["history"], ck["best"]
        best_epoch, bad, steps_done = ck["best_epoch"], ck["bad_epochs"], ck.get("steps_done", 0)
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        if hooks.load_extra_state is not None:
            hooks.load_extra_state(ck.get("extra", {}))
        log(f"resumed from {last} at epoch {start_epoch} (best {cfg.monitor} {best:.4f} at epoch {best_epoch})")
    elif resume:
        log(f"--resume given but no {last}; starting from scratch")
    use_amp = device.startswith("cuda")
    evaluated = hooks.evaluated(model) if hooks.evaluated is not None else model
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1))))
        for group in opt.param_groups:
            group["lr"] = lr
        if hooks.start_epoch is not None:
            hooks.start_epoch(epoch, rng)
        model.train()
        t0, losses = time.time(), []
        for step in range(cfg.steps_per_epoch):
            if cfg.max_steps is not None and steps_done >= cfg.max_steps:
                break
            batch = make_batch(rng)
            if batch is None:
                continue
            if hooks.step_lr is not None:
                lr = cfg.lr * hooks.step_lr(steps_done)
                for group in opt.param_groups:
                    group["lr"] = lr
            with torch.autocast("cuda", enabled=use_amp):
                loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            if hooks.after_step is not None:
                hooks.after_step(model)
            losses.append(float(loss.detach()))
            steps_done += 1
            if reporter is not None:
                reporter.update(
                    "train",
                    (epoch - start_epoch + (step + 1) / cfg.steps_per_epoch) / max(cfg.epochs - start_epoch, 1),
                    f"epoch {epoch + 1} step {step + 1}",
                )
        if hooks.before_validate is not None:
            hooks.before_validate(rng)
        evaluated.eval()
        with torch.no_grad():
            metrics = validate(evaluated)
        score = float(metrics.get(cfg.monitor, -math.inf))
        improved = score > best
        if improved:
            best, best_epoch, bad = score, epoch, 0
            _save({"model": evaluated.state_dict(), "epoch": epoch, "metrics": metrics}, out / "best.pt")
        else:
            bad += 1
        row = {
            "epoch": epoch + 1,
            "lr": round(lr, 6),
            "loss": float(np.mean(losses)) if losses else None,
            "seconds": round(time.time() - t0, 1),
            "steps": steps_done,
            **metrics,
            "best": improved,
        }
        history.append(row)
        with (out / "log.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        log(json.dumps(row))
        _save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "history": history,
                "best": best,
                "best_epoch": best_epoch,
                "bad_epochs": bad,
                "steps_done": steps_done,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "config": asdict(cfg),
                "extra": hooks.extra_state() if hooks.extra_state is not None else {},
            },
            last,
        )
        if bad >= cfg.patience:
            log(f"early stop: no {cfg.monitor} improvement for {bad} epochs")
            break
        if cfg.max_steps is not None and steps_done >= cfg.max_steps:
            break
    if (out / "best.pt").is_file():
        evaluated.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    return {"best": best, "best_epoch": best_epoch + 1, "history": history, "last_epoch": len(history)}
