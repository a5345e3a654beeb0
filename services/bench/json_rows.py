"""``--json FILE`` of the bench commands: its folder made before the run, the rows written after.

A benchmark runs for minutes; a JSON path that cannot be written must fail at the start, with a
message naming it, not after the table has been computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from services.recon.errors import InputError

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="also write rows as JSON (its folder is created)")
]


def prepare_json_target(path: Path | None) -> None:
    """Create ``path``'s folder now, or raise :class:`InputError` naming what is wrong."""
    if path is None:
        return
    if path.is_dir():
        raise InputError(f"--json {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--json {path}: cannot create its folder ({error.strerror})") from None


def write_json_rows(path: Path | None, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` as a JSON list (nothing when ``path`` is None)."""
    if path is not None:
        path.write_text(json.dumps(list(rows), indent=2) + "\n")
