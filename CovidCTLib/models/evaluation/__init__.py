"""Evaluation of the networks: metrics, ``covidct evaluate``, calibration of thresholds, model cards."""
