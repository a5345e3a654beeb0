"""`mrdiff api-key ...`: create, list and revoke the API keys that map callers to tenants."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.api.auth import ApiKeyStore
from services.settings import get_settings

api_key_app = typer.Typer(
    help="API keys (stored hashed) that map HTTP callers to tenants.", no_args_is_help=True
)


def key_store() -> ApiKeyStore:
    """The key store the API of these settings reads."""
    settings = get_settings()
    return ApiKeyStore(settings.api_keys_path, settings.api_pepper.get_secret_value())


@api_key_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="tenant the key acts for (A-Z a-z 0-9 . _ -)")],
    label: Annotated[str | None, typer.Option(help="a note on who holds the key")] = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    created = key_store().create(tenant, label)
    typer.echo(created.secret)
    typer.echo(
        f"key id {created.record.key_id} for tenant {tenant!r}: store the key now, "
        "it cannot be shown again",
        err=True,
    )


@api_key_app.command("list")
def list_keys() -> None:
    """List key ids, tenants and labels (never the keys)."""
    table = Table(title="mrdiff API keys")
    for column in ("key id", "tenant", "label", "created"):
        table.add_column(column)
    for record in key_store().records():
        table.add_row(record.key_id, record.tenant, record.label or "", record.created_at)
    Console().print(table)


@api_key_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="id shown by `mrdiff api-key list`")],
) -> None:
    """Revoke a key; the API refuses it from the next request on."""
    record = key_store().revoke(key_id)
    typer.echo(f"revoked {record.key_id} (tenant {record.tenant!r})")


def register(app: typer.Typer) -> None:
    """Add the ``api-key`` group."""
    app.add_typer(api_key_app, name="api-key")
