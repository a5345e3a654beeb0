"""The raw bucket as an inbox: polling for new inputs and quarantining bad ones.

nanio has no bucket notifications (MinIO does), so new inputs are found by polling.
:func:`list_new_raw` lists the raw bucket and returns objects that the previous poll (its
``marker``) did not return, plus the marker for the next poll. The marker is an opaque string
(store it anywhere: a Prefect variable, a file); it holds a watermark of the newest
``Last-Modified`` seen and the identities (key + ETag) of the objects near that watermark, so
an object whose timestamp is a little older than objects listed before it (clock granularity,
slow uploads) is still returned once, and an object overwritten with new content is returned
again. Uploads that take longer than ``overlap`` to complete can be missed by incremental
polls; a poll without a marker lists everything, which is safe because work is deduplicated by
processing key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from services.recon.errors import InputError
from services.storage import keys
from services.storage.errors import ObjectNotFoundError
from services.storage.objects import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)
RESEARCH_USE_ONLY = "research use only, not for diagnosis"
DEFAULT_OVERLAP = timedelta(minutes=5)


class RawObject(NamedTuple):
    """One input object in the raw bucket."""

    key: str
    tenant: str
    study: str | None
    name: str
    size: int
    etag: str
    last_modified: datetime


class InboxListing(NamedTuple):
    """New raw objects (oldest first) and the marker to pass to the next poll."""

    objects: list[RawObject]
    marker: str


class QuarantinedObject(NamedTuple):
    """Where a quarantined input went."""

    original_key: str
    object_key: str
    reason_key: str


class _Marker(NamedTuple):
    watermark: datetime | None
    seen: frozenset[tuple[str, str]]

    def encode(self) -> str:
        document = {
            "v": 1,
            "watermark": None if self.watermark is None else self.watermark.isoformat(),
            "seen": sorted([key, etag] for key, etag in self.seen),
        }
        raw = json.dumps(document, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii")

    @classmethod
    def decode(cls, marker: str | None) -> _Marker:
        if not marker:
            return cls(None, frozenset())
        try:
            document = json.loads(base64.urlsafe_b64decode(marker.encode("ascii")))
            watermark = document["watermark"]
            return cls(
                None if watermark is None else datetime.fromisoformat(watermark),
                frozenset((str(key), str(etag)) for key, etag in document["seen"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            raise InputError(f"invalid inbox marker: {error}") from None


def _as_raw_object(item: ObjectInfo) -> RawObject | None:
    try:
        parsed = keys.parse_raw_key(item.key)
    except InputError as error:
        log.warning("ignoring raw object with an unusable key: %s", error)
        return None
    if keys.is_reserved_raw_key(parsed):
        return None
    return RawObject(
        key=item.key,
        tenant=parsed.tenant,
        study=parsed.study,
        name=parsed.name,
        size=item.size,
        etag=item.etag,
        last_modified=item.last_modified,
    )


def list_raw(store: ObjectStore, bucket: str, tenant: str | None = None) -> list[RawObject]:
    """Every input object (reserved and unusable keys left out), in key order."""
    prefix = keys.tenant_prefix(tenant) if tenant else ""
    found = (_as_raw_object(item) for item in store.list(bucket, prefix))
    objects = [item for item in found if item is not None]
    if tenant == keys.DEFAULT_TENANT:  # bare keys belong to the default tenant too
        bare = (_as_raw_object(item) for item in store.list(bucket) if "/" not in item.key)
        objects = sorted([*objects, *(item for item in bare if item)], key=lambda o: o.key)
    return objects


def list_new_raw(
    store: ObjectStore,
    bucket: str,
    marker: str | None = None,
    *,
    tenant: str | None = None,
    overlap: timedelta = DEFAULT_OVERLAP,
) -> InboxListing:
    """Raw objects that are new since ``marker`` (all of them without one), oldest first."""
    previous = _Marker.decode(marker)
    objects = list_raw(store, bucket, tenant)
    if previous.watermark is None:
        new = objects
    else:
        horizon = previous.watermark - overlap
        new = [
            item
            for item in objects
            if item.last_modified > horizon and (item.key, item.etag) not in previous.seen
        ]
    times = [item.last_modified for item in objects]
    if previous.watermark is not None:
        times.append(previous.watermark)
    watermark = max(times) if times else None
    seen = frozenset(
        (item.key, item.etag)
        for item in objects
        if watermark is not None and item.last_modified > watermark - overlap
    )
    new.sort(key=lambda item: (item.last_modified, item.key))
    return InboxListing(objects=new, marker=_Marker(watermark, seen).encode())


def quarantine(store: ObjectStore, bucket: str, raw_key: str, reason: str) -> QuarantinedObject:
    """Move a raw object out of the inbox into ``<tenant>/_quarantine/<id>/`` with a reason.

    The copy and ``reason.json`` are written before the original is deleted, so the input is
    never lost; the quarantined copy is never listed as a new input.
    """
    parsed = keys.parse_raw_key(raw_key)
    if keys.is_reserved_raw_key(parsed):
        raise InputError(f"{raw_key!r} is not an inbox object")
    info = store.stat(bucket, raw_key)
    if info is None:
        raise ObjectNotFoundError(bucket, raw_key)
    now = datetime.now(UTC)
    quarantine_id = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    folder = keys.quarantine_prefix(parsed.tenant, quarantine_id)
    object_key = f"{folder}object/{parsed.relative}"
    reason_key = f"{folder}reason.json"
    store.copy(bucket, raw_key, bucket, object_key)
    document = {
        "original_key": raw_key,
        "tenant": parsed.tenant,
        "reason": " ".join(str(reason).split()) or "unspecified",
        "quarantined_at": now.isoformat(),
        "size": info.size,
        "etag": info.etag,
        "object_key": object_key,
        "research_use_only": RESEARCH_USE_ONLY,
    }
    store.put_bytes(bucket, reason_key, json.dumps(document, indent=1).encode(), "application/json")
    store.delete(bucket, raw_key)
    return QuarantinedObject(original_key=raw_key, object_key=object_key, reason_key=reason_key)
