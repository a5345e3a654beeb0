"""Content hashes and processing keys."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pytest

from services.recon.errors import InputError
from services.storage.hashing import canonical_json, processing_key, sha256_stream

CONTENT = hashlib.sha256(b"volume").hexdigest()
MODEL = "ab" * 32


@dataclass(frozen=True)
class Options:
    method: str = "diffusion"
    samples: int = 8
    lam: float | None = None


def test_streamed_sha256_matches_hashlib() -> None:
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)
    assert sha256_stream(io.BytesIO(data), chunk_size=65536) == hashlib.sha256(data).hexdigest()


def test_canonical_json_ignores_order_and_integral_floats() -> None:
    assert canonical_json({"b": 1.0, "a": [np.int64(2), (3,)]}) == canonical_json(
        {"a": [2, [3]], "b": 1}
    )
    with pytest.raises(InputError):
        canonical_json({"x": float("nan")})
    with pytest.raises(InputError):
        canonical_json({"x": object()})


def test_processing_key_is_stable_and_sensitive_to_every_part() -> None:
    base = processing_key(CONTENT, {"method": "diffusion", "samples": 8}, MODEL, "acme")
    assert base == processing_key(CONTENT, {"samples": 8.0, "method": "diffusion"}, MODEL, "acme")
    assert len(base) == 64
    variants = {
        processing_key(
            hashlib.sha256(b"other").hexdigest(),
            {"method": "diffusion", "samples": 8},
            MODEL,
            "acme",
        ),
        processing_key(CONTENT, {"method": "diffusion", "samples": 4}, MODEL, "acme"),
        processing_key(CONTENT, {"method": "diffusion", "samples": 8}, "cd" * 32, "acme"),
        processing_key(CONTENT, {"method": "diffusion", "samples": 8}, MODEL, "other"),
    }
    assert base not in variants and len(variants) == 4


def test_processing_key_takes_dataclass_options_and_model_maps() -> None:
    from_dataclass = processing_key(CONTENT, Options(), {"prior": MODEL}, "acme")
    from_mapping = processing_key(
        CONTENT, {"method": "diffusion", "samples": 8, "lam": None}, {"prior": MODEL}, "acme"
    )
    assert from_dataclass == from_mapping
    assert from_dataclass != processing_key(
        CONTENT, Options(), {"prior": MODEL, "c": MODEL}, "acme"
    )


@pytest.mark.parametrize(
    ("content", "model", "tenant"),
    [("abc", MODEL, "acme"), (CONTENT, "not-a-digest", "acme"), (CONTENT, MODEL, "_bad")],
)
def test_processing_key_rejects_malformed_parts(content: str, model: str, tenant: str) -> None:
    with pytest.raises(InputError):
        processing_key(content, {}, model, tenant)
