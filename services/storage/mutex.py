"""A short-lived mutex on one object key, built from plain PUT, LIST and DELETE.

Neither nanio nor the ``minio`` client's ``put_object`` offer conditional writes (If-Match /
If-None-Match), so read-compare-write of a record needs another guard. Each contender writes
its own empty candidate object below ``lock_prefix(key)`` and then lists that folder: it holds
the mutex only if its candidate is the only live one, otherwise it deletes it, waits a random
moment and tries again. On a store with read-after-write consistent listings (AWS S3, MinIO,
nanio) two contenders can never both see themselves alone: the later writer always sees the
earlier one's candidate. Candidates older than ``ttl`` (by the store's own clock, compared with
the contender's fresh candidate) belong to a crashed holder and are removed.

The critical sections guarded here are a GET and a PUT of a small JSON document, far below
``ttl``; do not hold the mutex across slow work.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from services.storage.errors import LockTimeoutError
from services.storage.keys import lock_prefix
from services.storage.objects import ObjectStore


class KeyMutex:
    """Mutual exclusion on keys of one bucket (see the module docstring for the protocol)."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        ttl: timedelta = timedelta(seconds=30),
        timeout: timedelta = timedelta(seconds=20),
        max_backoff_seconds: float = 0.1,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.ttl = ttl
        self.timeout = timeout
        self.max_backoff_seconds = max_backoff_seconds

    def _try_acquire(self, prefix: str) -> str | None:
        candidate = f"{prefix}{time.time_ns():020d}-{secrets.token_hex(8)}"
        self.store.put_bytes(self.bucket, candidate, b"")
        listed = self.store.list(self.bucket, prefix)
        mine = next((item for item in listed if item.key == candidate), None)
        if mine is None:  # not yet visible: treat as lost, never as won
            self.store.delete(self.bucket, candidate)
            return None
        others = [item for item in listed if item.key != candidate]
        stale = [item.key for item in others if item.last_modified < mine.last_modified - self.ttl]
        if stale:
            self.store.delete_many(self.bucket, stale)
        if len(others) > len(stale):
            self.store.delete(self.bucket, candidate)
            return None
        return candidate

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold the mutex on ``key`` for the ``with`` block; LockTimeoutError if it stays busy."""
        prefix = lock_prefix(key)
        deadline = time.monotonic() + self.timeout.total_seconds()
        while (candidate := self._try_acquire(prefix)) is None:
            if time.monotonic() > deadline:
                raise LockTimeoutError(f"{key!r} stayed locked for {self.timeout}")
            time.sleep(random.uniform(0.005, self.max_backoff_seconds))
        try:
            yield
        finally:
            self.store.delete(self.bucket, candidate)
