"""Atomic output files: write to a temp file in the same folder, then ``os.replace``.

A failed write never leaves a partial file, and an existing output is never replaced unless the
caller asks for it (design.md: "An existing output is never overwritten without --overwrite").
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services.recon.errors import InputError


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Raise :class:`InputError` naming ``path`` when it exists and ``overwrite`` is false."""
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output already exists; pass overwrite=True (--overwrite)")
    if path.is_dir():
        raise InputError(f"{path}: output path is a directory")


def current_umask() -> int:
    """The process umask (read by setting and restoring it), so outputs get normal modes."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success move it into place, on failure delete it.

    The temp name keeps the final suffix (e.g. ``.nii.gz``) so writers that pick a format from
    the file name still work.
    """
    target = Path(path)
    refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        refuse_existing(target, overwrite)
        os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
