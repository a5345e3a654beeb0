"""The API's model catalog lists the weights the workers load, by role, and nothing else."""

from __future__ import annotations

import hashlib
from pathlib import Path

from services.api.model_catalog import ModelCatalog
from services.settings import load_settings


def test_catalog_lists_roles_only_and_follows_overrides(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("prior", "classifier", "prior_latest"):
        (weights / f"{name}.pt").write_bytes(name.encode())
    catalog = ModelCatalog(load_settings(data_dir=tmp_path), weights_dir=weights)
    found = {model.name: model.sha256 for model in catalog.models()}
    assert found == {
        "prior": hashlib.sha256(b"prior").hexdigest(),
        "classifier": hashlib.sha256(b"classifier").hexdigest(),
    }
    site = tmp_path / "site_prior.pt"
    site.write_bytes(b"site")
    (weights / "classifier.pt").unlink()
    catalog = ModelCatalog(load_settings(data_dir=tmp_path, prior_path=site), weights_dir=weights)
    assert [(m.name, m.path) for m in catalog.models()] == [("prior", site)]
