"""Size and slice-count checks shared by every reader (refuse what cannot be analysed, with what to do)."""

from __future__ import annotations

from CovidCTLib.errors import InputError, NotCTError

#: refuse volumes above this many voxels (1.5e9 voxels is e.g. 1024 x 1024 x 1430; ~3 GB as int16).
MAX_VOXELS = 1_500_000_000
#: fewest slices accepted for 3-D work.
MIN_SLICES_3D = 10


def check_size(n_voxels: int, label: str) -> None:
    """Refuse inputs too large to analyse in memory."""
    if n_voxels > MAX_VOXELS:
        raise InputError(
            f"{label} has {n_voxels:,} voxels, above the limit of {MAX_VOXELS:,}; crop it to the chest or "
            "resample it to a coarser grid (e.g. 1 mm) before loading."
        )


def check_slices(n_slices: int, label: str, single_from_ct: bool = False) -> None:
    """Refuse stacks too thin for 3-D work."""
    if n_slices == 1 and single_from_ct:
        raise NotCTError(
            f"{label} is a single CT image (a scout/localizer or one slice of a series); the 3-D analysis needs "
            "the whole axial series - load its folder. For single slices use `covidct segment-slices`."
        )
    if n_slices < MIN_SLICES_3D:
        raise NotCTError(
            f"{label} has only {n_slices} slice(s); 3-D analysis needs at least {MIN_SLICES_3D}. Load the "
            "complete axial series, or use `covidct segment-slices` for individual 2-D slices."
        )
