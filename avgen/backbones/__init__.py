"""Frozen pretrained parts of the systems and their tiny random twins.

- :mod:`avgen.backbones.loader`: offline loading (:func:`~avgen.backbones.loader.load_pretrained`), the
  registry of published originals, ``tiny:<name>`` sources.
- :mod:`avgen.backbones.animatediff`: the video base model (SD1.5 UNet + AnimateDiff motion modules).
- :mod:`avgen.backbones.audioldm`: the audio base model (AudioLDM) and its mel front end.
- :mod:`avgen.backbones.text2video`: the zeroscope / ModelScope text-to-video model of TempoTokens,
  with per-frame cross-attention contexts (``PerFrameUNet3D``).
- :mod:`avgen.backbones.unet3d_checkpointing`: gradient checkpointing of the frozen UNet3D.
- :mod:`avgen.backbones.tiny`: tiny random-initialised twins of all of them (and of BEATs),
  written with ``save_pretrained`` / the official checkpoint format.

Importing this package imports nothing heavy; each submodule imports what it needs.
"""
