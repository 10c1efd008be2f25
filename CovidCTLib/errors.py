"""Exceptions with messages that tell the user what to do.

Every error raised on purpose by the engine derives from :class:`CovidCTError`; the command line
turns it into a one-line message and exit code 2 (no traceback).
"""


class CovidCTError(Exception):
    """Base class: a problem the user can act on. The message says what to do."""

    exit_code = 2


class InputError(CovidCTError):
    """The input cannot be read or is not usable (missing, corrupt, empty folder, wrong format)."""


class NotCTError(InputError):
    """The input is readable but is not an axial CT volume (MR, scout/localizer, 2-D where 3-D is needed)."""


class GeometryError(InputError):
    """The input's geometry is not supported (gantry tilt, non-uniform spacing, mixed series)."""


class OutputExistsError(CovidCTError):
    """An output file exists and ``--overwrite`` was not given."""


class ModelError(CovidCTError):
    """A model is missing, tampered with (checksum mismatch) or incompatible."""


class AnalysisError(CovidCTError):
    """The analysis ran but cannot give a trustworthy result (for example no lung found)."""


class CancelledError(CovidCTError):
    """The user cancelled a running job."""

    exit_code = 130
