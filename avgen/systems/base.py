"""``AVSystem``: what every avgen system does the same way.

- frozen parts: registered with :meth:`AVSystem.freeze`, which sets ``requires_grad_(False)`` and
  keeps them in eval mode even when Lightning calls ``train()``; they are excluded from the
  optimizer and from checkpoints;
- trainable parts: every parameter that still requires grad after the constructor;
  :meth:`trainable_parameters` lists them, and a system may override it to be explicit;
- optimizer and scheduler: partial callables from config (``model.optimizer``, ``model.scheduler``);
- EMA of the trainable weights (``model.ema_decay``; ``None`` = off), swapped in for validation,
  sampling and export with :meth:`ema_weights`;
- classifier-free-guidance condition dropout (:meth:`drop_conditions`);
- checkpoints: trainable (+EMA) weights, the resolved config and library versions
  (see ``avgen/checkpoint.py``); loading re-creates the frozen parts from the config.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from avgen._versions import library_versions
from avgen.checkpoint import FORMAT
from avgen.config_files import scale_blocks
from avgen.data.feature_cache import PART_NAMES, FeaturePart, module_weights_sha256
from avgen.errors import ConfigError
from avgen.pretrained import HoldsFrozen
from avgen.samples import write_sounding_videos
from avgen.systems.common import av_align_scores, log_sounding_videos
from avgen.systems.settings import SampleOptions, SamplingSettings, ValidationSettings, optional_path

log = logging.getLogger("avgen")

# Frozen parts stay in eval mode on purpose (AVSystem.freeze); Lightning warns about any module in
# eval mode at the start of training.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def plain_config(value: Any) -> Any:
    """A config node as plain Python (resolved); other values deep-copied."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return copy.deepcopy(value)


