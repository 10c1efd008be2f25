"""Trained networks: normalisation, registry (manifest + SHA-256), training, inference and evaluation.

Research software, not for diagnosis. Importing this package does not import torch; the submodules
that need it (networks, trainer, inference) import it themselves.
"""
