"""Classical baselines: zero-filled and compressed sensing (sigpy), one interface for all.

Single coil: ``kspace`` (H, W), ``maps=None``. Multi-coil: ``kspace`` (C, H, W) with ``maps``
(C, H, W) normalised to unit sum of squares; when maps are not given they are estimated with
ESPIRiT from the k-space centre. Every baseline returns a complex64 (H, W) image in the units of
the zero-filled image, ``A^H y`` (single coil: ``F^H M y``; multi-coil: the SENSE combination of
the zero-filled coil images, which has the root-sum-of-squares scale).

Compressed sensing (Lustig, Donoho and Pauly, "Sparse MRI", MRM 2007) solves
``min_x 1/2 ||M F S x - y||^2 + lam_abs R(x)`` with ``R`` the l1 norm of db4 wavelet
coefficients (:func:`cs_l1_wavelet`) or total variation (:func:`cs_tv`; Block, Uecker and
Frahm, MRM 2007), through ``sigpy.mri.app.L1WaveletRecon`` / ``TotalVariationRecon`` with
``weights = mask``. ``lam`` is RELATIVE: ``lam_abs = lam * max|zero-filled|``. The objective is
then invariant to the data scale (scaling ``y`` by ``a`` scales the solution by ``a``), so one
log grid of ``lam`` (:data:`LAMBDA_GRID`) is meaningful across scanners and normalisations.

Step sizes are set from exact bounds instead of sigpy's power iteration, which starts from an
unseeded random vector: ``||M F S||^2 <= max_pixel sum_c |S_c|^2`` and, for the circular finite
differences of TV, ``||G||^2 <= 4 per axis``. Results are therefore deterministic. TV runs
primal-dual hybrid gradient (Chambolle and Pock, JMIV 2011) with ``tau * sigma * L^2 = 1`` and
the primal/dual ratio ``tau / sigma = r^2``, ``r = clip(0.3 / sqrt(lam), 1, 15)``, chosen from
convergence runs on phantoms (objective within a few percent of a 3000-iteration solution after
100 iterations); sigpy's default balance (``sigma = 1``) is far slower to converge at small lam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from services.recon.coils import espirit_maps
from services.recon.errors import InputError
from services.recon.physics import sense_adjoint, single_coil_adjoint

BaselineFunction = Callable[..., np.ndarray]

LAMBDA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_LAMBDA = {"cs-l1": 3e-3, "cs-tv": 1e-2}
DEFAULT_MAX_ITER = 100
_FINITE_DIFFERENCE_NORM_BOUND = 8.0  # ||G||^2 of 2-D circular finite differences: 4 per axis
_TV_MAX_STEP_RATIO = 15.0


def _validated(
    kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Check shapes/dtypes and return complex64 k-space, bool mask (H, W), maps (or None)."""
    kspace = np.asarray(kspace)
    mask = np.asarray(mask)
    if not np.iscomplexobj(kspace):
        raise InputError(f"k-space must be complex, got dtype {kspace.dtype}")
    if kspace.ndim not in (2, 3):
        raise InputError(f"k-space must be (H, W) or (C, H, W), got shape {kspace.shape}")
    if not np.isfinite(kspace).all():
        raise InputError("k-space contains NaN or infinite values")
    if mask.shape != kspace.shape[-2:]:
        raise InputError(f"mask shape {mask.shape} does not match k-space {kspace.shape[-2:]}")
    if not np.isin(mask, (0, 1)).all():
        raise InputError("mask must be boolean or 0/1")
    mask = mask.astype(bool)
    if not mask.any():
        raise InputError("mask samples nothing")
    if kspace.ndim == 2 and maps is not None:
        raise InputError("single-coil k-space (H, W) takes no coil maps")
    if maps is not None:
        maps = np.asarray(maps)
        if maps.shape != kspace.shape:
            raise InputError(f"coil maps shape {maps.shape} does not match k-space {kspace.shape}")
        if not np.isfinite(maps).all():
            raise InputError("coil maps contain NaN or infinite values")
        maps = maps.astype(np.complex64)
    elif kspace.ndim == 3:
        maps = espirit_maps(kspace * mask)
    return (kspace * mask).astype(np.complex64), mask, maps


