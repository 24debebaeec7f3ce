"""Frozen pretrained networks that turn audio, video or text into features, for conditioning a system
or for a metric, one family per file:

- :mod:`~avgen.encoders.beats`: BEATs (Chen et al. 2022), the audio encoder of TempoTokens, with the official
  checkpoints' parameter names so ``BEATs_iter3_plus_AS2M*.pt`` loads as is;
- :mod:`~avgen.encoders.cavp`: the audio branch of Diff-Foley's CAVP, from ``cavp_epoch66.ckpt``;
- :mod:`~avgen.encoders.cavp_video`: its video branch, a video encoder of VTA-LDM's Table 2, whose network (SlowOnly
  R3D-50) is :mod:`~avgen.encoders.slowonly`;
- :mod:`~avgen.encoders.clip4clip`: CLIP ViT-L/14 frame embeddings, the video encoder of VTA-LDM;
- :mod:`~avgen.encoders.panns`: the PANNs CNN14 audio tagger (IS, KL, FAD-PANNs);
- :mod:`~avgen.encoders.vggish`: VGGish (FAD);
- :mod:`~avgen.encoders.video_classifiers`: the I3D of FVD and the C3D of the video Inception Score;
- :mod:`~avgen.encoders.imagebind`: ImageBind's vision and audio towers and transforms;
- :mod:`~avgen.encoders.base`: the frozen ``FeatureExtractor`` base; :mod:`~avgen.encoders.registry`:
  the pinned extractors by name.

Weight files and their origins are registered in :mod:`avgen.pretrained`. Importing this package imports
nothing heavy; each submodule imports what it needs.
"""
