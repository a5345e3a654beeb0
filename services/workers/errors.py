"""Errors of the worker pool."""

from __future__ import annotations


class WorkerError(RuntimeError):
    """The pool could not get a slice computed (actors kept dying or could not start)."""
