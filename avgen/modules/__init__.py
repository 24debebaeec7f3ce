"""Trainable cross-modal modules of the joint audio+video model (Hayakawa et al., Sec. III-C, III-E).

Plain ``nn.Module``s, independent of diffusers; they are hooked into the AnimateDiff and AudioLDM
U-Nets elsewhere. Layouts: video latents (B, C, T, H, W), audio latents (B, C, T, M); U-Net
features in their time view (B, C, T, S); connector features (B, T_c, D). T is always time.

* ``connector.Connector``: one modality's latents (+ self-conditioning estimate, timestep) ->
  (B, T', D), CoDi's environment encoder.
* ``cmcpe.CMCPE``: CMC-PE block (Fig. 3b); ``cmcpe.interpolate_time`` resamples a sequence in time.
* ``cross_modal_attention.CrossModalAttention``: cross-attention to one pooled vector (Fig. 3a).
* ``attention``: the shared pieces (multi-head attention, GEGLU feed-forward, timestep embedding,
  the ``CrossModalTransformer`` skeleton of the two blocks).
* ``joint_unet.JointUNet``: the two base U-Nets joined by connectors and cross-modal blocks.
* ``timestep_adjust``: the per-modality local timesteps of Sec. III-B (Eq. 9).
* ``audio_mapper``: TempoTokens' ``pool_to_frames`` (encoder patches -> frames by time) and ``AudioMapper`` (Eq. 1).
* ``context_windows``: TempoTokens' ``window_means`` around every frame (Eqs. 2-3) and Table 3's ``resolutions``.
* ``attentive_pooling.AttentivePooling``: TempoTokens' clip token from the frame tokens (Eqs. 4-6).

Import from the submodules; this package imports nothing so that ``import avgen.modules`` stays cheap.
"""
