"""Allow ``python -m CovidCTLib`` as a synonym of the ``covidct`` command."""

import sys

from CovidCTLib.cli import main

sys.exit(main())