def _zero_filled(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    if maps is None:
        return single_coil_adjoint(kspace, mask).astype(np.complex64)
    return sense_adjoint(kspace, maps, mask).astype(np.complex64)


def zero_filled(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
    """Zero-filled reconstruction ``A^H y``, complex64 (H, W).

    Multi-coil: SENSE-combined adjoint with (given or ESPIRiT) maps, so it has the RSS scale.
    """
    kspace, mask, maps = _validated(kspace, mask, maps)
    return _zero_filled(kspace, mask, maps)


class _SigpyProblem(NamedTuple):
    """A CS problem in sigpy's terms: coil k-space, coil maps, absolute lambda, sampling weights.

    sigpy always works with coils: single coil is one coil with a map of ones.
    """

    kspace: np.ndarray
    maps: np.ndarray
    lam: float
    weights: np.ndarray


def _sigpy_problem(
    kspace: np.ndarray, mask: np.ndarray, lam: float, maps: np.ndarray | None, max_iter: int
) -> _SigpyProblem:
    """Validate the inputs of a CS baseline and express them as a :class:`_SigpyProblem`."""
    kspace, mask, maps = _validated(kspace, mask, maps)
    if max_iter < 1:
        raise InputError(f"max_iter must be >= 1, got {max_iter}")
    if not (np.isfinite(lam) and lam >= 0):
        raise InputError(f"lam must be a finite non-negative number, got {lam}")
    absolute = float(lam) * float(np.abs(_zero_filled(kspace, mask, maps)).max())
    if maps is None:
        kspace, maps = kspace[None], np.ones((1, *kspace.shape), dtype=np.complex64)
    return _SigpyProblem(kspace, maps, absolute, mask.astype(np.float32))


def _solve(
    app_class: Callable[..., Any], problem: _SigpyProblem, max_iter: int, **step_sizes: float
) -> np.ndarray:
    """Run the sigpy MRI app ``app_class`` on ``problem`` with the given step sizes and bring
    its image to the host as complex64."""
    import sigpy

    app = app_class(
        problem.kspace,
        problem.maps,
        problem.lam,
        weights=problem.weights,
        max_iter=max_iter,
        show_pbar=False,
        **step_sizes,
    )
    return np.asarray(sigpy.to_device(app.run(), sigpy.cpu_device), dtype=np.complex64)


def _sense_norm_bound(coil_maps: np.ndarray) -> float:
    """Upper bound of ``||M F S||^2``: the largest per-pixel sum of squares of the maps."""
    bound = float(np.max(np.sum(np.abs(coil_maps) ** 2, axis=0)))
    if bound == 0.0:
        raise InputError("coil maps are zero everywhere")
    return bound


def _tv_step_ratio(lam: float) -> float:
    """Square root of the PDHG primal/dual step ratio ``tau / sigma`` for relative ``lam``."""
    if lam <= 0:
        return _TV_MAX_STEP_RATIO
    return float(np.clip(0.3 / np.sqrt(lam), 1.0, _TV_MAX_STEP_RATIO))


def cs_l1_wavelet(
    kspace: np.ndarray,
    mask: np.ndarray,
    lam: float,
    maps: np.ndarray | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> np.ndarray:
    """l1-wavelet (db4) compressed sensing via sigpy; ``lam`` relative to max|zero-filled|."""
    import sigpy.mri.app

    problem = _sigpy_problem(kspace, mask, lam, maps, max_iter)
    alpha = 1.0 / _sense_norm_bound(problem.maps)
    return _solve(sigpy.mri.app.L1WaveletRecon, problem, max_iter, alpha=alpha)


def cs_tv(
    kspace: np.ndarray,
    mask: np.ndarray,
    lam: float,
    maps: np.ndarray | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> np.ndarray:
    """Total-variation compressed sensing via sigpy; ``lam`` relative to max|zero-filled|."""
    import sigpy.mri.app

    problem = _sigpy_problem(kspace, mask, lam, maps, max_iter)
    norm = float(np.sqrt(_sense_norm_bound(problem.maps) + _FINITE_DIFFERENCE_NORM_BOUND))
    ratio = _tv_step_ratio(lam)
    return _solve(
        sigpy.mri.app.TotalVariationRecon,
        problem,
        max_iter,
        tau=ratio / norm,
        sigma=1.0 / (ratio * norm),
    )


BASELINES: dict[str, BaselineFunction] = {
    "zero-filled": zero_filled,
    "cs-l1": cs_l1_wavelet,
    "cs-tv": cs_tv,
}


def run_baseline(
    name: str,
    kspace: np.ndarray,
    mask: np.ndarray,
    maps: np.ndarray | None = None,
    lam: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> np.ndarray:
    """Run baseline ``name`` with one call shape for all; ``lam=None`` uses :data:`DEFAULT_LAMBDA`.

    ``lam`` and ``max_iter`` are ignored by "zero-filled", which has no parameters.
    """
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    if name == "zero-filled":
        return zero_filled(kspace, mask, maps)
    chosen = DEFAULT_LAMBDA[name] if lam is None else lam
    return BASELINES[name](kspace, mask, chosen, maps=maps, max_iter=max_iter)
