"""The ``mrdiff`` command line.

Each group of commands lives in ``services/commands/``; this module only assembles them and
turns :class:`~services.recon.errors.InputError` into exit code 2 with a one-line message.
"""

from __future__ import annotations

import sys

import typer

from services.commands import register_all
from services.recon.errors import InputError

app = typer.Typer(
    name="mrdiff",
    help="MRI reconstruction with a diffusion prior. Research use only, not for diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_all(app)


def main() -> None:
    """Entry point that reports bad input as one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except InputError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
