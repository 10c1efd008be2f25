"""Issue 16, synthesis: the CycleGAN synthesizer's networks, a few-step training run, resume, and
``covidct synthesize`` (same names and sizes, refused models). Tiny phantom images only; runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from CovidCTLib.cli import main
from CovidCTLib.errors import ModelError
from CovidCTLib.models.data.unpaired import load_domain
from CovidCTLib.models.runtime.synth_networks import ResnetGenerator
from CovidCTLib.models.runtime.synthesis import load_synthesizer
from CovidCTLib.models.training.checkpoints import load_checkpoint
from CovidCTLib.models.training.synthesizer import ImagePool, SynthConfig, build_discriminator, lr_factor
from CovidCTLib.phantom import make_phantom


def _slices_to_png(folder: Path, lesions: bool, seed: int) -> Path:
    """Lung-window 8-bit PNGs of the middle slices of a small phantom (with or without lesions)."""
    ph = make_phantom(shape=(12, 72, 72), seed=seed, lesions=lesions, noise=10.0)
    hu = sitk.GetArrayFromImage(ph.ct.image).astype(np.float32)
    folder.mkdir(parents=True)
    for z in range(3, 9):
        img = ((np.clip(hu[z], -1250, 250) + 1250) / 1500 * 255).round().astype(np.uint8)
        Image.fromarray(img).save(folder / f"slice_{z:02d}.png")
    return folder


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domains")
    return _slices_to_png(root / "noncovid", False, 1), _slices_to_png(root / "covid", True, 2)


def _train(a: Path, b: Path, run: Path, steps: int, *extra: str) -> int:
    return main(
        [
            "train",
            "synthesizer",
            "--from",
            str(a),
            "--to-style",
            str(b),
            "--out",
            str(run),
            "--size",
            "32",
            "--max-steps",
            str(steps),
            "--batch-size",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--threads",
            "1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def trained(domains: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "synth"
    assert _train(*domains, run, 2) == 0
    return run


def test_generator_keeps_the_image_shape_and_range() -> None:
    g = ResnetGenerator(1, base=8, n_down=2, n_blocks=2)
    with torch.no_grad():
        y = g(torch.randn(3, 1, 32, 48))
    assert y.shape == (3, 1, 32, 48)
    assert float(y.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="multiples of 4"):
        g(torch.zeros(1, 1, 30, 32))


def test_patch_discriminator_gives_a_patch_map() -> None:
    d = build_discriminator(SynthConfig(d_channels=8, d_layers=3))
    out = d(torch.zeros(2, 1, 64, 64))
    out = out[-1] if isinstance(out, list) else out
    assert out.shape[:2] == (2, 1) and out.shape[-1] > 1  # one score per patch, not per image


def test_image_pool_and_linear_decay() -> None:
    pool, rng = ImagePool(2), np.random.default_rng(0)
    first = pool.query(torch.ones(2, 1, 4, 4), rng)
    assert torch.equal(first, torch.ones(2, 1, 4, 4)) and len(pool.images) == 2
    mixed = pool.query(torch.zeros(8, 1, 4, 4), rng)
    assert {float(t.max()) for t in mixed} == {0.0, 1.0}  # some older fakes come back
    assert [lr_factor(s, 100) for s in (0, 49, 50, 75, 100)] == [1.0, 1.0, 1.0, 0.5, 0.0]


def test_volume_sources_give_lung_slices(tmp_path: Path) -> None:
    ph = make_phantom(shape=(16, 64, 64), seed=0, lesions=False, oblique=True)
    sitk.WriteImage(ph.ct.image, str(tmp_path / "scan.nii.gz"))
    dom = load_domain([tmp_path], store_size=36, max_slices_per_volume=5)
    assert 1 <= len(dom) <= 5 and dom.crops.shape[1:] == (36, 36)
    assert all(n.startswith("scan_z") for n in dom.names)


def test_training_writes_checkpoint_grid_and_sealed_model(trained: Path) -> None:
    ck = load_checkpoint(trained / "last.pt")  # plain values: loads with weights_only=True
    assert ck["step"] == 2 and {"g_ab", "g_ba", "d_a", "d_b", "opt_g", "opt_d"} <= set(ck)
    grids = sorted((trained / "samples").glob("step_*.png"))
    assert grids and Image.open(grids[-1]).size[1] == 6 * 32 + 14  # six rows of 32 px and a caption strip
    manifest = json.loads((trained / "model" / "covid-synthesizer" / "manifest.json").read_text())
    assert manifest["task"] == "synthesis" and manifest["training"]["steps"] == 2
    assert manifest["architecture"]["network"] == "cyclegan-resnet" and "manifest_sha256" in manifest


def test_resume_continues_the_step_count_exactly(domains: tuple[Path, Path], tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(*domains, straight, 4) == 0
    assert _train(*domains, resumed, 2) == 0
    assert _train(*domains, resumed, 4, "--resume") == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in a["g_ab"]:
        assert torch.equal(a["g_ab"][key], b["g_ab"][key]), key


def test_synthesize_keeps_names_and_sizes(trained: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ph = make_phantom(shape=(8, 90, 70), seed=4, lesions=False)
    hu = sitk.GetArrayFromImage(ph.ct.image)[4].astype(np.float32)
    img = ((np.clip(hu, -1250, 250) + 1250) / 1500 * 255).round().astype(np.uint8)
    Image.fromarray(img).save(src / "a.png")
    Image.fromarray(img[:, :50]).convert("RGB").save(src / "b.jpg")
    assert (
        main(
            ["synthesize", "--from", str(src), "-o", str(tmp_path / "out"), "--model", str(trained), "--device", "cpu"]
        )
        == 0
    )
    for name, size in (("a.png", (70, 90)), ("b.jpg", (50, 90))):
        out = Image.open(tmp_path / "out" / name)
        assert out.size == size and out.mode == "L"
    assert "not a real patient" in Image.open(tmp_path / "out" / "a.png").info["Comment"]
    assert b"research software" in Image.open(tmp_path / "out" / "b.jpg").info["comment"]
    out_a = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert out_a[0, 0] == img[0, 0] and out_a[-1, -1] == img[-1, -1]  # outside the lung box: untouched
    assert not np.array_equal(out_a, img)  # the lungs were translated


def test_synthesize_refuses_a_tampered_or_missing_model(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained / "model", bad / "model")
    folder = bad / "model" / "covid-synthesizer"
    load_synthesizer(bad)  # the copy is intact
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"]["size"] = 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="modified"):
        load_synthesizer(bad)
    shutil.copy(trained / "model" / "covid-synthesizer" / "manifest.json", folder / "manifest.json")
    weights = folder / "covid-synthesizer.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelError, match="checksum"):
        load_synthesizer(bad)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(src / "x.png")
    assert main(["synthesize", "--from", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path)]) == 2
    assert "no synthesizer model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_synthetic_image_folders_are_classifier_aux_slices(domains: tuple[Path, Path], tmp_path: Path) -> None:
    from CovidCTLib.models.data.classifier_aux import build_aux_cache

    noncovid, covid = domains
    aux = build_aux_cache(f"covid-images:{covid},noncovid-images:{noncovid}", tmp_path, 48)
    assert aux["crops"].shape == (12, 48, 48)
    assert aux["labels"].tolist() == [1] * 6 + [0] * 6


def test_drop_real_covid_trains_on_non_covid_only(domains: tuple[Path, Path], tmp_path: Path) -> None:
    import argparse
    import shutil

    from CovidCTLib.errors import InputError
    from CovidCTLib.models.training.classifier_train import _prepare

    data = tmp_path / "data"
    for name, src in (("NonCOVID", domains[0]), ("COVID", domains[1])):
        (data / name).mkdir(parents=True)
        for i, p in enumerate(sorted(src.glob("*.png"))):
            shutil.copy(p, data / name / f"{name.lower()}{i}-p1.png")  # one source group per image
    args = argparse.Namespace(data=str(data), out=str(tmp_path / "out"), drop_real_covid=True, aux_data=None)
    with pytest.raises(InputError, match="needs --aux-data"):
        _prepare(args)
    args.aux_data = f"covid-images:{domains[1]}"
    items, _, train_idx, val_idx, _ = _prepare(args)
    assert train_idx and {items[i].label for i in train_idx} == {0}
    assert {items[i].label for i in val_idx} == {0, 1}  # validation keeps the real COVID images


def test_train_synthesizer_needs_both_domains(
    domains: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "synthesizer", "--to-style", str(domains[1]), "--out", str(tmp_path / "r")]) == 2
    assert "needs --from" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "synthesizer",
                "--from",
                str(domains[0]),
                "--to-style",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
