"""Explanations of the COVID score: top slices, Grad-CAM heatmap over the lungs, hottest regions (issue 16.2)."""
