"""Which model weights the workers load, identified by the sha256 of the files' bytes.

The API never imports torch or loads a network: it hashes the same files the workers load
(the shipped ``services/recon/weights/*.pt``, or the files the settings point at instead), and
caches each hash until the file's size or modification time changes.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import NamedTuple

import services.recon
from services.settings import Settings

SHIPPED_WEIGHTS_DIR = Path(services.recon.__file__).resolve().parent / "weights"
CHUNK = 1024 * 1024


class ModelFile(NamedTuple):
    """One weights file: the role it plays (``prior``, ``classifier``), its path and hash."""

    name: str
    path: Path
    sha256: str
    size_bytes: int


ROLES = ("prior", "classifier")
"""The weights the workers load. Other files beside them (say, a training run's newer weights
kept there for comparison) are not served."""


def configured_weights(
    settings: Settings, weights_dir: Path = SHIPPED_WEIGHTS_DIR
) -> dict[str, Path]:
    """Role -> weights file: ``<role>.pt`` in the shipped folder, or the path the settings set."""
    files = {}
    for role in ROLES:
        override = getattr(settings, f"{role}_path", None)
        files[role] = Path(override) if override is not None else weights_dir / f"{role}.pt"
    return files


class ModelCatalog:
    """Hashes of the weights files, computed once per file version."""

    def __init__(self, settings: Settings, weights_dir: Path = SHIPPED_WEIGHTS_DIR) -> None:
        self.settings = settings
        self.weights_dir = weights_dir
        self._lock = threading.Lock()
        self._hashes: dict[tuple[Path, int, int], str] = {}

    def models(self) -> list[ModelFile]:
        """Every configured weights file that exists, by role."""
        found = []
        for name, path in configured_weights(self.settings, self.weights_dir).items():
            if path.is_file():
                found.append(self._describe(name, path))
        return found

    def _describe(self, name: str, path: Path) -> ModelFile:
        stat = path.stat()
        stamp = (path.resolve(), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            digest = self._hashes.get(stamp)
        if digest is None:
            hasher = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    hasher.update(chunk)
            digest = hasher.hexdigest()
            with self._lock:
                self._hashes[stamp] = digest
        return ModelFile(name=name, path=path, sha256=digest, size_bytes=stat.st_size)
