"""Exceptions a user can act on.

Every error raised on purpose by tunesmith derives from `TunesmithError`; the CLI prints its
message on one line (exit code 1) and a future HTTP API turns it into a 4xx JSON body. A message
says what was expected, what was found, and how to fix it.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class of the errors meant for the user, not for a traceback."""


class DataError(TunesmithError, ValueError):
    """The data file cannot be used as it is."""


class ConfigError(TunesmithError, ValueError):
    """A setting is missing, unknown or out of range."""


class ModelError(TunesmithError):
    """A base model cannot be found or loaded."""


class RegistryError(TunesmithError):
    """A registered model, version or alias does not exist or cannot be changed."""


class NotFoundError(RegistryError):
    """A model, version, alias or key that does not exist."""


class ConflictError(RegistryError):
    """A request that conflicts with the registry's state (e.g. nothing to roll back, a name taken)."""


class InvalidNameError(ConfigError, RegistryError):
    """A model, alias, run, study or key name that cannot be used as a folder name."""


class LockedError(TunesmithError):
    """Another process holds what this one needs (e.g. a training run of the same name)."""
