"""Frozen pretrained encoders that turn a condition (audio, video) into features for a system.

- :mod:`avgen.encoders.beats`: BEATs (Chen et al. 2022), the audio encoder of TempoTokens, with
  parameter names equal to the official checkpoints' so that ``BEATs_iter3_plus_AS2M*.pt`` loads as is.
- :mod:`avgen.encoders.cavp`: the audio branch of Diff-Foley's CAVP (the TempoTokens course-project
  variant), loaded from ``cavp_epoch66.ckpt``.

Importing this package imports nothing heavy; each submodule imports what it needs.
"""
