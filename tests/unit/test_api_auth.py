"""API keys: stored only as peppered hashes, mapped to tenants, revocable, seen across processes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.api.auth import KEY_PREFIX, ApiKeyStore, hash_key
from services.recon.errors import InputError

PEPPER = "unit-test-pepper-0123456789"


def test_created_key_authenticates_to_its_tenant_and_is_never_stored(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json", PEPPER)
    created = store.create("acme", label="viewer at site A")
    assert created.secret.startswith(KEY_PREFIX) and len(created.secret) > 40
    record = store.authenticate(created.secret)
    assert record is not None and record.tenant == "acme" and record.label == "viewer at site A"
    text = (tmp_path / "keys.json").read_text()
    assert created.secret not in text
    assert hash_key(created.secret, PEPPER) in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


def test_wrong_keys_and_wrong_pepper_are_refused(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json", PEPPER)
    created = store.create("acme")
    assert store.authenticate(created.secret + "x") is None
    assert store.authenticate("not-a-key") is None
    assert store.authenticate("") is None
    other_pepper = ApiKeyStore(tmp_path / "keys.json", "another-pepper-0123456789")
    assert other_pepper.authenticate(created.secret) is None


def test_revocation_and_creation_by_another_process_take_effect_without_restart(
    tmp_path: Path,
) -> None:
    api_view = ApiKeyStore(tmp_path / "keys.json", PEPPER)
    assert api_view.records() == []
    cli_view = ApiKeyStore(tmp_path / "keys.json", PEPPER)
    first = cli_view.create("acme")
    second = cli_view.create("beta")
    assert api_view.authenticate(first.secret) is not None
    assert {r.tenant for r in api_view.records()} == {"acme", "beta"}
    cli_view.revoke(first.record.key_id)
    assert api_view.authenticate(first.secret) is None
    assert api_view.authenticate(second.secret) is not None
    with pytest.raises(InputError, match="no API key"):
        cli_view.revoke(first.record.key_id)


@pytest.mark.parametrize("tenant", ["", "a/b", "_hidden", "x" * 65, "tenant with space"])
def test_bad_tenant_names_are_refused(tmp_path: Path, tenant: str) -> None:
    with pytest.raises(InputError, match="tenant"):
        ApiKeyStore(tmp_path / "keys.json", PEPPER).create(tenant)


def test_damaged_key_file_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a valid API key file"):
        ApiKeyStore(path, PEPPER).records()
    path.write_text(json.dumps({"version": 99, "keys": []}))
    with pytest.raises(InputError, match="version"):
        ApiKeyStore(path, PEPPER).records()


def test_cli_prints_the_key_once_and_lists_only_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.commands.api_keys import api_key_app
    from services.settings import get_settings

    monkeypatch.setenv("MRDIFF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MRDIFF_API_PEPPER", PEPPER)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        created = runner.invoke(api_key_app, ["create", "--tenant", "acme"])
        assert created.exit_code == 0, created.output
        secret = created.stdout.strip().splitlines()[0]
        assert secret.startswith(KEY_PREFIX)
        store = ApiKeyStore(tmp_path / "api_keys.json", PEPPER)
        record = store.authenticate(secret)
        assert record is not None and record.tenant == "acme"
        listed = runner.invoke(api_key_app, ["list"])
        assert listed.exit_code == 0 and record.key_id in listed.stdout
        assert secret not in listed.stdout
        revoked = runner.invoke(api_key_app, ["revoke", record.key_id])
        assert revoked.exit_code == 0 and store.authenticate(secret) is None
    finally:
        get_settings.cache_clear()
