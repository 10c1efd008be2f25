"""Post-processing of segmentation outputs (HU-consistency gating of the infection on HU volumes)."""
