"""API keys: random bearer tokens mapped to tenants, stored only as peppered hashes.

A key is ``mrd_`` + 43 URL-safe characters (256 random bits). The store keeps, per key, an id
(shown by ``mrdiff api-key list`` and used to revoke), the tenant, a label, the creation time and
``HMAC-SHA256(pepper, key)``; the key itself is printed once by ``mrdiff api-key create`` and
never written anywhere. Because keys carry 256 bits of entropy, a keyed fast hash is enough (a
slow KDF such as scrypt protects low-entropy passwords); the pepper (``MRDIFF_API_PEPPER``) lives
in the server's settings, not beside the hashes, so a copy of the key file alone is useless.
Changing the pepper invalidates every key.

The file (``<data_dir>/api_keys.json`` unless ``MRDIFF_API_KEYS_FILE`` says otherwise) is JSON,
mode 0600, replaced atomically under an advisory lock by writers; the API re-reads it when its
modification time or size changes, so a key created or revoked from the CLI takes effect on the
next request without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.recon.errors import InputError
from services.storage.keys import validate_tenant

KEY_PREFIX = "mrd_"
FILE_VERSION = 1


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the store knows about one key (never the key itself)."""

    key_id: str
    tenant: str
    key_hash: str
    created_at: str
    label: str | None = None


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key: ``secret`` is shown to the operator once and then forgotten."""

    secret: str
    record: ApiKeyRecord


def hash_key(key: str, pepper: str) -> str:
    """``HMAC-SHA256(pepper, key)`` as hex."""
    return hmac.new(pepper.encode("utf-8"), key.encode("utf-8"), hashlib.sha256).hexdigest()


class ApiKeyStore:
    """Hashed API keys in one JSON file; safe for one API process and CLI writers side by side."""

    def __init__(self, path: Path, pepper: str) -> None:
        if not pepper:
            raise InputError("API key pepper is empty; set MRDIFF_API_PEPPER")
        self.path = Path(path)
        self._pepper = pepper
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, ApiKeyRecord] = {}

    # -- reading ----------------------------------------------------------------------------
    def authenticate(self, key: str) -> ApiKeyRecord | None:
        """The record of ``key`` if it is a valid, unrevoked key; else None."""
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        digest = hash_key(key, self._pepper)
        record = self._current().get(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        return record

    def records(self) -> list[ApiKeyRecord]:
        """All keys, oldest first."""
        return sorted(self._current().values(), key=lambda record: record.created_at)

    def _current(self) -> dict[str, ApiKeyRecord]:
        """The hash -> record map, re-read when the file changed on disk."""
        try:
            stat = self.path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                records = _read_records(self.path) if stamp is not None else []
                self._by_hash = {record.key_hash: record for record in records}
                self._stamp = stamp
            return self._by_hash

    # -- writing ----------------------------------------------------------------------------
    def create(self, tenant: str, label: str | None = None) -> NewApiKey:
        """Make a key for ``tenant``; the returned secret is the only copy."""
        validate_tenant(tenant)
        if label is not None and len(label) > 200:
            raise InputError("label must be at most 200 characters")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            key_id="key_" + secrets.token_hex(6),
            tenant=tenant,
            key_hash=hash_key(secret, self._pepper),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            label=label,
        )
        with self._exclusive():
            records = _read_records(self.path) if self.path.exists() else []
            _write_records(self.path, [*records, record])
        return NewApiKey(secret=secret, record=record)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Remove the key with ``key_id``; :class:`InputError` if there is none."""
        with self._exclusive():
            records = _read_records(self.path) if self.path.exists() else []
            kept = [record for record in records if record.key_id != key_id]
            if len(kept) == len(records):
                raise InputError(f"no API key with id {key_id!r}")
            _write_records(self.path, kept)
        return next(record for record in records if record.key_id == key_id)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise writers (CLI invocations, tests) with an advisory lock beside the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _read_records(path: Path) -> list[ApiKeyRecord]:
    try:
        document: Any = json.loads(path.read_text("utf-8"))
        if document.get("version") != FILE_VERSION:
            version = document.get("version")
            raise InputError(f"{path}: unsupported API key file version {version!r}")
        return [ApiKeyRecord(**entry) for entry in document["keys"]]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not a valid API key file ({error})") from None


def _write_records(path: Path, records: list[ApiKeyRecord]) -> None:
    """Replace the file atomically (temp file in the same folder, mode 0600, os.replace)."""
    document = {
        "version": FILE_VERSION,
        "hash": "hmac-sha256(MRDIFF_API_PEPPER, key)",
        "keys": [asdict(record) for record in records],
    }
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o600)
        os.replace(temp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
