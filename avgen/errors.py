"""User-facing errors. Each message says what was wrong, what was expected and what to do.

Kept free of heavy imports so the command line can report them without loading torch/Lightning.
"""


class ConfigError(ValueError):
    """The config asks for something that does not exist or does not fit; names the key."""


class CommandUnavailable(RuntimeError):
    """The command needs a part of avgen that is not built yet."""


class MissingShardsError(FileNotFoundError):
    """A split folder or its manifest is missing; the message gives the prepare command."""


class GeometryMismatchError(ValueError):
    """The manifest's clip geometry cannot serve the requested one; the message lists both."""


class DataHealthError(RuntimeError):
    """Too many clips could not be used; the message names the shards."""


class WeightsFileError(ConfigError):
    """A weight file exists but is not the expected model's: the safe loader refuses it, or its layout or shapes do
    not fit. One line (whitespace of embedded messages collapsed) naming the file, the config key and the expected
    file; a ``ConfigError``, so the command line reports it without a traceback."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class WeightsFileMissing(FileNotFoundError):
    """A pretrained model's weight file is not where the config says; names the key, the expected file,
    where the original is published, and ``scale=tiny`` as the way to run without it."""

    def __init__(self, model: str, path, config_key: str, expected: str, description: str, origin: str):
        where = "no path is set" if path is None else f"{path} does not exist"
        super().__init__(
            f"{model} weights missing: {where} (config key {config_key}). Expected {expected}, {description}; it is "
            f"published in {origin}. avgen never downloads weights: download the file where there is network, copy "
            f"it here and set {config_key}=/path/to/{expected}, or run with scale=tiny, which builds a tiny random "
            f"{model} in code and needs no file.")
        self.path, self.config_key = path, config_key


class NothingProduced(RuntimeError):
    """A command finished without producing anything it was asked for (0 clips scored, 0 samples written);
    the message says why (every input refused, every output failed) and where the reasons are listed.
    The command line exits with status 1 on it."""


class CheckpointError(ValueError):
    """A file given as a checkpoint (``ckpt_path``, ``init_from``, ``resume``) is not one written by ``fit``: not a
    torch file, truncated, or without avgen's entry; one line naming the file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(ValueError):
    """An input given to a pipeline (:mod:`avgen.pipelines`) or the demo page cannot be used: an unreadable or
    missing file, an input too short or too long, an unknown sampling option or a bad value. One line naming the
    input and what to do; raised before any model runs."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class PipelineFolderError(ValueError):
    """A folder given to :func:`avgen.from_pretrained` is not a complete avgen export (no ``avgen_index.json``,
    a missing or altered component file, an unknown format or system); one line naming the file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class PrepareError(RuntimeError):
    """``prepare`` stopped part-way (e.g. a worker process was killed); the message says how to resume."""


# Exit status of a run that saved its checkpoint on the cluster's pre-timeout signal and stopped to be requeued
# (EX_TEMPFAIL). Here, not beside the SLURM callback, so the sweep task runner reads it without importing Lightning.
PREEMPTED_EXIT = 75
