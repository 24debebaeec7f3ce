"""LightningModules: one file per system (``joint``, ``tempotokens``, ``vta_ldm``), the shared base (``base.AVSystem``
and ``base.DiffusionSystem``: steps, EMA, condition dropout, validation samples, the sampling prologue), ``settings``
(typed model settings), ``common`` (AV-Align of generated clips, media for the loggers) and ``saliency`` (gradient
saliency maps of input frames, drawn over them)."""
