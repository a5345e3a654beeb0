"""A small, typed, retrying layer over the ``minio`` client: the only place that calls it.

Each method is one S3 operation; transient failures (connection errors, 5xx) are retried with
the :class:`~services.storage.retry.RetryPolicy`, client errors are not. A missing key raises
:class:`~services.storage.errors.ObjectNotFoundError` (or gives ``None`` where documented).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from services.settings import Settings
from services.storage.errors import ObjectNotFoundError, StorageError, TornReadError
from services.storage.hashing import CHUNK_SIZE, sha256_chunks
from services.storage.retry import RetryPolicy, call_with_retry

T = TypeVar("T")
_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


class ObjectInfo(NamedTuple):
    """What a listing or a HEAD tells about one object."""

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = None


def make_minio_client(settings: Settings, *, public: bool = False) -> Minio:
    """A ``Minio`` client for ``settings``, with urllib3's own retries off (we retry ourselves).

    ``public=True`` gives a client for ``settings.s3_public_url``, used only to sign presigned
    URLs for clients outside the services' network (signing is local: the region is set, so
    the client never asks the server for it).
    """
    endpoint, secure = settings.s3_endpoint, settings.s3_secure
    if public:
        parts = urlsplit(settings.s3_public_url)
        endpoint, secure = parts.netloc, parts.scheme == "https"
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(
            connect=min(5.0, settings.s3_timeout_seconds), read=settings.s3_timeout_seconds
        ),
        retries=False,
        maxsize=16,
    )
    return Minio(
        endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=secure,
        region=settings.s3_region,
        http_client=http,
    )


def _is_missing(error: S3Error) -> bool:
    return error.code in MISSING_CODES or getattr(error.response, "status", 0) == 404


class ObjectStore:
    """Typed S3 operations with retries; knows nothing of mrdiff's key layout.

    ``presign_client`` signs presigned URLs (a client for the endpoint callers reach S3 at);
    by default ``client`` does.
    """

    def __init__(
        self, client: Minio, retry: RetryPolicy | None = None, presign_client: Minio | None = None
    ) -> None:
        self.client = client
        self.retry = retry or RetryPolicy()
        self.presign_client = presign_client or client

    def _call(self, description: str, operation: Callable[[], T]) -> T:
        return call_with_retry(operation, self.retry, description=description)

    # -- buckets ------------------------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` unless it exists; True when it was created now."""

        def ensure() -> bool:
            if self.client.bucket_exists(bucket):
                return False
            try:
                self.client.make_bucket(bucket)
            except S3Error as error:
                if error.code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    return False
                raise
            return True

        return self._call(f"ensure bucket {bucket}", ensure)

    def bucket_exists(self, bucket: str, *, retry: bool = True) -> bool:
        """True when ``bucket`` exists; ``retry=False`` asks once (for fast health checks)."""
        if not retry:
            return bool(self.client.bucket_exists(bucket))
        return self._call(f"bucket exists {bucket}", lambda: self.client.bucket_exists(bucket))

    # -- writes -------------------------------------------------------------------------------
    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Store ``data`` at ``key`` (replacing what is there); returns the ETag."""

        def put() -> str:
            result = self.client.put_object(
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata=dict(metadata or {}),
            )
            return str(result.etag)

        return self._call(f"put {bucket}/{key}", put)

    def put_stream(
        self,
        bucket: str,
        key: str,
        stream: BinaryIO,
        length: int,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Store ``length`` bytes read from ``stream``; retried only if the stream can seek."""
        start = stream.tell() if stream.seekable() else None

        def put() -> str:
            if start is not None:
                stream.seek(start)
            result = self.client.put_object(
                bucket,
                key,
                stream,
                length,
                content_type=content_type,
                part_size=0 if length >= 0 else 16 * 1024 * 1024,
            )
            return str(result.etag)

        if start is None:
            return put()
        return self._call(f"put {bucket}/{key}", put)

    def put_file(
        self,
        bucket: str,
        key: str,
        path: str | Path,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Upload a local file; returns the ETag."""
        with open(path, "rb") as stream:
            return self.put_stream(
                bucket, key, stream, os.fstat(stream.fileno()).st_size, content_type
            )

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> str:
        """Server-side copy; returns the new object's ETag."""

        def copy() -> str:
            try:
                result = self.client.copy_object(
                    dst_bucket, dst_key, CopySource(src_bucket, src_key)
                )
            except S3Error as error:
                if _is_missing(error):
                    raise ObjectNotFoundError(src_bucket, src_key) from None
                raise
            return str(result.etag)

        return self._call(f"copy {src_bucket}/{src_key} -> {dst_bucket}/{dst_key}", copy)

    def delete(self, bucket: str, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        self._call(f"delete {bucket}/{key}", lambda: self.client.remove_object(bucket, key))

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Remove several keys in batched requests."""

        def delete() -> None:
            errors = list(self.client.remove_objects(bucket, (DeleteObject(k) for k in keys)))
            failed = [e for e in errors if e.code not in MISSING_CODES]
            if failed:
                raise StorageError(f"could not delete {len(failed)} object(s): {failed[0]}")

        if keys:
            self._call(f"delete {len(keys)} objects in {bucket}", delete)

    # -- reads --------------------------------------------------------------------------------
    def _read(self, bucket: str, key: str, sink: Callable[[Iterator[bytes], str], T]) -> T:
        """GET ``key`` and feed its body, in chunks, and its ETag (unquoted, lower case) to
        ``sink``; retried from the start."""

        def read() -> T:
            try:
                response = self.client.get_object(bucket, key)
            except S3Error as error:
                if _is_missing(error):
                    raise ObjectNotFoundError(bucket, key) from None
                raise
            etag = str(response.headers.get("ETag", "")).strip('"').lower()
            try:
                return sink(response.stream(CHUNK_SIZE), etag)
            finally:
                response.close()
                response.release_conn()

        return self._call(f"get {bucket}/{key}", read)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The whole object (for small objects: records, indexes), checked against its ETag.

        A server may hand a reader a mix of two versions of an object that is being replaced:
        nanio, the local server, answers with the previous version's length and the new
        version's bytes in that window, which cut job records in half under the progress
        updates of a running job. When the ETag is a plain MD5 (single-part uploads, which is
        how mrdiff writes small objects), a body that does not match it is read again.
        """

        def whole(chunks: Iterator[bytes], etag: str) -> bytes:
            data = b"".join(chunks)
            if _PLAIN_MD5.fullmatch(etag) and hashlib.md5(data).hexdigest() != etag:
                raise TornReadError(f"{bucket}/{key}: content does not match ETag {etag}")
            return data

        return self._read(bucket, key, whole)

    def find_bytes(self, bucket: str, key: str) -> bytes | None:
        """The whole object, or None when it does not exist."""
        try:
            return self.get_bytes(bucket, key)
        except ObjectNotFoundError:
            return None

    def sha256(self, bucket: str, key: str) -> str:
        """Hex sha256 of the object's content, streamed (never held in memory)."""
        return self._read(bucket, key, lambda chunks, _: sha256_chunks(chunks))

    def download(self, bucket: str, key: str, path: str | Path) -> Path:
        """Save the object to ``path`` atomically (temp file in the same folder, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(chunks: Iterator[bytes], etag: str) -> Path:
            descriptor, temporary = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".part", dir=target.parent
            )
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            return target

        return self._read(bucket, key, write)

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        """HEAD the object; None when it does not exist."""

        def head() -> ObjectInfo | None:
            try:
                found = self.client.stat_object(bucket, key)
            except S3Error as error:
                if _is_missing(error):
                    return None
                raise
            return _info(
                found.object_name or key,
                found.size,
                found.etag,
                found.last_modified,
                found.content_type,
            )

        return self._call(f"stat {bucket}/{key}", head)

    def exists(self, bucket: str, key: str) -> bool:
        """True when ``key`` exists in ``bucket``."""
        return self.stat(bucket, key) is not None

    def list(
        self, bucket: str, prefix: str = "", start_after: str | None = None
    ) -> list[ObjectInfo]:
        """All objects below ``prefix`` (recursively), in key order."""

        def listing() -> list[ObjectInfo]:
            return [
                _info(item.object_name or "", item.size, item.etag, item.last_modified, None)
                for item in self.client.list_objects(
                    bucket, prefix=prefix or None, recursive=True, start_after=start_after
                )
                if item.object_name and not item.is_dir
            ]

        return self._call(f"list {bucket}/{prefix}", listing)

    # -- presigned URLs -------------------------------------------------------------------------
    def presigned_get_url(self, bucket: str, key: str, expires: timedelta) -> str:
        """A URL that lets its holder GET ``key`` until it expires (computed locally)."""
        return self.presign_client.presigned_get_object(bucket, key, expires=expires)

    def presigned_put_url(self, bucket: str, key: str, expires: timedelta) -> str:
        """A URL that lets its holder PUT ``key`` until it expires (computed locally)."""
        return self.presign_client.presigned_put_object(bucket, key, expires=expires)


def _info(
    key: str, size: int | None, etag: str | None, modified: datetime | None, ctype: str | None
) -> ObjectInfo:
    if modified is None:
        raise StorageError(f"object store gave no Last-Modified for {key!r}")
    return ObjectInfo(
        key=key,
        size=int(size or 0),
        etag=(etag or "").strip('"'),
        last_modified=modified,
        content_type=ctype,
    )
