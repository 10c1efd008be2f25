"""The only part of CovidCTLib that imports Slicer/MRML: results into a scene, volumes out of it.

Uses only MRML and logic classes present both in the Slicer application and in the slicer-core wheel.
"""

from CovidCTLib.mrml.adapter import check_result_geometry, remove_nodes, result_to_mrml, results_to_mrml
from CovidCTLib.mrml.geometry import add_volume_from_image, ijk_to_ras_from_image, image_from_volume_node

__all__ = [
    "add_volume_from_image",
    "check_result_geometry",
    "ijk_to_ras_from_image",
    "image_from_volume_node",
    "remove_nodes",
    "result_to_mrml",
    "results_to_mrml",
]
