"""Where in the lung: airway landmarks, anatomical zones, peripheral vs central involvement (issue 14).

Research software, not a diagnosis. Entry point of the analysis: :func:`CovidCTLib.anatomy.hooks.analyze_anatomy`.
"""
