"""Software version and the medical-honesty statement carried by every output."""

__version__ = "0.1.0"

DISCLAIMER = (
    "CovidCT is research software. It is not a medical device and its output is not a diagnosis; "
    "every result must be reviewed by a qualified radiologist."
)
