"""Which model weights a job uses, named by sha256, without loading any network.

The digests go into the job's processing key (new weights reprocess), its record and its
``report.json``. The ``<weights>.sha256`` sidecar written by the training export is trusted when
it is at least as new as the weights; otherwise the file is hashed (once per file version).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from pipelines.options import JobOptions
from services.recon.errors import InputError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "services" / "recon" / "weights"
DEFAULT_PRIOR = WEIGHTS_DIR / "prior.pt"
DEFAULT_CLASSIFIER = WEIGHTS_DIR / "classifier.pt"


def prior_path(configured: Path | None = None) -> Path:
    """Weights of the diffusion prior: the configured file, else the shipped one."""
    return Path(configured) if configured is not None else DEFAULT_PRIOR


def weights_sha256(path: Path) -> str:
    """Hex sha256 of a weights file (its fresh ``.sha256`` sidecar if there is one)."""
    try:
        stat = path.stat()
    except OSError:
        raise InputError(f"model weights not found at {path}") from None
    sidecar = path.with_name(path.name + ".sha256")
    try:
        sidecar_mtime_ns: int | None = sidecar.stat().st_mtime_ns
    except OSError:
        sidecar_mtime_ns = None
    return _digest(path.resolve(), stat.st_mtime_ns, stat.st_size, sidecar_mtime_ns)


@lru_cache(maxsize=16)
def _digest(path: Path, mtime_ns: int, size: int, sidecar_mtime_ns: int | None) -> str:
    if sidecar_mtime_ns is not None and sidecar_mtime_ns >= mtime_ns:
        words = path.with_name(path.name + ".sha256").read_text().split()
        if words and len(words[0]) == 64:
            return words[0].lower()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def anomaly_unavailable_reason() -> str | None:
    """Why anomaly maps cannot be computed in this build, or None when they can."""
    if not DEFAULT_CLASSIFIER.exists():
        return f"anomaly maps are not available: no classifier weights at {DEFAULT_CLASSIFIER}"
    return None


def require_models(options: JobOptions, configured_prior: Path | None = None) -> dict[str, str]:
    """Role -> sha256 of every model ``options`` needs; :class:`InputError` if one is missing."""
    digests: dict[str, str] = {}
    if options.reconstruct and options.method == "diffusion":
        path = prior_path(configured_prior)
        if not path.exists():
            raise InputError(
                f"the diffusion prior's weights are not installed ({path}); choose method "
                "zero-filled, cs-l1 or cs-tv, or set MRDIFF_PRIOR_PATH"
            )
        digests["prior"] = weights_sha256(path)
    if options.anomaly:
        reason = anomaly_unavailable_reason()
        if reason is not None:
            raise InputError(reason)
        digests["classifier"] = weights_sha256(DEFAULT_CLASSIFIER)
        # Anomaly maps run the prior too (DDIM encode/decode).
        digests.setdefault("prior", weights_sha256(prior_path(configured_prior)))
    return digests
