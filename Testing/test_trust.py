"""Model trust and global state (issue 12): safe checkpoints, the classifier leaves torch's threads alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from CovidCTLib.phantom import make_phantom


class _Payload:
    """Unpickling this object creates a folder: the proof that a checkpoint ran code."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (os.makedirs, (self.target,))


def _tiny_loop(out: Path, resume: bool) -> dict:
    from CovidCTLib.models.trainer import TrainConfig, train_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.ones(4, 3)

    def loss_fn(m: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return (m(batch) ** 2).mean()

    cfg = TrainConfig(epochs=2, steps_per_epoch=1, patience=5)
    return train_loop(model, lambda rng: x + float(rng.random()), loss_fn, lambda m: {"dice": 0.5}, out, cfg,
                      resume=resume, log=lambda s: None)


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    _tiny_loop(tmp_path, resume=False)
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / name, map_location="cpu", weights_only=True)  # would raise on pickled objects
        assert "model" in ck
    assert isinstance(torch.load(tmp_path / "last.pt", weights_only=True)["rng"]["state"]["state"], int)


def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path: Path) -> None:
    from CovidCTLib.models.checkpoints import CheckpointError

    _tiny_loop(tmp_path, resume=False)
    proof = tmp_path / "payload-ran"
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    ck["history"] = [_Payload(proof)]
    torch.save(ck, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        _tiny_loop(tmp_path, resume=True)
    assert not proof.exists()


def test_classifier_leaves_torch_thread_count_alone() -> None:
    from CovidCTLib.models import classifier_inference
    from CovidCTLib.models.registry import models_dir

    folder = models_dir() / "covid-classifier"
    assert (folder / "manifest.json").is_file(), "the shipped classifier is part of the repository"
    ph = make_phantom((24, 64, 64), spacing=(5.0, 4.5, 4.5), seed=3)
    before = torch.get_num_threads()
    wanted = before + 3  # anything the classifier would not choose itself
    torch.set_num_threads(wanted)
    try:
        classifier_inference._CACHE.clear()
        scan = classifier_inference.classify_scan(ph.ct, ph.lungs, device="cpu", model_dir=folder)
        assert 0.0 <= scan.probability <= 1.0 and np.isfinite(scan.probability)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
