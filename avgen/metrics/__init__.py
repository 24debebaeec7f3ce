"""Evaluation metrics of generated sounding videos (torchmetrics ``Metric`` classes and per-clip functions)."""
