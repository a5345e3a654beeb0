"""Content hashes and model digests behind a job's processing key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipelines import models
from pipelines.jobs import combined_content_sha256
from pipelines.options import JobOptions
from services.recon.errors import InputError

A, B = "a" * 64, "b" * 64


def test_combined_hash_ignores_names_and_order() -> None:
    assert combined_content_sha256({"x.h5": A}) == A
    assert combined_content_sha256({"1.dcm": A, "2.dcm": B}) == combined_content_sha256(
        {"z.dcm": B, "y.dcm": A}
    )
    assert combined_content_sha256({"1": A, "2": B}) != combined_content_sha256({"1": A, "2": A})
    with pytest.raises(InputError):
        combined_content_sha256({})


def test_weights_digest_uses_a_fresh_sidecar_else_the_file(tmp_path: Path) -> None:
    weights = tmp_path / "prior.pt"
    weights.write_bytes(b"weights")
    expected = hashlib.sha256(b"weights").hexdigest()
    assert models.weights_sha256(weights) == expected
    sidecar = tmp_path / "prior.pt.sha256"
    sidecar.write_text(f"{'c' * 64}  prior.pt\n")
    stat = weights.stat()
    os.utime(sidecar, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert models.weights_sha256(weights) == "c" * 64
    with pytest.raises(InputError, match="not found"):
        models.weights_sha256(tmp_path / "missing.pt")


def test_baselines_need_no_model_and_missing_prior_is_named(tmp_path: Path) -> None:
    assert models.require_models(JobOptions(method="zero-filled")) == {}
    with pytest.raises(InputError, match="prior's weights are not installed"):
        models.require_models(JobOptions(method="diffusion"), tmp_path / "none.pt")
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"w")
    assert models.require_models(JobOptions(method="diffusion"), weights) == {
        "prior": hashlib.sha256(b"w").hexdigest()
    }


def test_anomaly_without_classifier_weights_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert models.anomaly_unavailable_reason() is None  # the build ships the classifier
    monkeypatch.setattr(models, "DEFAULT_CLASSIFIER", tmp_path / "none.pt")
    with pytest.raises(InputError, match="anomaly maps are not available: no classifier"):
        models.require_models(JobOptions(method="zero-filled", anomaly=True))
