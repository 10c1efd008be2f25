"""Training of the networks: the resumable loop, the segmentation and classifier trainers, losses, augmentation.

Never imported by the analysis.
"""
