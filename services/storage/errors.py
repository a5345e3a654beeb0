"""Errors raised by :mod:`services.storage`.

Bad keys, tenants or artefact names are input errors
(:class:`services.recon.errors.InputError`, a ``ValueError``); the classes below are about the
state of the store itself.
"""

from __future__ import annotations


class StorageError(RuntimeError):
    """The object store could not do what was asked (after retries where retrying is safe)."""


class ObjectNotFoundError(StorageError, KeyError):
    """A bucket/key that should exist does not."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"no object {key!r} in bucket {bucket!r}")
        self.bucket = bucket
        self.key = key

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TornReadError(StorageError):
    """A read returned content that does not match the object's ETag (it was being replaced);
    transient: reading again gives the whole of one version."""


class ConflictError(StorageError):
    """A write lost a race or would replace data it was not allowed to replace."""


class LockTimeoutError(StorageError):
    """The short-lived mutex on a key could not be taken in time."""


class PublishConflictError(ConflictError):
    """Publishing results would overwrite final objects that already exist."""

    def __init__(self, keys: list[str]) -> None:
        shown = ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        super().__init__(f"refusing to overwrite {len(keys)} existing result(s): {shown}")
        self.keys = keys


class InvalidTransitionError(ConflictError):
    """A job state change that the state machine does not allow (e.g. succeeded -> running)."""
