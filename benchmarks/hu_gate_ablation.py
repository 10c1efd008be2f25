"""Burden % / severity of the real HU volumes under variants of the HU gate (issue 13 model-card table).

The networks run once per scan (lungs + infection, shipped models, on the kernel-harmonised CT as in
``analyze``); each variant of
``CovidCTLib.postprocess.infection_hu.HUGating`` is then applied with the default noise floor.
Usage: ``python benchmarks/hu_gate_ablation.py [DATA_DIR]`` (default ``$COVIDCT_SHARED_DATA`` or
../shared/data). Research software, not for diagnosis.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from CovidCTLib.imaging.kernel import harmonise_kernel
from CovidCTLib.io.loader import load_ct
from CovidCTLib.models.runtime.inference import segment_infection_model, segment_lungs_model
from CovidCTLib.noise_floor import NoiseFloor, apply_noise_floor, remove_small_lesions
from CovidCTLib.postprocess.infection_hu import HUGating, gate_infection_hu
from CovidCTLib.postprocess.masses import MassRule
from CovidCTLib.quantify import quantify

SCANS = {
    "RICORD": "ricord_1a_covid_chest_ct/dicom",
    "LIDC-0001": "lidc_idri_chest_ct/LIDC-IDRI-0001.nii.gz",
    "LIDC-0002": "lidc_idri_chest_ct/LIDC-IDRI-0002.nii.gz",
    "LIDC-0003": "lidc_idri_chest_ct/LIDC-IDRI-0003.nii.gz",
    "A0001 kernel L": "lung_pet_ct_dx/A0001/2.000000-5mm-40805",
    "A0001 kernel B": "lung_pet_ct_dx/A0001/3.000000-5mm-41315",
}
#: the gate's later rules switched off (no lesion has a caudal-contact share above 2; none is under 0 mL)
_NO_DOME = {"dome_caudal_share": 2.0}
_NO_DENSE = {"dense_focus_max_ml": 0.0}
_NO_MASS = {"masses": MassRule(enabled=False)}
VARIANTS: dict[str, dict | None] = {
    "network + noise floor only": None,
    "+ density after thin-structure opening": {
        "border_mm": 1e-4,
        "min_core_ml": 0.0,
        "min_core_share": 0.0,
        "max_fat_share": 1.01,
        **_NO_DOME,
        **_NO_DENSE,
        **_NO_MASS,
    },
    "+ border band": {"max_fat_share": 1.01, **_NO_DOME, **_NO_DENSE, **_NO_MASS},
    "+ fat density (gate 1.0.0)": {**_NO_DOME, **_NO_DENSE, **_NO_MASS},
    "+ liver / spleen dome (gate 1.1.0)": {**_NO_DENSE, **_NO_MASS},
    "+ small dense focus (gate 1.2.0)": dict(_NO_MASS),
    "+ mass-like lesion = shipped (gate 1.3.0)": {},
    "shipped, mass core share >= 0.3": {"masses": MassRule(min_core_share=0.3)},
    "shipped, mass ellipsoid fill >= 0.3": {"masses": MassRule(min_ellipsoid_fill=0.3)},
    "shipped, mass axis ratio >= 0.4": {"masses": MassRule(min_axis_ratio=0.4)},
    "shipped, mass rim <= 30 mm": {"masses": MassRule(max_rim_mm=30.0)},
    "shipped, mass rules all loosened as above": {
        "masses": MassRule(min_core_share=0.3, min_ellipsoid_fill=0.3, min_axis_ratio=0.4, max_rim_mm=30.0)
    },
    "shipped, dense focus up to 1 mL": {"dense_focus_max_ml": 1.0},
    "shipped, dense focus up to 3 mL": {"dense_focus_max_ml": 3.0},
    "shipped, dense focus above -200 HU": {"dense_focus_min_hu": -200.0},
    "shipped, dome caudal share 0.8": {"dome_caudal_share": 0.8},
    "shipped, min density -650 HU": {"min_hu": -650.0},
    "shipped, min density -750 HU": {"min_hu": -750.0},
    "shipped, thin structures 7 mm": {"thin_mm": 7.0},
    "shipped, border 6 mm": {"border_mm": 6.0},
}


def main(data: Path) -> None:
    floor = NoiseFloor()
    cases = {}
    for name, rel in SCANS.items():
        ct = harmonise_kernel(load_ct(data / rel))[0]  # as analyze does: a sharp kernel is smoothed first
        lungs = segment_lungs_model(ct)
        cases[name] = (ct, lungs, segment_infection_model(ct, lungs))
    print("| variant | " + " | ".join(cases) + " |")
    print("|---" * (len(cases) + 1) + "|")
    for label, kw in VARIANTS.items():
        cells = []
        for ct, lungs, infection in cases.values():
            gated = infection if kw is None else gate_infection_hu(ct, lungs, infection, HUGating(**kw))[0]
            gated = remove_small_lesions(gated, ct.voxel_volume_ml, floor.min_lesion_ml)
            numbers = apply_noise_floor(quantify(ct, lungs, gated, min_lesion_ml=floor.min_lesion_ml), floor)
            cells.append(f"{numbers['infection']['percent_of_lungs']:.2f} / {numbers['severity_score']['total']}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ.get("COVIDCT_SHARED_DATA", "../shared/data"))
    main(root)
