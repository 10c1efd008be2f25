"""Running the analysis in a background process (used by the Slicer module; no Slicer import)."""
