"""The video branch of CAVP, Diff-Foley's contrastive audio-visual encoder (Luo et al. 2023), as the sixth
conditioning video encoder of VTA-LDM's encoder ablation (Xu et al. 2024, "Video-to-Audio Generation with Hidden
Alignment", arXiv 2407.07464, Table 2 and appendix C, item 6: "We use the pre-trained CAVP (also pre-trained on the
VGGSound dataset) as our vision encoder"): one L2-normalised 512-d token per frame at 4 fps.

The network is ``CAVP_Inference``'s video branch (luosiallen/Diff-Foley, commit 0ba1e8a,
``inference/model/cavp_model.py``): ``video_encoder = ResNet3dSlowOnly(depth=50)`` from
``inference/model/cavp_modules.py`` (mmaction2's SlowOnly R3D-50, here in plain torch:
:class:`avgen.encoders.slowonly.ResNet3dSlowOnly`)
and ``video_project_head = nn.Linear(2048, 512)``. The features are ``encode_video(video, normalize=True,
pool=False)``, as Diff-Foley's own feature extraction calls it (``inference/demo_util.py``,
``Extract_CAVP_Features.forward``). Shapes for one clip of F frames::

    frames (F, 3, H, W) uint8  ── preprocess ──>  video (1, F, 3, 224, 224) float32 in [0, 1]
    video  ── permute ──>  (1, 3, F, 224, 224)                                          axis 2 time
           ── stem: conv (1, 7, 7) stride (1, 2, 2) + BN + ReLU ──>                     (1, 64, F, 112, 112)
           ── max pool (1, 3, 3) stride (1, 2, 2) ──>                                   (1, 64, F, 56, 56)
           ── layer1…4: 3, 4, 6, 3 bottlenecks, spatial strides 1, 2, 2, 2 ──>         (1, 2048, F, 7, 7)
           ── adaptive_pool: mean over (h, w) ──>                                       (1, F, 2048)
           ── video_project_head, L2 norm per time step ──>                             tokens (F, 512)

Time is never strided, so F frames give F tokens, token k covering [k / fps, (k + 1) / fps). The bottlenecks of
layer3 and layer4 are inflated ('3x1x1': their first conv has kernel (3, 1, 1), zero-padded in time), all other convs
see one frame: token k depends on frames k − 9 … k + 9 (6 + 3 inflated blocks).

Preprocessing (``Extract_CAVP_Features``): the video is re-encoded at 4 fps with ffmpeg (:data:`FPS`: avgen decodes
at ``data.clip.fps``, which must equal ``model.encoder.fps``), every frame goes through ``transforms.Resize((224,
224))`` (a squash to 224 × 224, no crop; PIL's antialiased bilinear filter on the 8-bit image) and ``ToTensor()``
([0, 1], no mean/std). :func:`preprocess` runs that on tensors (:func:`~avgen.encoders.vivit.resize_bilinear`).

One departure: the official extraction feeds the frames in chunks of ``batch_size`` (40 in
``inference/diff_foley_inference.ipynb``), each chunk a separate clip for the (3, 1, 1) convs, whose zero padding
then cuts the time axis at every chunk border; avgen encodes each clip in one pass. The tokens are the official ones
when a clip has at most ``batch_size`` frames (a 10 s clip at 4 fps has 40); for longer clips they differ within 9
tokens of each chunk border.

Parameter names are ``CAVP_Inference``'s (mmcv's ``ConvModule`` names its parts ``conv`` and ``bn``):
``video_encoder.conv1.{conv,bn}.*``, ``video_encoder.layer{1..4}.{j}.conv{1,2,3}.{conv,bn}.*``,
``video_encoder.layer{1..4}.0.downsample.{conv,bn}.*`` and ``video_project_head.{weight,bias}``; see
:func:`load_cavp_video` for the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor, nn

from avgen.backbones.loader import TINY_PREFIX, resolve_source
from avgen.encoders.base import VideoTokens
from avgen.encoders.cavp import (
    CHECKPOINT_FILE,
    CHECKPOINT_ORIGIN,
    TINY_FILE,
    CAVPCheckpointError,
    CAVPWeightsMissing,
    checkpoint_branch,
    read_state_dict,
)
from avgen.encoders.frames import FrozenVideoEncoder, check_fps, padded_tokens
from avgen.encoders.slowonly import INFLATE, CAVPVideo
from avgen.encoders.vivit import resize_bilinear
from avgen.errors import ConfigError
from avgen.media import as_fps

FPS = 4  # Diff-Foley's extraction rate (Extract_CAVP_Features(fps=4))
IMAGE_SIZE = 224  # transforms.Resize((224, 224))
VIDEO_BRANCH = ("video_encoder.", "video_project_head.")
TINY_SOURCE = f"{TINY_PREFIX}cavp"


def preprocess(frames: Tensor, image_size: int = IMAGE_SIZE) -> Tensor:
    """``transforms.Compose([Resize((image_size, image_size)), ToTensor()])`` of Diff-Foley's extraction on tensors.

    Args:
        frames: (N, 3, H, W) uint8 RGB, or float32 holding 0…255 (differentiable).
        image_size: the side both axes are resized to (224), whatever the aspect ratio.

    Returns:
        (N, 3, image_size, image_size) float32 in [0, 1], multiples of 1/255.
    """
    return resize_bilinear(frames, (image_size, image_size)).float() / 255


class CAVPVideoEncoder(FrozenVideoEncoder):
    """VTA-LDM's CAVP encoder: one unit-norm token per frame (module docstring), each clip in one pass.

    Args:
        model: the video branch (:func:`load_cavp_video` loads it); frozen here.
        fps: the frame rate the frames must be decoded at (:data:`FPS`); the encoder does not resample.
        image_size: the side frames are squashed to (224).
    """

    name = "CAVP"
    fps: float = FPS  # the rate to decode at, readable before an encoder is loaded

    def __init__(self, model: CAVPVideo, fps: float = FPS, image_size: int = IMAGE_SIZE):
        super().__init__(model, fps)
        self.image_size = image_size

    @property
    def embed_dim(self) -> int:
        """D, the width of ``video_project_head`` (512)."""
        return self.model.embed_dim

    def encode(self, clips: list[Tensor]) -> VideoTokens:
        """One token per frame: ``embeds`` (B, max F_b, D) float32 in frame order, unit norm at real frames and zero
        at padding; ``mask`` (B, max F_b) bool; ``seconds_per_token`` = 1 / fps. Clips of equal frame count run as
        one batch; a clip is never padded in time, since the (3, 1, 1) convs would see the padding."""
        weight = self.model.video_project_head.weight
        pixels = [preprocess(clip.to(weight.device), self.image_size) for clip in clips]
        by_length: dict[int, list[int]] = {}
        for index, clip in enumerate(pixels):
            by_length.setdefault(len(clip), []).append(index)
        tokens: list[Tensor] = [weight.new_empty(0)] * len(clips)
        for indices in by_length.values():
            batch = self.model(torch.stack([pixels[i] for i in indices]).to(weight.dtype)).float()
            for index, clip_tokens in zip(indices, batch):
                tokens[index] = clip_tokens
        return padded_tokens(tokens, Fraction(1) / as_fps(self.fps))


def shapes_to_arguments(branch: Mapping[str, Tensor], where: str) -> dict[str, object]:
    """:class:`CAVPVideo` arguments read off the weight names and shapes (the file stores no config): blocks per
    stage from the ``video_encoder.layer{i}.{j}.*`` names, the base width from the stem conv, D from the head.

    Raises:
        CAVPCheckpointError: the stem, the head or a stage is missing.
    """
    blocks = dict.fromkeys(range(1, len(INFLATE) + 1), 0)
    for key in branch:
        match = re.match(r"video_encoder\.layer(\d+)\.(\d+)\.", key)
        if match and int(match[1]) in blocks:
            blocks[int(match[1])] = max(blocks[int(match[1])], int(match[2]) + 1)
    needed = ["video_encoder.conv1.conv.weight", "video_project_head.weight",
              *(f"video_encoder.layer{i}.0.*" for i, count in blocks.items() if not count)]
    absent = [key for key in needed if key not in branch]
    if absent:
        raise CAVPCheckpointError(f"{where} lacks {', '.join(absent)}, so it is not CAVP's SlowOnly R3D-50 video "
                                  f"branch; expected {CHECKPOINT_FILE} from {CHECKPOINT_ORIGIN}")
    return {"stage_blocks": tuple(blocks.values()), "base_channels": branch["video_encoder.conv1.conv.weight"].shape[0],
            "embed_dim": branch["video_project_head.weight"].shape[0]}


def _listing(keys: Sequence[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def check_fit(model: nn.Module, branch: Mapping[str, Tensor], where: str) -> None:
    """CAVPCheckpointError (one line: the missing, unexpected and mis-shaped names) unless ``branch`` fits
    ``model.state_dict()`` key for key and shape for shape."""
    expected = model.state_dict()
    # BatchNorm's step counter is not used in eval mode, and a file saved without it still holds every weight
    missing = sorted(key for key in set(expected) - set(branch) if not key.endswith(".num_batches_tracked"))
    unexpected = sorted(set(branch) - set(expected))
    misshaped = sorted(f"{key} {tuple(branch[key].shape)} ≠ {tuple(value.shape)}" for key, value in expected.items()
                       if key in branch and tuple(branch[key].shape) != tuple(value.shape))
    problems = [f"{len(keys)} {what}: {_listing(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise CAVPCheckpointError(f"{where}: the video_encoder.* / video_project_head.* weights do not fit CAVP's "
                                  f"SlowOnly R3D ({'; '.join(problems)}); expected {CHECKPOINT_FILE} from "
                                  f"{CHECKPOINT_ORIGIN}")


def load_cavp_video(source: str | os.PathLike | None, config_key: str = "model.encoder.path", *,
                    tiny_dir: str | os.PathLike | None = None, normalize: bool = True,
                    fps: float = FPS) -> CAVPVideoEncoder:
    """The frozen :class:`CAVPVideoEncoder` from Diff-Foley's ``cavp_epoch66.ckpt``, local files only.

    What is known about the file comes from Diff-Foley's own loader (commit 0ba1e8a, ``inference/demo_util.py``
    ``Extract_CAVP_Features.init_first_from_ckpt``): a dict whose weights are under ``state_dict`` (or the dict
    itself), keys possibly prefixed ``module.``, loaded into ``CAVP_Inference``. Here the ``module.`` prefixes are
    removed (:func:`~avgen.encoders.cavp.checkpoint_branch`), the audio branch and ``logit_scale`` are ignored, the
    architecture is read off the weight shapes (:func:`shapes_to_arguments`) and every ``video_encoder.*`` and
    ``video_project_head.*`` weight must fit (strict). Not verified (the file was not available): the exact key
    prefix of the published file.

    Args:
        source: the ``.ckpt`` file, a folder holding ``cavp_epoch66.ckpt``, or ``tiny:cavp`` (both branches with tiny
            widths, :func:`avgen.backbones.tiny.save_tiny_cavp`, written once under ``tiny_dir``). Read with
            ``torch.load(weights_only=True)``.
        config_key: the config key ``source`` comes from, named in errors; ``normalize`` and ``fps`` are its
            siblings.
        tiny_dir: the folder for tiny weights (only with ``tiny:cavp``).
        normalize: must be true: CAVP's preprocessing has no mean/std step to leave out (``ToTensor`` only).
        fps: the frame rate the frames must be decoded at (:data:`FPS`).

    Raises:
        CAVPWeightsMissing: no file at ``source`` (a ``FileNotFoundError``).
        CAVPCheckpointError: unreadable with the safe loader, no video branch, or weights that do not fit (a
            ``ConfigError``).
        ConfigError: ``fps`` is not a positive number or ``normalize`` is not true.
    """
    check_fps(fps, config_key, FPS)
    if normalize is not True:
        raise ConfigError(f"{config_key.rpartition('.')[0]}.normalize={normalize!r}: CAVP's preprocessing has no "
                          f"mean/std step (Resize((224, 224)) and ToTensor: [0, 1] pixels); remove the override")
    if source is None:
        raise CAVPWeightsMissing(None, config_key)
    path = Path(resolve_source(str(source), tiny_dir, config_key))
    if path.is_dir():
        path = path / (TINY_FILE if str(source).startswith(TINY_PREFIX) else CHECKPOINT_FILE)
    state, where = read_state_dict(path, config_key)
    branch = checkpoint_branch(state, VIDEO_BRANCH, where)
    model = CAVPVideo(**shapes_to_arguments(branch, where))
    check_fit(model, branch, where)
    counters = {key: value for key, value in model.state_dict().items() if key.endswith(".num_batches_tracked")}
    model.load_state_dict({**counters, **branch}, strict=True)
    return CAVPVideoEncoder(model, fps=fps)

