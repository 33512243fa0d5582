"""Exceptions raised by quantd.

Every exception derives from :class:`QuantdError`. A subclass names one
condition, and its docstring is the message used when none is given.
"""

from __future__ import annotations


class QuantdError(Exception):
    """quantd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(QuantdError):
    """The configuration is invalid."""


class TreeError(QuantdError):
    """The queue tree is missing or unusable."""


class InvalidId(QuantdError):
    """An item id is invalid."""


class InvalidItem(QuantdError):
    """A document is not a valid queue item."""


class RoutingError(QuantdError):
    """The routing graph has no edge for this move."""


class ClaimLost(QuantdError):
    """The claim is no longer held by this worker: it was recovered as stale
    or finished by another process."""


class QueueNotFound(QuantdError):
    """No queue or output by this name exists in the configuration."""
