"""Backoff policy and which failures are retried."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest
import urllib3
from minio.error import S3Error, ServerError

from services.storage.errors import ObjectNotFoundError, TornReadError
from services.storage.objects import ObjectStore
from services.storage.retry import RetryPolicy, call_with_retry, is_transient


def s3_error(status: int, code: str) -> S3Error:
    return S3Error(urllib3.HTTPResponse(status=status), code, "message", "/b/k", None, None)


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.1, multiplier=2, max_delay=1.0, jitter=False)
    assert list(policy.delays()) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])


def test_full_jitter_stays_below_the_exponential_ceiling() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.1, multiplier=3, max_delay=2.0)
    for _ in range(50):
        delays = list(policy.delays(random.Random()))
        ceilings = [0.1, 0.3, 0.9, 2.0]
        assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("reset"),
        urllib3.exceptions.ReadTimeoutError(None, "/", "slow"),  # type: ignore[arg-type]
        ConnectionResetError(),
        s3_error(503, "SlowDown"),
        s3_error(500, "InternalError"),
        ServerError("bad gateway", 502),
    ],
)
def test_connection_errors_and_5xx_are_transient(error: Exception) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        s3_error(404, "NoSuchKey"),
        s3_error(403, "AccessDenied"),
        s3_error(403, "SignatureDoesNotMatch"),
        s3_error(409, "BucketNotEmpty"),
        ObjectNotFoundError("b", "k"),
        ValueError("bad"),
    ],
)
def test_client_errors_are_not_transient(error: Exception) -> None:
    assert not is_transient(error)


def test_call_with_retry_retries_transient_errors_then_succeeds() -> None:
    failures = [ConnectionRefusedError(), s3_error(503, "SlowDown")]
    slept: list[float] = []

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    policy = RetryPolicy(attempts=3, base_delay=0.5, jitter=False)
    assert call_with_retry(flaky, policy, sleep=slept.append) == "done"
    assert slept == [0.5, 1.0]


def test_call_with_retry_gives_up_after_the_last_attempt() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):
        call_with_retry(down, RetryPolicy(attempts=4, base_delay=0), sleep=lambda _: None)
    assert len(calls) == 4


def test_call_with_retry_does_not_retry_client_errors() -> None:
    calls: list[int] = []

    def forbidden() -> None:
        calls.append(1)
        raise s3_error(403, "AccessDenied")

    with pytest.raises(S3Error):
        call_with_retry(forbidden, RetryPolicy(attempts=5), sleep=lambda _: None)
    assert len(calls) == 1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)


class _Response:
    """What ``Minio.get_object`` returns, reduced to what ObjectStore reads."""

    def __init__(self, body: bytes, etag: str) -> None:
        self.body, self.headers = body, {"ETag": f'"{etag}"'}

    def stream(self, size: int) -> Iterator[bytes]:
        yield from (self.body[i : i + size] for i in range(0, len(self.body), size))

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class _ReplacingClient:
    """Answers like nanio while an object is replaced: the new ETag with a cut body, once."""

    def __init__(self, old: bytes, new: bytes) -> None:
        self.answers = [
            _Response(new[: len(old)], hashlib.md5(new).hexdigest()),
            _Response(new, hashlib.md5(new).hexdigest()),
        ]

    def get_object(self, bucket: str, key: str) -> _Response:
        return self.answers.pop(0)


def test_a_torn_read_is_read_again() -> None:
    old, new = b'{"state": "queued"}', b'{"state": "running", "progress_done": 1}'
    client = _ReplacingClient(old, new)
    store = ObjectStore(client, RetryPolicy(attempts=3, base_delay=0.0))  # type: ignore[arg-type]
    assert store.get_bytes("results", "acme/jobs/j1/job.json") == new
    assert client.answers == []
    assert is_transient(TornReadError("cut"))


def test_a_read_that_stays_torn_fails_after_the_retries() -> None:
    client = _ReplacingClient(b"0123", b"0123456789")
    client.answers = [client.answers[0]] * 3
    store = ObjectStore(client, RetryPolicy(attempts=3, base_delay=0.0))  # type: ignore[arg-type]
    with pytest.raises(TornReadError, match="does not match ETag"):
        store.get_bytes("results", "k")
    multipart = _Response(b"anything", "0" * 32 + "-2")  # multipart ETags are not MD5s: no check
    client.answers = [multipart]
    assert store.get_bytes("results", "k") == b"anything"
