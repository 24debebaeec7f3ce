"""``AVDataModule``: the one datamodule every system trains and evaluates on.

Reads ``<root>/{train,val,test}/`` shard folders written by ``python -m avgen prepare`` (see
``avgen/data/shards.py``) at the stored geometry ``data.store``, checks their manifests against it,
and serves clips at the geometry ``data.clip`` a system consumes: a rate up to the stored one (frames
taken by timestamp), a duration up to the stored one (a random window in training, the start in
evaluation), any frame size (resize keeping the aspect ratio, then a random crop in training, the
centre crop in evaluation). Batches follow avgen's batch contract (after
``on_after_batch_transfer``):

- ``video`` float (B, F, 3, H, W) in [-1, 1] (time = axis 1)
- ``audio`` float (B, S) in [-1, 1] at ``clip.sample_rate``
- ``caption``, ``label``, ``key``: list[str]; ``events``: list of float tensors (seconds)

Epoch length: a training epoch is ``epoch_clips`` clips (default: the train split's clip count),
cut into ``ceil(epoch_clips / (batch_size * world_size * workers))`` batches per worker, so all
ranks run the same number of steps.

Subsets: ``data.subset=<name>`` reads only the clips a ``python -m avgen filter`` run kept
(``<root>/subsets/<name>/<split>.json``, :mod:`avgen.data.subset`) from the same shards, for each
split the subset covers (the others in full); clip counts (epoch length, evaluation slots, expected
clips) are those of the kept clips.

Feature cache: ``data.features=<name>`` reads the outputs of the system's frozen parts from
``<root>/cache/<name>/<split>/`` (made by ``python -m avgen cache``, :mod:`avgen.data.feature_cache`) once
:meth:`AVDataModule.use_features` has checked it against the system's parts: batches gain ``features``
``{part: {tensor: (B, ...)}}`` (float32); training does not decode the modalities only cached parts read
(``video`` (B, 0, 3, H, W), ``audio`` (B, 0)) and reads every clip's evaluation view (window from 0 s, centre
crop: the view the cache holds; random windows and crops are off); val/test decode everything and carry the
features of their cache when it was made (optional). ``data.concat`` cannot be combined with it (the latents of a
join are not the join of the latents).

Concatenated test set: ``data.concat_test={seed, cut}`` makes the test split (``test``, ``predict``)
serve VTA-LDM's concatenated clips (:class:`avgen.data.concat.ConcatTest`): one joined clip per test
clip, keys ``<key>+<partner key>@<cut frame>``, the same fixed list whatever the ranks and workers.
Validation keeps its plain clips: it tracks training, and a model trained without ``data.concat``
is validated as before.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from avgen.data.concat import ConcatAugment, ConcatPair, ConcatTest
from avgen.data.decode import to_model_batch
from avgen.data.feature_cache import CacheSplit, FeaturePart, cache_folder, check_name, remedy, skipped_modalities
from avgen.data.geometry import ClipGeometry, StoreGeometry, check_servable
from avgen.data.shards import MANIFEST, Manifest
from avgen.data.stream import ConcatEvalStream, EvalStream, Health, SampleRef, Shard, TrainStream, index_shards
from avgen.errors import ConfigError, GeometryMismatchError, MissingShardsError

log = logging.getLogger(__name__)
# Lightning warns that an IterableDataset's __len__ may be wrong with several workers; the shard
# streams split themselves per worker and their __len__ is exact by construction.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")
STAGE_SPLIT = {"fit": "train", "validate": "val", "test": "test", "predict": "test"}


class AVDataModule(pl.LightningDataModule):
    """WebDataset shards → batches of sounding clips.

    Args:
        name: dataset name (``data=<name>``), used in messages and the prepare hint.
        root: folder holding ``train/ val/ test/`` shard folders.
        clip: requested clip geometry (``data.clip``: seconds, fps, height, width, sample_rate).
        store: the stored geometry the shards must have (``data.store``: seconds, fps, short_side,
            sample_rate, square); ``None``: any stored geometry that can serve ``clip``.
        batch_size: clips per batch on each device.
        num_workers: DataLoader worker processes (persistent).
        shuffle_buffer: training shuffle buffer, in clips (raw bytes, decoded after the shuffle).
        epoch_clips: clips per training epoch; ``None`` = the train manifest's clip count.
        max_skip_fraction: stop the run when more than this fraction of clips cannot be used.
        min_clips_for_check: clips a worker reads before it applies ``max_skip_fraction``.
        seed: data seed; mixed with rank, worker, global step and worker epoch.
        auto_prepare: run ``prepare`` when shards are missing (cheap synthetic data only).
        prepare: partial callable ``prepare(root=..., store=..., splits=...)`` that writes the shards.
        eval_batch_size: batch size for val/test (default ``batch_size``).
        pin_memory: pin host memory (default: when CUDA is available).
        group: the ``data=<group>`` option this dataset comes from (prepare hints; default ``name``).
        source: ``data.source``, the folder ``prepare`` reads (prepare hints).
        split_file: ``data.split_file`` (read by ``prepare`` only).
        scale: the run's ``scale`` (prepare hints: ``scale=tiny`` shrinks ``data.store``).
        subset: the name of a curated subset under ``<root>/subsets`` (``python -m avgen filter``);
            ``None``: every clip.
        fixed_stream: every training epoch replays the first epoch's batches (``debug=overfit``).
        concat: ``{p, cut}``: VTA-LDM's concat augmentation of training batches
            (:class:`~avgen.data.concat.ConcatAugment`; ``p`` 0 or unset: off).
        audio_only: serve clips without their frames (``video`` (B, 0, 3, H, W)): audio-only pretraining,
            VTA-LDM's Pretrain-Audio row; a system that reads video refuses it at fit start.
        concat_test: ``{seed, cut}``: the test split serves VTA-LDM's concatenated test set
            (:class:`~avgen.data.concat.ConcatTest`; ``None``: its plain clips). Validation stays plain.
        features: the name of a feature cache under ``<root>/cache`` (``python -m avgen cache``), read once
            :meth:`use_features` is called; ``None``: every modality decoded, no ``features`` in the batch.

    Raises:
        ConfigError: a ``clip`` the ``store`` cannot serve; a bad ``concat`` or ``concat_test``; ``features`` with
            ``concat``; (at setup) an unknown ``subset``, or one made from another version of a split; a
            ``concat_test`` on a test split of one label.
    """

    def __init__(self, name: str, root: str, clip: Mapping[str, Any] | ClipGeometry, batch_size: int = 16,
                 num_workers: int = 4, shuffle_buffer: int = 256, epoch_clips: int | None = None,
                 max_skip_fraction: float = 0.05, min_clips_for_check: int = 64, seed: int = 0,
                 auto_prepare: bool = False, prepare: Callable[..., Any] | None = None,
                 eval_batch_size: int | None = None, pin_memory: bool | None = None, prefetch_factor: int = 2,
                 store: Mapping[str, Any] | StoreGeometry | None = None, group: str | None = None,
                 source: str | None = None, split_file: Any = None, scale: str | None = None,
                 subset: str | None = None, fixed_stream: bool = False, concat: Mapping[str, Any] | None = None,
                 audio_only: bool = False, concat_test: Mapping[str, Any] | None = None,
                 features: str | None = None):
        super().__init__()
        self.name, self.root = name, Path(root).expanduser().absolute()
        self.group, self.source, self.split_file, self.scale = group or name, source, split_file, scale
        try:
            self.clip = ClipGeometry.from_config(clip)
            self.store = None if store is None else StoreGeometry.from_config(store)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.store is not None:
            check_servable(self.clip, self.store, self.name)
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected an int >= 1")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.epoch_clips, self.seed = epoch_clips, seed
        self.max_skip_fraction, self.min_clips_for_check = max_skip_fraction, min_clips_for_check
        self.auto_prepare, self.prepare_fn = auto_prepare, prepare
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.subset = subset or None
        if not isinstance(fixed_stream, bool):
            raise ConfigError(f"data.fixed_stream={fixed_stream!r}: expected true or false")
        self.fixed_stream = fixed_stream
        if not isinstance(audio_only, bool):
            raise ConfigError(f"data.audio_only={audio_only!r}: expected true or false")
        self.audio_only = audio_only
        concat_augment = ConcatAugment.from_config(concat)
        self.concat = concat_augment if concat_augment.p > 0 else None
        self.concat_test = ConcatTest.from_config(concat_test)
        self.features = None if features is None else check_name(features, "data.features")
        if self.features is not None and self.concat is not None:
            raise ConfigError(f"data.features={self.features} with data.concat.p={self.concat.p}: the cache holds each "
                              f"clip's own latents, and the latents of two joined clips are not the join of theirs; "
                              f"set data.concat.p=0 (or data.features=null)")
        self.caches: dict[str, CacheSplit] = {}  # split -> the cache read (use_features)
        self.cached_parts: dict[str, list[str]] = {}  # split -> the cached parts its batches carry
        self.train_skip: frozenset[str] = frozenset()  # modalities training does not decode
        self._concat_set: tuple[list[ConcatPair], dict[str, SampleRef], Health] | None = None
        self.manifests: dict[str, Manifest] = {}
        self.subsets: dict[str, Any] = {}  # split -> avgen.data.subset.Subset (None: the whole split)
        self.health: dict[str, Health] = {}
        self._stage: str | None = None

    # ----------------------------------------------------------------------------------- shards
    def prepare_command(self) -> str:
        source = f" data.source={self.source}" if self.source else (
            " data.source=<folder>" if self.group in ("folder", "greatest_hits") else "")
        scale = f" scale={self.scale}" if self.scale and self.scale != "paper" else ""
        return f"python -m avgen prepare data={self.group}{source}{scale} paths.data_dir={self.root.parent.parent}"

    def prepare_data(self) -> None:
        """Create missing shards when ``auto_prepare`` (runs once per node, before ``setup``)."""
        missing = [s for s in ("train", "val", "test") if not (self.root / s / MANIFEST).exists()]
        if missing and self.auto_prepare:
            if self.prepare_fn is None:
                raise MissingShardsError(f"data.auto_prepare is true but data.prepare is not set for {self.name}")
            log.info("preparing %s shards in %s (missing: %s)", self.name, self.root, missing)
            store = self.store or StoreGeometry.from_config(self.clip)
            self.prepare_fn(root=str(self.root), store=store.to_dict(), splits=missing)

    def manifest(self, split: str) -> Manifest:
        if split not in self.manifests:
            folder = self.root / split
            if not (folder / MANIFEST).exists():
                raise MissingShardsError(
                    f"no {split} shards for data={self.name}: {folder / MANIFEST} does not exist. "
                    f"Create them with: {self.prepare_command()}  (or point paths.data_dir / "
                    f"AVGEN_DATA_DIR at the folder holding {self.root.parent.name}/{self.root.name}/)"
                    + ("" if self.prepare_fn is not None else
                       f". If {self.name} has no prepare step yet, write its shards in avgen's shard format "
                       f"(avgen.data.shards.ShardWriter) into {self.root}/<split>, or run with scale=tiny "
                       f"(synthetic data)"))
            manifest = Manifest.load(folder)
            if self.store is not None and manifest.store != self.store:
                raise GeometryMismatchError(
                    f"{folder / MANIFEST} holds shards of another stored geometry than data.store: "
                    + ", ".join(self.store.differences(manifest.store))
                    + ". Set those data.store keys to the shards' values, or re-run prepare (it writes data.store "
                      "into its own folder)")
            stored = manifest.store if manifest._clip is None else manifest.clip
            problems = self.clip.incompatibilities(stored)
            if problems:
                raise GeometryMismatchError(
                    f"{folder / MANIFEST} cannot serve the requested clip geometry (data.clip): "
                    + "; ".join(problems)
                    + f". Shards: {stored.to_dict()}; requested: {self.clip.to_dict()}. Re-run prepare "
                      f"with a larger data.store or change data.clip.")
            if manifest.num_clips == 0:
                report = self.root / "prepare_report.json"
                raise MissingShardsError(
                    f"{folder / MANIFEST}: the {split} split holds no clip"
                    + (f"; why each source was left out is in {report}" if report.exists() else "")
                    + ". Add videos to that split (data.split_file or data.prepare.split_ratios) and prepare again")
            self.manifests[split] = manifest
        return self.manifests[split]

    def subset_of(self, split: str):
        """The :class:`~avgen.data.subset.Subset` of ``split`` read under ``data.subset``, or ``None``
        (no subset, or one that does not cover this split: every clip).

        Raises:
            ConfigError: an unknown subset, one made from another version of the split's manifest, or one
                that keeps no clip of the split.
        """
        if self.subset is None:
            return None
        if split not in self.subsets:
            from avgen.data.subset import Subset, manifest_sha256

            manifest = self.manifest(split)
            subset = Subset.load(self.root, self.subset, split)
            if subset is None:
                (log.warning if split == "train" else log.info)(
                    "data.subset=%s does not cover the %s split: reading all of its clips", self.subset, split)
            elif subset.manifest_sha256 != manifest_sha256(self.root / split):
                made = self.root / "subsets" / self.subset / f"{split}.json"
                raise ConfigError(
                    f"data.subset={self.subset}: {made} was made from "
                    f"another version of {self.root / split} (prepared again since); run python -m avgen filter again "
                    f"with filter.name={self.subset} filter.overwrite=true")
            elif subset.clips == 0:
                report = self.root / "subsets" / self.subset / "report.json"
                raise ConfigError(f"data.subset={self.subset} keeps no clip of the {split} split (of {subset.total}); "
                                  f"lower its thresholds (report: {report})")
            elif subset.total != manifest.num_clips:
                raise ConfigError(f"data.subset={self.subset}: {split}.json counts {subset.total} clips but "
                                  f"{self.root / split / MANIFEST} holds {manifest.num_clips}; run filter again")
            self.subsets[split] = subset
        return self.subsets[split]

    def num_clips(self, split: str) -> int:
        """Clips of ``split`` this datamodule reads: the subset's kept clips under ``data.subset``, else all."""
        subset = self.subset_of(split)
        return subset.clips if subset is not None else self.manifest(split).num_clips

    def shards(self, split: str) -> list[Shard]:
        manifest = self.manifest(split)
        subset = self.subset_of(split)
        cache = self.caches.get(split)

        def sidecar(name: str) -> str | None:
            return None if cache is None else str(cache.sidecar(name))

        if subset is None:
            return [Shard(str(self.root / split / s.name), s.clips, sidecar=sidecar(s.name))
                    for s in manifest.shards if s.clips > 0]
        return [Shard(str(self.root / split / s["name"]), int(s["clips"]), frozenset(s["keys"]), sidecar(s["name"]))
                for s in subset.shards if s["clips"] > 0]

    # ----------------------------------------------------------------------------------- feature cache
    def use_features(self, parts: Mapping[str, FeaturePart]) -> None:
        """Read the feature cache ``data.features`` for a system whose frozen parts are ``parts``
        (``system.feature_parts()``): the train split's cache is required, val's and test's are used when made.
        The cached parts the system does not run are ignored (logged); training then skips decoding
        :func:`~avgen.data.feature_cache.skipped_modalities` and reads the evaluation view (logged once).
        No-op when ``data.features`` is null.

        Raises:
            ConfigError: no train cache of that name; a cache made from another version of a split, for another
                clip geometry, or whose part differs from the system's (extractor, weights, preprocessing), naming
                the cache folder, the part and the key; a cache holding none of the system's parts.
        """
        if self.features is None:
            return
        from avgen.data.subset import manifest_sha256

        folder = cache_folder(self.root, self.features)
        splits = ["train"] + [s for s in ("val", "test") if (self.root / s / MANIFEST).exists()]
        clip = self.clip.to_dict()
        for split in splits:
            try:
                cache = CacheSplit.load(folder / split)
            except FileNotFoundError:
                if split == "train":
                    made = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
                    raise ConfigError(
                        f"data.features={self.features}: {folder / 'train' / 'manifest.json'} does not exist "
                        + (f"(the cache holds {made}; an interrupted cache run resumes when run again)" if made
                           else "(no such cache)")
                        + f"; make it with: python -m avgen cache data={self.group} experiment=<experiment> "
                          f"cache.name={self.features}") from None
                log.info("data.features=%s: no %s cache (%s): the %s loss computes every part", self.features,
                         split, folder / split, split)
                continue
            problems = cache.check(parts, manifest_sha256(self.root / split), clip)
            if problems:
                raise ConfigError(f"data.features={self.features}: the cache {folder / split} does not fit the model: "
                                  + "; ".join(problems) + f". {remedy(self.group, self.features)}")
            used = [p for p in cache.parts if p in parts]
            if not used:
                raise ConfigError(f"data.features={self.features}: the cache {folder / split} holds the parts "
                                  f"{sorted(cache.parts)}, the model runs {sorted(parts)}: none to read. "
                                  f"{remedy(self.group, self.features)}")
            ignored = sorted(set(cache.parts) - set(parts))
            if ignored:
                log.info("data.features=%s: the %s cache's parts %s are not run by the model: ignored", self.features,
                         split, ignored)
            self.caches[split], self.cached_parts[split] = cache, used
        train_parts = self.cached_parts["train"]
        self.train_skip = skipped_modalities(dict(parts), set(train_parts))
        log.warning("data.features=%s: training reads the cached parts %s and each clip's evaluation view (window "
                    "from 0 s, centre crop: the view the cache holds; no random window or crop)%s", self.features,
                    train_parts, f"; not decoded: {sorted(self.train_skip)}" if self.train_skip else "")

    def _feature_reader(self, split: str):
        """The sidecar reader of ``split``'s cache (the parts the system runs), None without one."""
        cache = self.caches.get(split)
        return None if cache is None else cache.reader(self.cached_parts[split])

    def _has_val(self) -> bool:
        """Whether fit validates: a val split with at least one clip (validation is optional during fit)."""
        if not (self.root / "val" / MANIFEST).exists():
            return False
        if "val" not in self.manifests and Manifest.load(self.root / "val").num_clips == 0:
            log.warning("%s holds no clip (every val video was left out; see prepare_report.json): training "
                        "without validation", self.root / "val")
            return False
        return True

    def setup(self, stage: str | None = None) -> None:
        self._stage = stage
        splits = {"fit": ("train", "val"), None: ("train", "val", "test")}.get(stage, (STAGE_SPLIT.get(stage),))
        for split in splits:
            if split == "val" and stage == "fit" and not self._has_val():
                continue  # validation is optional during fit
            self.manifest(split)
            self.subset_of(split)
            if split == "test" and self.concat_test is not None:
                self.concat_set()  # a test split of one label is refused before any model runs

    # ----------------------------------------------------------------------------------- loaders
    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def batches_per_worker(self, world_size: int) -> int:
        clips = self.epoch_clips or self.num_clips("train")
        return max(1, math.ceil(clips / (self.batch_size * world_size * max(1, self.num_workers))))

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        rank, world = self._dist()
        step = self.trainer.global_step if self.trainer is not None else 0
        dataset = TrainStream(
            self.shards("train"), self.clip, self.batch_size, batches_per_worker=self.batches_per_worker(world),
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, start_step=step, rank=rank, world_size=world,
            max_skip_fraction=self.max_skip_fraction, min_clips_for_check=self.min_clips_for_check,
            num_workers=self.num_workers, fixed=self.fixed_stream, concat=self.concat)
        dataset.skip = self._audio_only_skip() | self.train_skip
        dataset.features = self._feature_reader("train")
        dataset.eval_view = dataset.features is not None
        return self._loader(dataset)

    def _audio_only_skip(self) -> frozenset[str]:
        return frozenset({"video"}) if self.audio_only else frozenset()

    def concat_set(self) -> tuple[list[ConcatPair], dict[str, SampleRef], Health]:
        """The concatenated test set (``data.concat_test``): its pairs, every test sample by key, and the test
        clips that cannot be read (skipped). Built once, from the tar headers of the test split.

        Raises:
            ConfigError: the test split holds one label only (naming ``data.concat_test``).
        """
        if self._concat_set is None:
            refs, missing = index_shards(self.shards("test"))
            pairs = self.concat_test.pairs([r.key for r in refs], [r.label for r in refs], self.clip.num_frames)
            self._concat_set = pairs, {r.key: r for r in refs}, missing
            log.info("data.concat_test: %d concatenated test clips (seed %d)", len(pairs), self.concat_test.seed)
        return self._concat_set

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = self._dist()
        common = dict(split=split, rank=rank, world_size=world, max_skip_fraction=self.max_skip_fraction,
                      min_clips_for_check=self.min_clips_for_check)
        if split == "test" and self.concat_test is not None:
            pairs, refs, missing = self.concat_set()
            dataset = ConcatEvalStream(self.shards(split), self.clip, self.eval_batch_size, pairs=pairs, refs=refs,
                                       missing=missing, **common)
            if self.caches.get(split) is not None:
                log.info("data.features=%s: the concatenated test set (data.concat_test) is not cached: its loss "
                         "computes every part", self.features)
        else:
            dataset = EvalStream(self.shards(split), self.clip, self.eval_batch_size, **common)
            dataset.features = self._feature_reader(split)
        dataset.skip = self._audio_only_skip()
        return self._loader(dataset)

    def val_dataloader(self) -> DataLoader | list:
        if self._stage == "fit" and not self._has_val():
            return []
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def expected_eval_clips(self, split: str, rank: int, world: int) -> int:
        """Clips this rank should see in one pass over ``split`` (all its workers together)."""
        workers = max(1, self.num_workers)
        total = self.num_clips(split)
        return sum(len(range(rank * workers + w, total, world * workers)) for w in range(workers))

    # ----------------------------------------------------------------------------------- batches
    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        stats = batch.pop("_health", None)
        if stats is not None:
            self.health.setdefault(stats["split"], Health()).merge(stats)
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return to_model_batch(batch)

    def take_health(self, split: str) -> Health:
        """The counts gathered since the last call, for ``split``; resets them."""
        return self.health.pop(split, Health())
