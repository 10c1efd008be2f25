"""Training and evaluation data: dataset readers, grouped splits, synthetic lesions, classifier slices."""
