"""Writing results so that nobody ever sees half of them.

A job attempt writes every artefact below its own staging folder
``<tenant>/_staging/<job_id>/<attempt>/``; :meth:`StagedResults.publish` then copies them to
their final keys ``<tenant>/jobs/<job_id>/<artefact>`` and deletes the staging copies.
Publishing refuses to overwrite a final key that already exists unless asked to, so a later
(or failed) attempt never replaces results that are already stored. A job's results are listed
only once its record says ``succeeded`` (see :meth:`services.storage.Storage.list_results`).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from services.storage import keys
from services.storage.errors import PublishConflictError, StorageError
from services.storage.objects import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)


class ResultObject(NamedTuple):
    """One published artefact of a job."""

    name: str
    key: str
    size: int
    etag: str


def content_type_for(name: str) -> str:
    """The MIME type mrdiff stores an artefact under, from its file name."""
    lowered = name.lower()
    for suffix, content_type in (
        (".json", "application/json"),
        (".png", "image/png"),
        (".nii.gz", "application/gzip"),
        (".nii", "application/octet-stream"),
        (".h5", "application/x-hdf5"),
        (".dcm", "application/dicom"),
        (".zip", "application/zip"),
        (".txt", "text/plain; charset=utf-8"),
        (".html", "text/html; charset=utf-8"),
    ):
        if lowered.endswith(suffix):
            return content_type
    return "application/octet-stream"


class StagedResults:
    """The staging folder of one attempt of one job; use as a context manager.

    Leaving the ``with`` block with an exception discards everything staged; leaving it after
    :meth:`publish` removes nothing that was published.
    """

    def __init__(
        self, store: ObjectStore, bucket: str, tenant: str, job_id: str, attempt: str | None = None
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.tenant = keys.validate_tenant(tenant)
        self.job_id = keys.validate_job_id(job_id)
        self.attempt = attempt or secrets.token_hex(6)
        self.prefix = keys.staging_prefix(tenant, job_id, self.attempt)
        self.published: list[str] = []

    def __enter__(self) -> StagedResults:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            try:
                self.discard()
            except StorageError:
                log.exception("could not discard staged results under %s", self.prefix)

    def _staging_key(self, name: str) -> str:
        return self.prefix + keys.validate_artefact_name(name)

    def put_bytes(self, name: str, data: bytes, content_type: str | None = None) -> str:
        """Stage ``data`` as artefact ``name``; returns the staging key."""
        key = self._staging_key(name)
        self.store.put_bytes(self.bucket, key, data, content_type or content_type_for(name))
        return key

    def put_file(self, name: str, path: str | Path, content_type: str | None = None) -> str:
        """Stage a local file as artefact ``name``; returns the staging key."""
        key = self._staging_key(name)
        self.store.put_file(self.bucket, key, path, content_type or content_type_for(name))
        return key

    def staged(self) -> list[ObjectInfo]:
        """What is staged so far."""
        return self.store.list(self.bucket, self.prefix)

    def names(self) -> list[str]:
        """Artefact names staged so far."""
        return [item.key[len(self.prefix) :] for item in self.staged()]

    def publish(self, overwrite: bool = False) -> list[str]:
        """Copy every staged artefact to its final key, then delete the staging copies.

        Raises :class:`PublishConflictError` (before copying anything) when a final key exists
        and ``overwrite`` is False. Returns the published artefact names.
        """
        staged = self.staged()
        if not staged:
            raise StorageError(f"nothing staged under {self.prefix} to publish")
        names = [item.key[len(self.prefix) :] for item in staged]
        finals = {name: keys.result_key(self.tenant, self.job_id, name) for name in names}
        if not overwrite:
            existing = {
                item.key
                for item in self.store.list(self.bucket, keys.job_prefix(self.tenant, self.job_id))
            }
            clashes = sorted(key for key in finals.values() if key in existing)
            if clashes:
                raise PublishConflictError(clashes)
        for item, name in zip(staged, names, strict=True):
            self.store.copy(self.bucket, item.key, self.bucket, finals[name])
        self.store.delete_many(self.bucket, [item.key for item in staged])
        self.published = names
        return names

    def discard(self) -> None:
        """Delete everything staged by this attempt (published results stay)."""
        self.store.delete_many(self.bucket, [item.key for item in self.staged()])
