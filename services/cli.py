"""The ``mrdiff`` command line.

Each group of commands lives in ``services/commands/``; this module only assembles them and
turns bad input into exit code 2 with a one-line message instead of a traceback.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from services.commands import register_all
from services.recon.errors import InputError

try:  # typer >= 0.23 parses with its own copy of click, whose errors are not click's
    from typer._click.exceptions import ClickException as TyperClickException
except ImportError:  # older typer parses with click itself
    TyperClickException = click.ClickException  # type: ignore[misc,assignment]

app = typer.Typer(
    name="mrdiff",
    help="MRI reconstruction with a diffusion prior. Research use only, not for diagnosis.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_all(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors and bad input exit 2 with one line, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="mrdiff", standalone_mode=False)
    except (click.ClickException, TyperClickException) as error:
        error.show()
        sys.exit(error.exit_code)
    except (InputError, OSError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
