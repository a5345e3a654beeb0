"""Command groups of the ``mrdiff`` CLI, one module per group."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ("recon", "bench", "data", "train", "anomaly", "stack", "api_keys")


def register_all(app: typer.Typer) -> None:
    """Attach every command group to the top-level app."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"services.commands.{name}").register(app)
