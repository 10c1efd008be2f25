"""Model registry: manifest + SHA-256 verification, tampered / missing weights refused, shipped models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from required import skip_or_fail  # noqa: E402

from CovidCTLib.errors import ModelError
from CovidCTLib.models.runtime import registry
from CovidCTLib.models.runtime.normalization import NORMALIZATION_ID, normalize_slice


def _tiny_manifest() -> dict:
    return {
        "name": "tiny",
        "version": "0.0.1",
        "task": "lung",
        "architecture": {
            "builder": "CovidCTLib.models.networks:attention_unet",
            "kwargs": {"in_channels": 1, "out_channels": 2, "channels": [4, 8]},
        },
        "input": {"channels": 1, "size": 32},
        "normalization": NORMALIZATION_ID,
    }


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    manifest = _tiny_manifest()
    module = registry.build_module(manifest)
    registry.save_model(module, tmp_path / "tiny", manifest)
    return tmp_path


def test_save_and_load_roundtrip(tiny_root: Path) -> None:
    written = json.loads((tiny_root / "tiny" / "manifest.json").read_text())
    assert written["sha256"] == registry.sha256_file(tiny_root / "tiny" / written["weights"])
    assert written["weights_dtype"] == "float16" and "research" in written["research_only"].lower()
    loaded = registry.load_model("tiny", "cpu", root=tiny_root)
    out = loaded.module(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 2, 32, 32) and out.dtype == torch.float32
    state = torch.load(tiny_root / "tiny" / written["weights"], weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    listed = registry.list_models(tiny_root)
    assert listed[0]["name"] == "tiny" and listed[0]["ok"]


def test_tampered_weights_refused(tiny_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_root, copy)
    weights = copy / "tiny" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="(?i)reinstall"):
        registry.load_model("tiny", root=copy)
    assert registry.list_models(copy)[0]["ok"] is False


def test_missing_weights_and_model_refused(tiny_root: Path) -> None:
    (tiny_root / "tiny" / "weights.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        registry.load_model("tiny", root=tiny_root)
    with pytest.raises(ModelError, match="not installed"):
        registry.load_model("no-such-model", root=tiny_root)


def test_foreign_builder_refused(tiny_root: Path) -> None:
    path = tiny_root / "tiny" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["architecture"]["builder"] = "os:system"
    registry.write_manifest(path, manifest)  # sealed: only the builder check can refuse it
    with pytest.raises(ModelError, match="not allowed"):
        registry.load_model("tiny", root=tiny_root)


def test_models_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVIDCT_MODELS_DIR", str(tmp_path))
    assert registry.models_dir() == tmp_path
    monkeypatch.delenv("COVIDCT_MODELS_DIR")
    assert registry.models_dir().parts[-2:] == ("Resources", "Models")


@pytest.mark.parametrize("name", ["lung-attunet", "infection-unet"])
def test_shipped_models_verify(name: str) -> None:
    root = registry.models_dir()
    if not (root / name / "manifest.json").is_file():
        skip_or_fail(f"{name} not shipped yet")
    manifest, weights = registry.verify(name)
    assert weights.stat().st_size < 12 * 1024 * 1024
    for key in ("training", "metrics", "limitations", "intended_use", "research_only"):
        assert key in manifest
    assert "non-commercial" in json.dumps(manifest["training"]).lower()


def test_normalization_hu_and_8bit_same_domain() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 300, (200, 180)).astype(np.float32)
    hu[50:150, 40:140] = 40.0
    eight = np.clip((hu + 1250) / 1500 * 255, 0, 255).astype(np.uint8)
    for clahe in (False, True):
        a = normalize_slice(hu, "HU", clahe=clahe, size=64)
        b = normalize_slice(eight, "8bit", clahe=clahe, size=64)
        assert a.shape == b.shape == (64, 64) and a.dtype == b.dtype == np.float32
        assert a.min() >= 0.0 and a.max() <= 1.0 and b.max() <= 1.0
        assert np.abs(a - b).mean() < 0.02
    assert normalize_slice(np.full((10, 10), 7, np.uint8)).max() == 0.0
    with pytest.raises(ValueError):
        normalize_slice(hu, "MR")


@pytest.mark.parametrize("name", ["lung-attunet", "infection-unet"])
def test_shipped_segmentation_cards_match_their_manifests(name: str) -> None:
    """The model card shows exactly what the manifest records (measured metrics, experiments, limitations)."""
    from CovidCTLib.models.evaluation.model_card import render_card
    from CovidCTLib.models.runtime.registry import models_dir

    folder = models_dir() / name
    if not (folder / "manifest.json").is_file():
        skip_or_fail(f"{name} not shipped")
    manifest = json.loads((folder / "manifest.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    assert card == render_card(manifest)
    assert manifest["sha256"] in card and "not a diagnosis" in card
    for row in manifest.get("experiments_not_shipped", []):
        assert row["result"] in card


def test_install_adds_metrics_and_writes_card(tmp_path: Path) -> None:
    from CovidCTLib.models.evaluation.model_card import install
    from CovidCTLib.models.runtime.registry import models_dir, verify

    src = tmp_path / "trained" / "lung-attunet"
    if not (models_dir() / "lung-attunet").is_dir():
        skip_or_fail("lung model not shipped")
    shutil.copytree(models_dir() / "lung-attunet", src)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "split": "val",
                "summary": {
                    "png256": {
                        "n_images": 3,
                        "pooled": {"dice": 0.91, "iou": 0.83, "precision": 0.9, "recall": 0.92, "specificity": 0.99},
                        "mean_per_image": {"dice": 0.9},
                    }
                },
            }
        )
    )
    root = tmp_path / "models"
    dest = install(src, [("my_site", metrics, "three slices of my site")], {"version": "9.9.9"}, root=root)
    manifest, _ = verify("lung-attunet", root)
    assert manifest["version"] == "9.9.9" and manifest["metrics"]["my_site"]["summary"]["png256"]["n_images"] == 3
    card = (dest / "MODEL_CARD.md").read_text()
    assert "# lung-attunet 9.9.9" in card and "three slices of my site" in card and "| png256 | 3 | 0.91 |" in card
