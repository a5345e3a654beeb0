"""Errors that name what is wrong with an input.

Every reader, operator and app in ``services.recon`` raises :class:`InputError` for input it
cannot use; the CLI turns it into exit code 2 with one line, the API into a 4xx JSON body.
"""


class InputError(ValueError):
    """Input data that mrdiff cannot use; the message names the problem in one line."""


def check_probability(name: str, value: float) -> None:
    """:class:`InputError` naming ``name`` unless ``value`` is a probability (in [0, 1])."""
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {value}")
