"""Input edge cases of issue 12: items 4, 5, 10, 11 and 12 (each test failed before its fix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import write_series

from CovidCTLib.cli import main
from CovidCTLib.io.loader import load_ct
from CovidCTLib.phantom import make_phantom


def _display_slice(seed: int = 1) -> np.ndarray:
    """A plausible 8-bit axial slice (lung window) from the phantom."""
    ct = make_phantom((16, 96, 96), spacing=(2.5, 2.0, 2.0), seed=seed).ct
    return np.clip((ct.array[8] + 1350.0) / 1500.0 * 255.0, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ item 12
def test_grey_alpha_png_is_read_and_segmented(tmp_path: Path) -> None:
    from PIL import Image

    grey = _display_slice()
    folder = tmp_path / "in"
    folder.mkdir()
    la = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    Image.fromarray(la, mode="LA").save(folder / "slice_la.png")
    ct = load_ct(folder / "slice_la.png", require_3d=False)
    np.testing.assert_array_equal(ct.array[0], grey)
    assert any("alpha" in note for note in ct.notes)
    out = tmp_path / "masks"
    code = main(["segment-slices", "--task", "lung", str(folder), "-o", str(out), "--method", "classical"])
    assert code == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "slice_la.png")))
    assert mask.shape == grey.shape


def test_truncated_png_is_still_called_corrupt(tmp_path: Path) -> None:
    from PIL import Image

    from CovidCTLib.errors import InputError

    path = tmp_path / "cut.png"
    Image.fromarray(_display_slice(), mode="L").save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt"):
        load_ct(path, require_3d=False)
