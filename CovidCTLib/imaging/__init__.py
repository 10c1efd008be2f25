"""Array-grid and patient-orientation helpers shared by the segmenters (no segmentation logic here)."""