def merge_config(base: dict, override: Mapping) -> dict:
    """``base`` with ``override`` merged in recursively (used for the ``scale=tiny`` argument overrides)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (merge_config(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
                    else value)
    return out


def system_arguments(scale: str, tiny: Mapping | None, *, mini: Mapping | None = None,
                     paper_random: Mapping | None = None, **parts: Any) -> dict[str, Any]:
    """A system's constructor arguments as plain Python, with the ``tiny`` overrides merged in at
    ``scale=tiny``, and the ``tiny`` then the ``mini`` overrides at ``scale=mini`` (the tiny sizes with the
    trained mini twins, :mod:`avgen.backbones.mini`), the ``paper_random`` overrides at ``scale=paper_random``
    (``random:`` backbone sources, :mod:`avgen.backbones.paper_random`); a ``None`` part becomes ``{}``. The
    ``sampling`` and ``validation`` parts are completed and checked by :meth:`DiffusionSystem.configure_settings`.

    Raises:
        ConfigError: ``model.scale`` is not one of :data:`avgen.config_files.SCALES`.
    """
    args = {name: plain_config({} if value is None else value) for name, value in parts.items()}
    blocks = {"tiny": tiny, "mini": mini, "paper_random": paper_random}
    for block in scale_blocks(scale, "model.scale"):
        args = merge_config(args, plain_config(blocks[block] or {}))
    return args


#: Lightning ``trainer.precision`` → the dtype :meth:`AVSystem.setup` casts the frozen towers to (none for the others:
#: ``32-true`` keeps float32, the ``*-true`` precisions cast the whole model themselves)
FROZEN_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def frozen_dtype(precision: Any, run_config: Mapping[str, Any] | None = None) -> torch.dtype | None:
    """The dtype of the frozen towers under Lightning precision ``precision`` (:data:`FROZEN_DTYPES`), or None.
    None too when the run reads a feature cache (``data.features``): the cache's descriptions hash the frozen
    weights as loaded (dtype included), so cast weights would no longer match the cache they made."""
    if ((run_config or {}).get("data") or {}).get("features"):
        return None
    return FROZEN_DTYPES.get(str(precision))


class AVSystem(HoldsFrozen, pl.LightningModule):
    """Base class of the avgen systems (a LightningModule with the conventions above).

    Args:
        optimizer: partial optimizer factory, called with the trainable parameters.
        scheduler: optional partial LR-scheduler factory, called with the optimizer
            (stepped every optimizer step).
        ema_decay: EMA decay of the trainable weights, or ``None`` for no EMA.
        cond_drop_prob: probability of replacing a condition by its null value in training.
    """

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, ema_decay: float | None = None,
                 cond_drop_prob: float = 0.1):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ema_decay = ema_decay
        self.cond_drop_prob = cond_drop_prob
        self.ema_state: dict[str, torch.Tensor] | None = None
        # the resolved run config; set by the command line before fit, stored in checkpoints
        self.run_config: dict[str, Any] | None = None
        # checkpoints hold only trainable weights: Lightning must accept partial state dicts
        self.strict_loading = False

    # ------------------------------------------------------------------------------ frozen parts
    def freeze(self, *modules: nn.Module) -> None:
        """Freeze ``modules``: no gradients, eval mode for good (:class:`avgen.pretrained.HoldsFrozen`),
        excluded from checkpoints."""
        self.hold_frozen(*modules)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters plus the persistent buffers of modules that own trainable parameters."""
        names = {n for n, _ in self.trainable_parameters()}
        owners = {n.rpartition(".")[0] for n in names}
        return {k: v for k, v in self.state_dict().items() if k in names or k.rpartition(".")[0] in owners}

    # ------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ConfigError(f"{type(self).__name__}: model.optimizer is not set in the config")
        params = [p for _, p in self.trainable_parameters()]
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters; check which parts are frozen")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def drop_conditions(self, conditions: Sequence[Any], null: Any, generator: torch.Generator | None = None
                        ) -> tuple[list[Any], torch.Tensor]:
        """Replace each condition by ``null`` with probability ``cond_drop_prob`` (training only).

        Returns the new list and the boolean keep-mask (B,).
        """
        keep = torch.ones(len(conditions), dtype=torch.bool)
        if self.training and self.cond_drop_prob > 0:
            keep = torch.rand(len(conditions), generator=generator) >= self.cond_drop_prob
        return [c if k else null for c, k in zip(conditions, keep.tolist())], keep

    # ------------------------------------------------------------------------------ mixed precision
    def setup(self, stage: str) -> None:
        """Lightning's hook before the strategy places and wraps the model: under a mixed precision
        (``trainer.precision`` ``bf16-mixed`` / ``16-mixed``) the frozen towers are cast to that half dtype
        (:meth:`cast_frozen`), as the framework conventions ask (frozen parts in ``weight_dtype``, trainable
        parameters kept in float32, autocast computing in the half dtype): half the frozen weights' memory."""
        super().setup(stage)
        dtype = frozen_dtype(self.trainer.precision, self.run_config) if self._trainer is not None else None
        if dtype is not None:
            self.cast_frozen(dtype)

    def cast_frozen(self, dtype: torch.dtype) -> int:
        """Cast every floating parameter that takes no gradient (the frozen towers, wherever they hang: a
        U-Net whose motion modules train keeps those in float32) to ``dtype``; buffers (mel filterbanks, ᾱ
        tables) keep theirs. Returns the number of parameters cast."""
        cast = 0
        for parameter in self.parameters():
            if not parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)
                cast += parameter.numel()
        return cast

    def precision_context(self):
        """The trainer's autocast context (its precision plugin's ``forward_context``) when the model is attached
        to a trainer, else a null context: sampling in a hook outside a step (validation samples) must run
        frozen towers cast by :meth:`cast_frozen` under autocast too."""
        if self._trainer is None:
            return contextlib.nullcontext()
        return self.trainer.precision_plugin.forward_context()

    # ------------------------------------------------------------------------------ EMA
    def on_fit_start(self) -> None:
        if self.ema_decay is not None and self.ema_state is None:
            self.ema_state = {k: v.detach().clone().float() for k, v in self.trainable_state_dict().items()}

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema_state is None:
            return
        decay = self.ema_decay
        for k, v in self.trainable_state_dict().items():
            ema = self.ema_state[k]
            if ema.device != v.device:
                ema = self.ema_state[k] = ema.to(v.device)
            if v.is_floating_point():
                ema.lerp_(v.detach().float(), 1.0 - decay)
            else:
                ema.copy_(v)

    @contextlib.contextmanager
    def ema_weights(self, enabled: bool = True):
        """Temporarily load the EMA weights (no-op without EMA)."""
        if not enabled or self.ema_state is None:
            yield
            return
        backup = {k: v.detach().clone() for k, v in self.trainable_state_dict().items()}
        self.load_state_dict({k: v.to(backup[k].dtype) for k, v in self.ema_state.items()}, strict=False)
        try:
            yield
        finally:
            self.load_state_dict(backup, strict=False)

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self.trainable_state_dict()
        checkpoint["state_dict"] = {k: v.detach().cpu() for k, v in trainable.items()}
        checkpoint.pop("hyper_parameters", None)
        checkpoint["avgen"] = {
            "format": FORMAT,
            "config": self.run_config,
            "versions": library_versions(),
            "trainable": sorted(trainable),
            "ema": None if self.ema_state is None else {k: v.detach().cpu() for k, v in self.ema_state.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_trainable_keys(checkpoint["state_dict"], source="checkpoint")
        ema = (checkpoint.get("avgen") or {}).get("ema")
        if ema is not None:
            self.ema_state = {k: v.float() for k, v in ema.items()}

    @classmethod
    def upgrade_model_config(cls, model_config: dict[str, Any]) -> dict[str, Any]:
        """A model config stored by an earlier avgen (a checkpoint's, an export's) with the settings that were
        implied then and have a key with another default now made explicit, so the system is rebuilt as it was
        trained. ``model_config``: a plain dict (``_target_`` and the system's arguments); returns a new dict.
        The base class changes nothing."""
        return dict(model_config)

    def trainable_keys_hint(self, missing: set[str], unexpected: set[str]) -> str:
        """What to try when a checkpoint's trainable weights do not match (appended to the error); ``""``."""
        return ""

    def check_trainable_keys(self, state: dict[str, torch.Tensor], source: str) -> None:
        """A checkpoint must hold every trainable weight and nothing that is not trainable.

        Raises:
            KeyError: naming up to five missing and unexpected weights, and the system's hint."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            hint = self.trainable_keys_hint(missing, unexpected)
            raise KeyError(f"{source} does not match {type(self).__name__}'s trainable weights: "
                           f"missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}. "
                           + (hint or "Was it written with another model config? (init_from_strict=false starts a "
                                      "run from the weights both share)"))

    def load_trainable(self, checkpoint: dict[str, Any], strict: bool = True) -> dict[str, list[str]]:
        """Load trainable (and EMA) weights from an avgen checkpoint dict (``init_from``, sampling).

        ``strict=False`` (``init_from_strict=false``: a model pretrained with other conditions or parts, e.g.
        VTA-LDM's Pretrain-Audio row): load the trainable tensors both share with the same shape, keep this
        model's initialisation for the rest, and leave the EMA to start from the loaded weights.

        Returns:
            ``{"loaded", "missing" (kept initialised), "unexpected" (in the checkpoint only), "mismatched"
            (same name, other shape)}``: sorted tensor names; with ``strict`` all but ``loaded`` are empty.

        Raises:
            KeyError: ``strict`` and the trainable names differ. ValueError: not ``strict`` and nothing is
            shared.
        """
        state = checkpoint["state_dict"]
        own = self.trainable_state_dict()
        if strict:
            self.on_load_checkpoint(checkpoint)
            self.load_state_dict(state, strict=False)
            return {"loaded": sorted(state), "missing": [], "unexpected": [], "mismatched": []}
        mismatched = sorted(k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape))
        shared = {k: v for k, v in state.items() if k in own and k not in mismatched}
        if not shared:
            raise ValueError(f"the checkpoint shares no trainable weight with {type(self).__name__} "
                             f"({len(state)} tensors, {len(mismatched)} of them with another shape)")
        self.load_state_dict(shared, strict=False)
        return {"loaded": sorted(shared), "missing": sorted(set(own) - set(state)),
                "unexpected": sorted(set(state) - set(own)), "mismatched": mismatched}


class DiffusionSystem(AVSystem):
    """A system whose every step is one loss dictionary, :meth:`diffusion_loss` (``"loss"`` is optimised,
    the other entries are logged): training, validation and test steps log ``<split>/<name>``.

    Validation and test draw their noise, timesteps and condition dropout from a generator seeded by
    the batch index, so their losses are comparable across evaluations. The first validation batch's
    audio and captions are kept (``self.validation_batch``) for the samples a system generates and
    logs at the end of validation.
    """

    validation_batch: dict[str, Any] | None = None
    #: the model YAML whose ``sampling`` and ``validation`` blocks hold this system's defaults
    #: (``configs/model/<MODEL_CONFIG>.yaml``)
    MODEL_CONFIG: str = ""
    #: the typed ``model.sampling`` block of this system
    sampling_settings: type[SamplingSettings] = SamplingSettings
    #: what ``sample`` generates from, named when a ``sample.*`` option this system does not use is refused
    SAMPLE_INPUT: str = ""
    sampling: SamplingSettings
    validation_settings: ValidationSettings

    def configure_settings(self, args: Mapping[str, Any], scale: str) -> None:
        """Check and set :attr:`sampling` and :attr:`validation_settings` from ``args["sampling"]`` and
        ``args["validation"]`` over the model YAML's defaults at ``scale`` (call it before any backbone
        loads).

        Raises:
            ConfigError: an unknown key or a bad value, naming ``model.sampling.<key>`` / ``model.validation.<key>``.
        """
        self.sampling = self.sampling_settings.from_config(args.get("sampling"), model_config=self.MODEL_CONFIG,
                                                           scale=scale)
        self.validation_settings = ValidationSettings.from_config(args.get("validation"),
                                                                  model_config=self.MODEL_CONFIG, scale=scale)

    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define diffusion_loss")

    def reads_video(self) -> bool:
        """Whether training reads the clips' frames (``data.audio_only`` is refused when it does)."""
        return True

    # ------------------------------------------------------------------------------ feature cache (issue 19)
    #: parts a system cannot cache, with the reason (:meth:`check_feature_parts` names it)
    UNCACHEABLE_PARTS: dict[str, str] = {}

    def feature_part_names(self) -> tuple[str, ...]:
        """The names of the frozen parts this config runs on every training step, in
        :data:`~avgen.data.feature_cache.PART_NAMES` order (cheap: no weights are hashed)."""
        return ()

    def feature_parts(self) -> dict[str, FeaturePart]:
        """``{name: FeaturePart}`` of the parts this config runs on every training step
        (:mod:`avgen.data.feature_cache`), in :data:`~avgen.data.feature_cache.PART_NAMES` order: the extractor,
        the SHA-256 of the frozen weights it runs (hashed once per system and weights: :meth:`weights_sha256`),
        the preprocessing settings that change its output and the batch modalities it reads. JSON-serialisable."""
        return {}

    def part_features(self, batch: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
        """Part ``name``'s tensors (B, ...) computed from ``batch`` (the batch contract), in the frozen module's
        dtype, on its device, without gradients; :meth:`compute_features` checks the name and casts."""
        raise NotImplementedError(f"{type(self).__name__} has no feature part {name!r}")

    def check_feature_parts(self, parts: Sequence[str]) -> list[str]:
        """``parts`` in :data:`~avgen.data.feature_cache.PART_NAMES` order, each checked against
        :meth:`feature_part_names`.

        Raises:
            ConfigError: a part this system cannot cache or does not run (naming ``cache.parts`` and the parts
                available).
        """
        if isinstance(parts, str):
            parts = [parts]
        available = self.feature_part_names()
        listing = f"{type(self).__name__} caches {', '.join(available) or 'nothing'}"
        for name in parts:
            if name in self.UNCACHEABLE_PARTS:
                raise ConfigError(f"cache.parts: {name!r} cannot be cached: {self.UNCACHEABLE_PARTS[name]}; "
                                  f"{listing}")
            if name not in available:
                known = "" if name in PART_NAMES else f" (part names: {', '.join(PART_NAMES)})"
                raise ConfigError(f"cache.parts: {type(self).__name__} runs no part {name!r} with this model "
                                  f"config{known}; {listing}")
        return [name for name in PART_NAMES if name in set(parts)]

    def compute_features(self, batch: Mapping[str, Any], parts: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        """``{part: {tensor: (B, ...) float32}}`` of ``parts`` for a decoded batch (the batch contract; the
        cache command gives the evaluation view), on the system's device, without gradients. What
        :meth:`diffusion_loss` reads from ``batch["features"]`` in place of running the frozen modules (each
        system's :meth:`feature_parts` docstring lists its parts' tensors). Store them per clip (``[i]``), on the
        CPU, in the cache's dtype.

        Raises:
            ConfigError: a part the system cannot cache or does not run (:meth:`check_feature_parts`).
        """
        names = self.check_feature_parts(parts)
        with torch.no_grad():
            return {name: {key: value.detach().float() for key, value in self.part_features(batch, name).items()}
                    for name in names}

    def step_features(self, batch: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
        """Part ``name``'s tensors for a training step: ``batch["features"][name]`` when the batch carries it
        (the feature cache), else :meth:`part_features` of the batch. Cached tensors come as stored
        (float32); the system casts them to its frozen module's dtype."""
        cached = (batch.get("features") or {}).get(name)
        if cached is not None:
            return dict(cached)
        with torch.no_grad():
            return self.part_features(batch, name)

    def weights_sha256(self, *modules: nn.Module) -> str:
        """:func:`~avgen.data.feature_cache.module_weights_sha256` of ``modules``, hashed once and kept while
        their tensors are unchanged (the same tensor objects, storage and version counters: an in-place update
        under ``torch.no_grad()`` or ``load_state_dict`` is seen; a write through ``.data`` is not)."""
        memo = self.__dict__.setdefault("_weights_sha256", {})
        key = tuple(id(module) for module in modules)
        stamp = weights_stamp(*modules)
        if key not in memo or memo[key][0] != stamp:
            memo[key] = (stamp, module_weights_sha256(*modules))
        return memo[key][1]

    def kept_output(self, name: str, modules: Sequence[nn.Module], device: torch.device | str,
                    compute: Callable[[], Any]) -> Any:
        """``compute()``, computed once per ``name``, device and state of ``modules``' weights and kept (the
        text encoders' output for ``""``, used for every dropped caption)."""
        memo = self.__dict__.setdefault("_kept_outputs", {})
        key = (name, str(device))
        stamp = weights_stamp(*modules)
        if key not in memo or memo[key][0] != stamp:
            memo[key] = (stamp, compute())
        return memo[key][1]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        data = (self.run_config or {}).get("data") or {}
        if data.get("audio_only") and self.reads_video():
            raise ConfigError(f"data.audio_only=true: {type(self).__name__} reads the clips' frames in training"
                              f"{self.audio_only_hint()}; drop data.audio_only")

    def audio_only_hint(self) -> str:
        """What would let this system train on audio-only clips (for the ``data.audio_only`` refusal)."""
        return ""

    def on_train_start(self) -> None:
        """Under DDP, give each rank its own random stream for the timesteps, noise and condition dropout
        of :meth:`diffusion_loss` (``seed_everything`` seeds every rank alike, so without this each rank
        would draw the same t and ε for its clips): torch's seed becomes ``initial seed + global rank``.
        The model is built (and DDP has broadcast rank 0's weights) before this runs."""
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def training_step(self, batch, batch_idx):
        losses = self.diffusion_loss(batch)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(batch["key"]))
        return losses["loss"]

    def _evaluation_step(self, split: str, seed: int, batch, batch_idx: int) -> None:
        losses = self.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed + batch_idx))
        for name, value in losses.items():
            self.log(f"{split}/{name}", value, batch_size=len(batch["key"]), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._evaluation_step("val", 10_000, batch, batch_idx)
        if batch_idx == 0:
            self.validation_batch = {"audio": batch["audio"].detach(), "caption": list(batch["caption"])}

    def test_step(self, batch, batch_idx):
        self._evaluation_step("test", 20_000, batch, batch_idx)

    # ------------------------------------------------------------------------------ what every system shares
    def validation_sample_count(self) -> int:
        """How many sounding videos to sample after this validation (``model.validation.samples``): 0 during
        the sanity check, off rank 0, or when no validation batch was held."""
        count = self.validation_settings.samples
        if (count <= 0 or self.validation_batch is None or self.trainer.sanity_checking
                or not self.trainer.is_global_zero):
            return 0
        return count

    def log_validation_samples(self, prompts: Sequence[str], video: torch.Tensor, audio: torch.Tensor) -> None:
        """Write the validation samples (video (B, F, 3, H, W), audio (B, S), both in [-1, 1]) to
        ``<run>/val_samples/step_NNNNNNN/``, send them to the loggers that show media, and log their mean
        AV-Align (``val/av_align_<variant>``) unless ``model.validation.av_align`` is false."""
        out_dir = Path(self.trainer.default_root_dir) / "val_samples" / f"step_{self.global_step:07d}"
        paths = write_sounding_videos(out_dir, prompts, video, audio, self.clip, overwrite=True).written
        log_sounding_videos(self.loggers, paths, self.global_step)
        if self.validation_settings.av_align:
            for name, value in av_align_scores(video, audio, self.clip).items():
                self.log(f"val/av_align_{name}", value, rank_zero_only=True, batch_size=len(prompts))

    @classmethod
    def sample_options(cls, unused: Mapping[str, Any], *, n: Any, prompt: Any, seed: Any, device: Any, overwrite: Any,
                       one_prompt: str | None = None, **paths: Any) -> SampleOptions:
        """The ``sample.*`` options of ``sample_to_files`` that are not ``model.sampling`` settings, checked first:
        before any input is read, any weight moves or any folder is made (one ``sample`` block serves every
        system, so an option this system does not use is refused, not ignored).

        ``unused``: the options ``sample_to_files`` took in its ``**unused`` (the ones set, not None, are refused,
        naming :attr:`SAMPLE_INPUT` and every option the system takes); ``paths``: its input path options
        (``audio=``, ``video=``); ``one_prompt``: the reason a list ``sample.prompt`` is refused, when the system
        takes one caption for every input.

        Raises:
            ConfigError: an option set that this system does not use; a bad value (``sample.n=0``,
                ``sample.prompt=[]``, a path that is not a string, ...), naming ``sample.<key>`` and what is expected.
        """
        given = {key: value for key, value in unused.items() if value is not None}
        if given:
            takes = [name for name, param in inspect.signature(cls.sample_to_files).parameters.items()
                     if param.kind is param.POSITIONAL_OR_KEYWORD and name not in ("self", "out_dir")]
            named = ", ".join(f"sample.{key}={str(value).lower() if isinstance(value, bool) else value}"
                              for key, value in sorted(given.items()))
            raise ConfigError(f"{named}: not used by {cls.__name__}, which {cls.SAMPLE_INPUT}; unset "
                              f"{'it' if len(given) == 1 else 'them'}. {cls.__name__} takes sample.{', '.join(takes)}")
        for key, value in paths.items():
            optional_path(f"sample.{key}", value)
        options = SampleOptions.from_values({"n": n, "prompt": prompt, "seed": seed, "device": device,
                                             "overwrite": overwrite}, key="sample")
        if one_prompt and isinstance(options.prompt, list):
            raise ConfigError(f"sample.prompt={options.prompt!r}: {one_prompt}")
        return options

    def to_sampling_device(self, device: str = "auto") -> str:
        """Move the system to ``device`` (``auto``: CUDA when available) in eval mode; returns the device."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.to(device).eval()
        return device


def weights_stamp(*modules: nn.Module) -> tuple:
    """A cheap fingerprint of ``modules``' state (no bytes read): per state-dict tensor its name, identity,
    storage address, version counter (bumped by every in-place write; ``None`` for tensors made under
    ``torch.inference_mode``, which keep none), device and dtype."""
    return tuple((name, id(t), t.data_ptr(), _version(t), str(t.device), t.dtype)
                 for module in modules for name, t in module.state_dict(keep_vars=True).items())


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor
        return None
