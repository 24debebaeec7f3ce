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
