"""The options of one analysis, shared by ``covidct analyze`` and ``covidct batch`` (one definition each)."""

from __future__ import annotations

import argparse

from CovidCTLib.models.runtime.device import DEVICES
from CovidCTLib.outputs.registry import add_output_arguments
from CovidCTLib.segmentation.registry import METHODS


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where networks run: auto = CUDA when available, else CPU (default auto)",
    )


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """Method, classifier, the output flags (from the writer registry) and the classical HU ranges."""
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="auto = trained models when installed, else classical HU method (default auto)",
    )
    parser.add_argument("--no-classify", action="store_true", help="do not run the COVID classifier")
    parser.add_argument(
        "--no-kernel-harmonisation",
        action="store_true",
        help="analyse a sharp-kernel CT as it is, without smoothing it to a standard kernel's "
        "lung texture first (default: harmonise; stated in the report)",
    )
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="do not compute the classifier's Grad-CAM heatmap and report.json explanation",
    )
    parser.add_argument(
        "--top-slices",
        type=int,
        default=5,
        metavar="K",
        help="how many top-scoring slices the explanation lists (default 5)",
    )
    add_output_arguments(parser)
    parser.add_argument(
        "--ggo-range",
        type=float,
        nargs=2,
        metavar=("MIN_HU", "MAX_HU"),
        help="classical ground-glass HU range (default -750 -300)",
    )
    parser.add_argument(
        "--consolidation-range",
        type=float,
        nargs=2,
        metavar=("MIN_HU", "MAX_HU"),
        help="classical consolidation HU range (default -300 50)",
    )
