"""LightningModules: one file per system, plus the shared base (``base.AVSystem``)."""
