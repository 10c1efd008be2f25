"""Benchmark: surfaces of the four segments of the real RICORD chest CT (512x512x248).

Usage: ``python benchmarks/bench_surfaces.py [dicom_folder]`` (default: the shared RICORD series).
Uses the classical lung/infection segmentation when available, else a quick threshold (HU < -400 air not
touching the border = lungs, split at the image midline; after a 3x3x3 median filter, inside the lungs
-750..-300 HU = GGO, > -300 HU = consolidation). Prints one row per segment: triangles, wall seconds and CPU
seconds of ``surfaces.labelmap_to_polydata`` with its defaults. Skips (exit 0) when the data is absent.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTLib import surfaces
from CovidCTLib.labels import SEGMENTS

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ricord_1a_covid_chest_ct" / "dicom"


def quick_segmentation(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rough lungs (1 right / 2 left) and infection (1 GGO / 2 consolidation) by thresholds."""
    air = hu < -400
    labels, _ = ndimage.label(air)
    border = np.unique(
        np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    )
    inside = air & ~np.isin(labels, border)
    labels, n = ndimage.label(inside)
    sizes = ndimage.sum(inside, labels, range(1, n + 1))
    keep = 1 + np.argsort(sizes)[-2:]
    lungs_mask = ndimage.binary_closing(np.isin(labels, keep), iterations=3)
    lungs_mask = ndimage.binary_fill_holes(lungs_mask)
    lungs = np.zeros(hu.shape, np.uint8)
    mid = hu.shape[2] // 2
    lungs[:, :, :mid][lungs_mask[:, :, :mid]] = 1  # image left = patient right (LPS, identity direction)
    lungs[:, :, mid:][lungs_mask[:, :, mid:]] = 2
    smooth = ndimage.median_filter(hu, size=3)
    infection = np.zeros(hu.shape, np.uint8)
    infection[lungs_mask & (smooth > -750) & (smooth <= -300)] = 1
    infection[lungs_mask & (smooth > -300)] = 2
    return lungs, infection


def segment(ct_image: sitk.Image) -> tuple[np.ndarray, np.ndarray, str]:
    """Classical segmentation when that module exists, else :func:`quick_segmentation`."""
    try:
        from CovidCTLib.classical.infection import segment_infection_classical
        from CovidCTLib.classical.lungs import segment_lungs_classical
        from CovidCTLib.volume import CTVolume

        ct = CTVolume(image=ct_image, intensity="HU", source="bench")
        lungs = segment_lungs_classical(ct)
        return lungs, segment_infection_classical(ct, lungs), "classical"
    except ImportError:
        lungs, infection = quick_segmentation(sitk.GetArrayFromImage(ct_image))
        return lungs, infection, "quick threshold"


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else DEFAULT
    if not folder.is_dir():
        print(f"skipped: {folder} not found")
        return 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    lungs, infection, how = segment(image)
    print(f"volume {image.GetSize()} spacing {tuple(round(s, 3) for s in image.GetSpacing())}; masks: {how}")
    print(f"{'segment':<16}{'voxels':>10}{'triangles':>12}{'seconds':>10}{'cpu_s':>10}")
    total = cpu_total = 0.0
    for spec in SEGMENTS:
        mask = (lungs if spec.source == "lungs" else infection) == spec.label
        start, cpu_start = time.perf_counter(), time.process_time()
        poly = surfaces.labelmap_to_polydata(mask, image)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        total += seconds
        cpu_total += cpu
        print(f"{spec.key:<16}{int(mask.sum()):>10}{poly.GetNumberOfPolys():>12}{seconds:>10.3f}{cpu:>10.3f}")
    print(f"{'total':<16}{'':>10}{'':>12}{total:>10.3f}{cpu_total:>10.3f}")
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall seconds grow with the load; "
        "cpu_s is this process's CPU time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
