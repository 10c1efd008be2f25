"""2-D images that SimpleITK cannot decode but are valid (grey + alpha PNG, palette PNG), read with Pillow.

SimpleITK's PNG reader refuses two-channel (grey + alpha) files ("Unknown PixelType"), which the loader
used to report as corrupt. :func:`read_with_pillow` is the fallback :func:`CovidCTLib.io.images.load_2d_image`
tries before calling a file corrupt; a file Pillow cannot decode either is still reported as corrupt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def read_with_pillow(path: Path) -> tuple[sitk.Image, str] | None:
    """``(image, note)`` for a 2-D image Pillow decodes: grey (alpha dropped) or RGB; None when it cannot."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # Pillow comes with matplotlib / scikit-image; without it there is no fallback
        return None
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("LA", "La"):
                array, note = np.asarray(image.getchannel(0)), "grey + alpha image: alpha channel ignored."
            elif mode in ("P", "PA"):
                array, note = np.asarray(image.convert("RGB")), "palette image converted to RGB."
            elif mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                array, note = np.asarray(image), ""
            else:
                array, note = np.asarray(image.convert("RGB")), f"{mode} image converted to RGB."
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError):
        return None
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        return None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=array.ndim == 3), note
