"""Run-time part of the trained networks: the only part ``analyze`` and Slicer import.

registry (manifest + SHA-256), networks (the allowed constructors), normalisation, device, the slice inferer for
the segmentation networks (``inference``) and the slice classifier (``classifier``, ``classifier_inference``).
"""
