"""Content hashes and processing keys.

A processing key names "this input, these options, this model, this tenant": the same raw
object reconstructed with the same options by the same model weights is processed once, and
any later request finds the earlier job through ``<tenant>/index/<processing_key>.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

from services.recon.errors import InputError
from services.storage.keys import validate_tenant

CHUNK_SIZE = 1024 * 1024
PROCESSING_KEY_VERSION = 1


def sha256_stream(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of everything left in a binary stream, read in chunks."""
    digest = hashlib.sha256()
    while chunk := stream.read(chunk_size):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    """Hex sha256 of a sequence of byte chunks."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready builtins with a single spelling for equal values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"option value {value!r} is not a finite number")
        return int(value) if value.is_integer() else value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    raise InputError(f"option value {value!r} of type {type(value).__name__} is not JSON data")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys; equal data gives equal text (``1.0`` and ``1`` too)."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def processing_key(
    content_sha256: str,
    options: Mapping[str, Any] | Any,
    model_sha256: str | Mapping[str, str],
    tenant: str,
) -> str:
    """sha256 naming one unit of work: input content, options, model weights and tenant.

    ``options`` is a mapping or a dataclass (``ReconOptions``); ``model_sha256`` is one digest
    or the ``name -> sha256`` mapping of ``ReconEngine.model_versions()``. Key order and
    ``1`` vs ``1.0`` do not change the key; any real difference does.
    """
    content = content_sha256.lower()
    if not _is_sha256(content):
        raise InputError(f"content_sha256 {content_sha256!r} is not a sha256 hex digest")
    models = (
        {"model": model_sha256.lower()}
        if isinstance(model_sha256, str)
        else {name: digest.lower() for name, digest in model_sha256.items()}
    )
    if not all(_is_sha256(digest) for digest in models.values()):
        raise InputError(f"model sha256 {model_sha256!r} is not sha256 hex")
    document = {
        "version": PROCESSING_KEY_VERSION,
        "tenant": validate_tenant(tenant),
        "content_sha256": content,
        "options": options,
        "models": models,
    }
    return hashlib.sha256(canonical_json(document).encode("ascii")).hexdigest()
