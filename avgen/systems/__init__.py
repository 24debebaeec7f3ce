"""LightningModules: one file per system (``joint``, ``tempotokens``), the shared base (``base.AVSystem`` and
``base.DiffusionSystem``: steps, EMA, condition dropout, validation samples, the sampling prologue) and
``common`` (AV-Align of generated clips, media for the loggers)."""
