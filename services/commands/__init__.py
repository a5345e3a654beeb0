"""Command groups of the ``mrdiff`` CLI, one module per group."""

from __future__ import annotations

import typer


def register_all(app: typer.Typer) -> None:
    """Attach every command group to the top-level app."""
