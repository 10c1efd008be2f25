"""Trained networks, laid out by role: ``runtime`` (what the analysis imports), ``training``, ``data``,
``evaluation``, and ``cli`` (the train / finetune / evaluate / calibrate commands).

Research software, not for diagnosis. Importing this package does not import torch.
"""
