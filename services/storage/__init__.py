"""Object storage: the only code that talks S3 (through the ``minio`` client).

Start with :class:`Storage` (``Storage.from_settings(settings)``); the key layout is documented
in :mod:`services.storage.keys`, job records in :mod:`services.storage.jobs`.
"""

from services.storage.errors import (
    ConflictError,
    InvalidTransitionError,
    LockTimeoutError,
    ObjectNotFoundError,
    PublishConflictError,
    StorageError,
)
from services.storage.hashing import processing_key, sha256_stream
from services.storage.inbox import InboxListing, QuarantinedObject, RawObject
from services.storage.job_queries import JobCounts, JobPage
from services.storage.jobs import CreatedJob, JobRecord, JobState, JobStore
from services.storage.keys import RawKey, new_job_id, parse_raw_key
from services.storage.objects import ObjectInfo, ObjectStore
from services.storage.results import ResultObject, StagedResults
from services.storage.retry import RetryPolicy
from services.storage.storage import Storage

__all__ = [
    "ConflictError",
    "CreatedJob",
    "InboxListing",
    "InvalidTransitionError",
    "JobCounts",
    "JobPage",
    "JobRecord",
    "JobState",
    "JobStore",
    "LockTimeoutError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "PublishConflictError",
    "QuarantinedObject",
    "RawKey",
    "RawObject",
    "ResultObject",
    "RetryPolicy",
    "StagedResults",
    "Storage",
    "StorageError",
    "new_job_id",
    "parse_raw_key",
    "processing_key",
    "sha256_stream",
]
