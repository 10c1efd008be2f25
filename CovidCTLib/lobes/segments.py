"""The five lobes as Slicer segmentation segments (for a ``.seg.nrrd`` layer), with SNOMED CT terminology.

Use with :func:`CovidCTLib.io.seg_nrrd.write_layered_seg_nrrd`, e.g. lungs, infection and lobes as three
layers: ``write_layered_seg_nrrd([lungs, infection, lobes], covidct_segments() + lobe_layer_segments(2), ...)``.
"""

from __future__ import annotations

from CovidCTLib.io.seg_nrrd import LayerSegment, terminology_entry
from CovidCTLib.labels import LOBE_SEGMENTS


def lobe_layer_segments(layer: int) -> list[LayerSegment]:
    """RUL, RML, RLL, LUL, LLL (labels 1-5 of the lobes labelmap) stored in labelmap layer ``layer``."""
    return [
        LayerSegment(spec.key, spec.name, spec.color, spec.label, layer, f"TerminologyEntry:{terminology_entry(spec)}|")
        for spec in LOBE_SEGMENTS
    ]
