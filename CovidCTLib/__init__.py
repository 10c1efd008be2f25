"""CovidCTLib: COVID-19 chest CT analysis engine.

Research software, not a medical device and not for diagnosis.
"""

from CovidCTLib.version import DISCLAIMER, __version__

__all__ = ["DISCLAIMER", "__version__"]
