"""Errors that name what is wrong with an input.

Every reader, operator and app in ``services.recon`` raises :class:`InputError` for input it
cannot use; the CLI turns it into exit code 2 with one line, the API into a 4xx JSON body.
"""


class InputError(ValueError):
    """Input data that mrdiff cannot use; the message names the problem in one line."""
