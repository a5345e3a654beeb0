"""Reading MinIO bucket notifications (the webhook's payload)."""

from __future__ import annotations

import pytest

from pipelines.hooks import created_keys
from services.recon.errors import InputError


def event(bucket: str, key: str, name: str = "s3:ObjectCreated:Put") -> dict[str, object]:
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}


def test_keys_are_url_decoded_and_filtered() -> None:
    payload = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "raw/acme/study 1/knee.h5",
        "Records": [
            event("raw", "acme/study+1/knee%2Bfat.h5"),
            event("raw", "acme%2Fstudy-2%2FIM1.dcm", "s3:ObjectCreated:CompleteMultipartUpload"),
            event("raw", "acme/study-3/gone.h5", "s3:ObjectRemoved:Delete"),
            event("other", "acme/x.h5"),
            event("raw", "acme/study+1/knee%2Bfat.h5"),  # duplicate delivery
        ],
    }
    assert created_keys(payload, "raw") == ["acme/study 1/knee+fat.h5", "acme/study-2/IM1.dcm"]


def test_payload_without_records_is_empty() -> None:
    assert created_keys({"EventName": "s3:TestEvent"}, "raw") == []


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"Records": "nope"},
        {"Records": [{"eventName": "s3:ObjectCreated:Put"}]},
        {"Records": [{"s3": {}}]},
    ],
)
def test_malformed_payload_is_an_input_error(payload: object) -> None:
    with pytest.raises(InputError):
        created_keys(payload, "raw")
