"""Uniform weight soup of one training run: the average of its best and last checkpoints' weights.

Checkpoints of one run at a low, decaying learning rate lie in one basin of the loss; their average is
usually at least as good as either and less sensitive to which epoch validation happened to pick (stochastic
weight averaging, Izmailov et al. 2018; uniform "model soups", Wortsman et al. 2022). BatchNorm running
statistics are averaged like the weights; integer buffers come from the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from CovidCTLib.errors import InputError
from CovidCTLib.models.runtime import registry
from CovidCTLib.models.training.checkpoints import load_checkpoint

DEFAULT_CHECKPOINTS = ("best.pt", "last.pt")


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean (float32) of floating-point tensors; other tensors from the last state."""
    if not states:
        raise InputError("a weight soup needs at least one checkpoint.")
    keys = set(states[0])
    if any(set(s) != keys for s in states[1:]):
        raise InputError("the checkpoints hold different networks (their tensor names differ); soup one run only.")
    out: dict[str, torch.Tensor] = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0)
        else:
            out[key] = last.clone()
    return out


def soup_run(
    task: str, run_dir: str | Path, out: str | Path | None = None, checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
) -> tuple[Path, dict[str, Any]]:
    """Export the soup of ``run_dir``'s ``checkpoints`` as a model folder (default ``<run>/soup/<name>``).

    The manifest is the run's exported one (``<run>/model/<name>``) with ``training.soup`` added; its
    threshold must be chosen again (``covidct calibrate``), other post-processing settings (test-time flips)
    stay. Returns the folder and the manifest as written."""
    from CovidCTLib.models.training.train_seg import MODEL_NAMES, build_model

    if task not in MODEL_NAMES:
        raise InputError(f"unknown task {task!r}; use lung or infection.")
    run = Path(run_dir)
    name = MODEL_NAMES[task]
    exported = run / "model" / name
    if not (exported / registry.MANIFEST).is_file():
        raise InputError(f"{run} holds no exported {name} (no {exported}/manifest.json); give a finished run's --out.")
    manifest = registry.read_manifest(name, exported.parent)
    loaded = [load_checkpoint(run / c) for c in checkpoints]
    model = build_model(task)
    model.load_state_dict(average_states([ck["model"] for ck in loaded]))
    manifest["training"] = {
        **manifest.get("training", {}),
        "soup": {
            "checkpoints": list(checkpoints),
            "epochs": [int(ck["epoch"]) + 1 for ck in loaded],
            "rule": "uniform average of the weights and BatchNorm statistics (integer buffers from the last)",
        },
    }
    for key in ("sha256", "manifest_sha256"):
        manifest.pop(key, None)
    settings = {k: v for k, v in manifest.pop("postprocess", {}).items() if k not in ("threshold", "calibration")}
    if settings:
        manifest["postprocess"] = settings
    folder = Path(out) if out else run / "soup" / name
    return folder, registry.save_model(model, folder, manifest)
