"""Longitudinal review: register follow-up scans to the baseline, map and quantify the change.

``compare(inputs, outdir, ...)`` is the entry point (see :mod:`CovidCTLib.longitudinal.compare`).
Research software, not for diagnosis.
"""

from CovidCTLib.longitudinal.compare import CompareResult, TimePoint, compare
from CovidCTLib.longitudinal.registration import RegistrationError

__all__ = ["CompareResult", "RegistrationError", "TimePoint", "compare"]
