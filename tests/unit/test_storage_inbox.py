"""Polling markers of the raw-bucket inbox, against a listing-only fake store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.recon.errors import InputError
from services.storage.inbox import list_new_raw
from services.storage.objects import ObjectInfo

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class ListingStore:
    """Answers ``list`` like an S3 bucket; nothing else is needed by ``list_new_raw``."""

    def __init__(self) -> None:
        self.objects: dict[str, ObjectInfo] = {}

    def put(self, key: str, etag: str, at: datetime) -> None:
        self.objects[key] = ObjectInfo(key, 1, etag, at)

    def list(self, bucket: str, prefix: str = "", start_after: str | None = None) -> list:
        return [info for key, info in sorted(self.objects.items()) if key.startswith(prefix)]


def poll(store: ListingStore, marker: str | None) -> tuple[list[str], str]:
    listing = list_new_raw(store, "raw", marker, overlap=timedelta(minutes=5))  # type: ignore[arg-type]
    return [item.key for item in listing.objects], listing.marker


def test_each_object_is_returned_once_oldest_first() -> None:
    store = ListingStore()
    store.put("acme/s/b.h5", "e1", T0 + timedelta(seconds=2))
    store.put("acme/s/a.h5", "e2", T0 + timedelta(seconds=1))
    keys, marker = poll(store, None)
    assert keys == ["acme/s/a.h5", "acme/s/b.h5"]
    assert poll(store, marker)[0] == []


def test_late_object_with_an_older_timestamp_is_still_found() -> None:
    store = ListingStore()
    store.put("acme/s/new.h5", "e1", T0 + timedelta(minutes=10))
    _, marker = poll(store, None)
    store.put("acme/s/slow-upload.h5", "e2", T0 + timedelta(minutes=8))  # within the overlap
    keys, marker = poll(store, marker)
    assert keys == ["acme/s/slow-upload.h5"]
    assert poll(store, marker)[0] == []


def test_overwritten_object_is_new_again() -> None:
    store = ListingStore()
    store.put("acme/x.h5", "e1", T0)
    _, marker = poll(store, None)
    store.put("acme/x.h5", "e2", T0 + timedelta(seconds=30))
    keys, _ = poll(store, marker)
    assert keys == ["acme/x.h5"]


def test_reserved_hidden_and_unusable_keys_are_skipped() -> None:
    store = ListingStore()
    for key in ["acme/_quarantine/q/object/x.h5", "acme/s/.tmp.123", "bad tenant/x.h5", "ok.h5"]:
        store.put(key, "e", T0)
    keys, _ = poll(store, None)
    assert keys == ["ok.h5"]


def test_garbage_marker_is_an_input_error() -> None:
    with pytest.raises(InputError, match="marker"):
        poll(ListingStore(), "not-a-marker")
