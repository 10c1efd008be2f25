"""Segmentation seam: lung and infection segmenters behind one protocol, chosen by (task, method)."""
