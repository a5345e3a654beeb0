"""Retries with exponential backoff for transient object-store failures.

Connection problems (refused, reset, timed out), server-side 5xx answers and torn reads
(:class:`~services.storage.errors.TornReadError`) are retried;
client errors (4xx: missing key, bad signature, conflicts) are not, since trying again cannot
change the answer. Delays grow as ``base * multiplier**n`` up to ``max_delay``, with "full
jitter" (AWS Architecture Blog, *Exponential Backoff And Jitter*, 2015) so that many workers
that failed together do not retry together.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import urllib3.exceptions
from minio.error import InvalidResponseError, S3Error, ServerError

from services.storage.errors import TornReadError

T = TypeVar("T")
log = logging.getLogger(__name__)

# S3 error codes that mean "try again later" even though they arrive as S3 error documents.
RETRYABLE_S3_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure."""

    attempts: int = 5
    base_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be >= 0 and multiplier >= 1")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The pause before each retry (``attempts - 1`` values)."""
        rng = rng or random.Random()
        for retry in range(self.attempts - 1):
            ceiling = min(self.max_delay, self.base_delay * self.multiplier**retry)
            yield rng.uniform(0.0, ceiling) if self.jitter else ceiling


NO_RETRY = RetryPolicy(attempts=1)


def is_transient(error: BaseException) -> bool:
    """True when ``error`` is a connection problem, a 5xx answer or a torn read."""
    if isinstance(error, TornReadError):
        return True
    if isinstance(error, S3Error):
        status = getattr(error.response, "status", 0) or 0
        return status >= 500 or error.code in RETRYABLE_S3_CODES
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, InvalidResponseError):
        return str(error).startswith("non-XML response from server; Response code: 5")
    return isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def call_with_retry(
    operation: Callable[[], T],
    policy: RetryPolicy,
    *,
    description: str = "object store call",
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``operation``; on a transient error wait and run it again, up to ``policy.attempts``."""
    delays = policy.delays(rng)
    while True:
        try:
            return operation()
        except Exception as error:
            if not is_transient(error):
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            log.warning("%s failed (%s); retrying in %.2f s", description, error, delay)
            sleep(delay)
