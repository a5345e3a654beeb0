"""Synthetic tumour-like lesions with exact ground-truth masks, for anomaly detection.

The classifier of Wolleb et al. ("Diffusion Models for Medical Anomaly Detection", MICCAI 2022)
needs healthy and diseased images; no labelled tumour data ships with any package here, so
lesions are painted into healthy slices. Each lesion is a soft-edged region with an irregular
outline, its own intensity (hyper- or hypo-intense relative to the brain's median) and texture,
optionally wrapped in an oedema-like ring that scales the tissue underneath. Its core runs from a
few pixels across to a fifth of the brain (about a quarter with its ring). The ground-truth mask
is exact: the pixels whose value the lesion (core or ring) sets with a weight of at least 1/2.

Two families keep the score honest. :data:`TRAINING_FAMILY` (noise-perturbed ellipses, moderate
contrasts) is all the classifier ever sees and is used, with validation slices, to choose
defaults. :data:`HELD_OUT_FAMILY` draws lobulated outlines, ring-enhancing lesions with a
necrotic core and contrasts outside the training ranges; it only ever meets the evaluation
split, so a detector cannot score by remembering the generator.

Everything is a function of ``seed``; images may be real magnitudes ``(H, W)``, complex
``(H, W)`` or real/imaginary ``(2, H, W)`` (the phase is kept, the magnitude is changed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from services.recon.errors import InputError

REFERENCE_PIXELS = 128 * 128
"""Lesion sizes (pixel areas) are defined at 128x128 and scaled with the image area."""
SIZE_BINS = (("small", 0.0, 50.0), ("medium", 50.0, 300.0), ("large", 300.0, math.inf))
"""Size categories of issue 4 at 128x128: small < 50 pixels, medium 50-300, large > 300."""
MIN_BRAIN_PIXELS = 400
"""Below this (at 128x128) a slice has too little brain to hold a lesion."""

Range = tuple[float, float]


@dataclass(frozen=True)
class LesionFamily:
    """Ranges that lesion parameters are drawn from; two families never share a contrast range.

    Contrasts are factors of the brain's median magnitude; oedema factors multiply the tissue
    under the ring (``1 + strength`` for hyper-, ``1 - strength`` for hypo-intense lesions).
    """

    name: str
    outlines: tuple[str, ...]
    hyper_contrast: Range
    hypo_contrast: Range
    hyper_probability: float
    roughness: Range
    texture_strength: Range
    texture_correlation_px: Range
    oedema_probability: float
    oedema_width: Range
    oedema_strength: Range
    necrotic_probability: float
    edge_px: Range
    min_area_px: float = 8.0
    max_brain_fraction: float = 0.2


TRAINING_FAMILY = LesionFamily(
    name="training",
    outlines=("perturbed-ellipse",),
    hyper_contrast=(1.4, 2.0),
    hypo_contrast=(0.25, 0.6),
    hyper_probability=0.5,
    roughness=(0.05, 0.3),
    texture_strength=(0.0, 0.15),
    texture_correlation_px=(0.7, 1.5),
    oedema_probability=0.5,
    oedema_width=(0.15, 0.45),
    oedema_strength=(0.15, 0.3),
    necrotic_probability=0.0,
    edge_px=(0.6, 1.2),
)
HELD_OUT_FAMILY = LesionFamily(
    name="held-out",
    outlines=("lobulated", "multi-focal"),
    hyper_contrast=(2.0, 2.6),
    hypo_contrast=(0.08, 0.25),
    hyper_probability=0.5,
    roughness=(0.15, 0.35),
    texture_strength=(0.15, 0.3),
    texture_correlation_px=(1.5, 3.0),
    oedema_probability=0.5,
    oedema_width=(0.45, 0.8),
    oedema_strength=(0.3, 0.45),
    necrotic_probability=0.4,
    edge_px=(1.2, 2.0),
)
FAMILIES = {family.name: family for family in (TRAINING_FAMILY, HELD_OUT_FAMILY)}


@dataclass(frozen=True)
class LesionParams:
    """Every random choice behind one lesion (stored as provenance)."""

    family: str
    detail_seed: int
    outline: str
    center: tuple[float, float]
    area_px: float
    aspect: float
    angle: float
    roughness: float
    hyperintense: bool
    contrast: float
    texture_strength: float
    texture_correlation_px: float
    oedema_width: float
    oedema_strength: float
    necrotic_core: bool
    edge_px: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LesionedSlice(NamedTuple):
    """A slice with one inserted lesion, its exact mask and the parameters drawn."""

    image: np.ndarray
    lesion_mask: np.ndarray
    params: LesionParams


def magnitude_of(image: np.ndarray) -> np.ndarray:
    """Magnitude ``(H, W)`` of a real or complex ``(H, W)`` or a real/imag ``(2, H, W)`` image."""
    array = np.asarray(image)
    if np.iscomplexobj(array) and array.ndim == 2:
        return np.abs(array).astype(np.float64)
    if array.ndim == 2:
        return np.abs(array.astype(np.float64))
    if array.ndim == 3 and array.shape[0] == 2:
        return np.hypot(array[0].astype(np.float64), array[1].astype(np.float64))
    raise InputError(f"image must be (H, W) or real/imag (2, H, W), got shape {array.shape}")


def with_magnitude(image: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """``image`` with its magnitude replaced by ``magnitude`` and its phase kept (same dtype)."""
    array = np.asarray(image)
    old = magnitude_of(array)
    ratio = np.where(old > 1e-12, magnitude / np.maximum(old, 1e-12), 0.0)
    if array.ndim == 2 and not np.iscomplexobj(array):
        return magnitude.astype(array.dtype)
    if array.ndim == 2:
        flat = np.where(old > 1e-12, array * ratio, magnitude)
        return flat.astype(array.dtype)
    real = np.where(old > 1e-12, array[0] * ratio, magnitude)
    imag = np.where(old > 1e-12, array[1] * ratio, 0.0)
    return np.stack([real, imag]).astype(array.dtype)


def head_mask(magnitude: np.ndarray) -> np.ndarray:
    """Foreground of design.md: above 0.1 x the 99th percentile, holes filled, eroded by 2 px."""
    from services.recon.metrics import foreground_mask

    return np.asarray(foreground_mask(magnitude), dtype=bool)


def brain_region(magnitude: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Where lesions may sit: the head's main tissue, eroded past scalp and skull.

    Inside ``head``, the largest connected region of the lightly smoothed magnitude above half
    its median over the head (so a template's faint background box does not count), holes
    filled, eroded by about 6% of the image size.
    """
    if not head.any():
        return np.zeros(head.shape, dtype=bool)
    smooth = ndimage.gaussian_filter(magnitude, 1.0)
    tissue = head & (smooth > 0.5 * float(np.median(smooth[head])))
    labels, count = ndimage.label(tissue)
    if count > 1:
        sizes = ndimage.sum(tissue, labels, index=np.arange(1, count + 1))
        tissue = labels == 1 + int(np.argmax(sizes))
    tissue = ndimage.binary_fill_holes(tissue)
    margin = max(1, round(0.06 * min(head.shape)))
    return np.asarray(ndimage.distance_transform_edt(tissue) > margin, dtype=bool)


def size_category(area_px: float, shape: tuple[int, int]) -> str:
    """Size bin (small, medium, large) of a lesion of ``area_px`` pixels in a ``shape`` image."""
    area_at_reference = area_px * REFERENCE_PIXELS / float(shape[0] * shape[1])
    for name, low, high in SIZE_BINS:
        if low <= area_at_reference < high:
            return name
    raise ValueError(f"lesion area must be non-negative, got {area_px}")


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def sample_lesion_params(
    rng: np.random.Generator, family: LesionFamily, brain: np.ndarray, detail_seed: int
) -> LesionParams:
    """One lesion's parameters; core area log-uniform from a few pixels to a fifth of the brain."""
    scale = brain.size / REFERENCE_PIXELS
    brain_area = float(brain.sum())
    low = family.min_area_px * scale
    high = max(low * 1.5, family.max_brain_fraction * brain_area)
    area = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    radius = math.sqrt(area / math.pi)
    # Centres where most of the lesion fits inside the brain; the whole brain as a fallback.
    room = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere(room >= min(0.6 * radius, room.max()))
    row, col = candidates[rng.integers(len(candidates))]
    jitter = rng.uniform(-0.5, 0.5, size=2)
    hyper = bool(rng.uniform() < family.hyper_probability)
    with_oedema = bool(rng.uniform() < family.oedema_probability)
    return LesionParams(
        family=family.name,
        detail_seed=detail_seed,
        outline=str(family.outlines[rng.integers(len(family.outlines))]),
        center=(float(row + jitter[0]), float(col + jitter[1])),
        area_px=area,
        aspect=float(rng.uniform(0.55, 1.0)),
        angle=float(rng.uniform(0.0, math.pi)),
        roughness=_uniform(rng, family.roughness),
        hyperintense=hyper,
        contrast=_uniform(rng, family.hyper_contrast if hyper else family.hypo_contrast),
        texture_strength=_uniform(rng, family.texture_strength),
        texture_correlation_px=_uniform(rng, family.texture_correlation_px),
        oedema_width=_uniform(rng, family.oedema_width) if with_oedema else 0.0,
        oedema_strength=_uniform(rng, family.oedema_strength) if with_oedema else 0.0,
        necrotic_core=bool(rng.uniform() < family.necrotic_probability),
        edge_px=_uniform(rng, family.edge_px),
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma`` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), max(sigma, 0.3), mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-12)


Window = tuple[int, int, int, int]
"""Rows ``[top, bottom)`` and columns ``[left, right)`` of the image a lesion is drawn in."""


def lesion_window(params: LesionParams, shape: tuple[int, int]) -> Window:
    """The part of the image a lesion (core, ring and soft edges) can reach."""
    radius_px = math.sqrt(params.area_px / math.pi)
    reach = 3.8 * radius_px * (1.0 + params.oedema_width) + 4.0 * params.edge_px + 3.0
    top = max(0, math.floor(params.center[0] - reach))
    left = max(0, math.floor(params.center[1] - reach))
    bottom = min(shape[0], math.ceil(params.center[0] + reach) + 1)
    right = min(shape[1], math.ceil(params.center[1] + reach) + 1)
    return top, bottom, left, right


def _normalised_radius(
    params: LesionParams, window: Window, center: tuple[float, float], area: float
) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic radius (1 on the nominal outline) and polar angle of every window pixel."""
    top, bottom, left, right = window
    rows, cols = np.mgrid[top:bottom, left:right].astype(np.float64)
    dy, dx = rows - center[0], cols - center[1]
    cos, sin = math.cos(params.angle), math.sin(params.angle)
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    major = math.sqrt(area / (math.pi * params.aspect))
    minor = major * params.aspect
    return np.hypot(u / major, v / minor), np.arctan2(v, u)


def _outline_radius(
    params: LesionParams, rng: np.random.Generator, window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius whose level set 1 is the irregular outline (< 1 inside the lesion).

    Also returns the unperturbed radius, which tells the lesion's own lobes from islands that
    the perturbation may raise nearby.
    """
    radius_px = math.sqrt(params.area_px / math.pi)
    shape = (window[1] - window[0], window[3] - window[2])
    if params.outline == "perturbed-ellipse":
        rho, _ = _normalised_radius(params, window, params.center, params.area_px)
        wobble = _smooth_noise(rng, shape, max(0.5 * radius_px, 0.8))
        return rho * (1.0 + params.roughness * np.clip(wobble, -1.5, 1.5)), rho
    if params.outline == "lobulated":
        rho, phi = _normalised_radius(params, window, params.center, params.area_px)
        boundary = np.ones_like(phi)
        for order in range(3, 7):
            boundary += params.roughness / (order - 2) * np.cos(order * phi + rng.uniform(0, 6.3))
        return rho / np.clip(boundary, 0.35, None), rho
    if params.outline == "multi-focal":
        lobes = int(rng.integers(2, 4))
        nearest = np.full(shape, np.inf)
        for _ in range(lobes):
            offset = np.clip(
                rng.normal(0.0, 0.6 * radius_px, size=2), -1.2 * radius_px, 1.2 * radius_px
            )
            center = (params.center[0] + offset[0], params.center[1] + offset[1])
            rho, _ = _normalised_radius(params, window, center, params.area_px / lobes)
            nearest = np.minimum(nearest, rho)
        wobble = _smooth_noise(rng, shape, max(0.3 * radius_px, 0.8))
        return nearest * (1.0 + 0.5 * params.roughness * np.clip(wobble, -1.5, 1.5)), nearest
    raise ValueError(f"unknown lesion outline {params.outline!r}")


def _soft_inside(level: np.ndarray, radius_px: float, edge_px: float) -> np.ndarray:
    """Blending weight: 1 inside, 0 beyond ``edge_px`` outside, exactly 0.5 on ``level == 1``.

    A smoothstep over ``edge_px`` pixels either side of the outline, so the lesion's support is
    compact and its mask (weight >= 1/2) is the outline's interior.
    """
    signed_distance_px = (1.0 - level) * radius_px
    ramp = np.clip(0.5 + 0.5 * signed_distance_px / max(edge_px, 1e-3), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def _without_islands(weight: np.ndarray, base_radius: np.ndarray, reach_px: float) -> np.ndarray:
    """``weight`` kept only near the connected parts of ``weight >= 1/2`` that hold a lobe centre.

    A lobe centre is where the unperturbed radius is below 0.6 (inside whatever the perturbation
    does); anything farther than ``reach_px`` from those parts is set to zero.
    """
    labels, count = ndimage.label(weight >= 0.5)
    if count == 0:
        return np.zeros_like(weight)
    own = np.unique(labels[(base_radius <= 0.6) & (labels > 0)])
    kept = np.isin(labels, own)
    if not kept.any():
        return np.zeros_like(weight)
    near = ndimage.distance_transform_edt(~kept) <= reach_px
    return weight * near


class CoreWeight(NamedTuple):
    """Blending weight of a lesion's core inside its window, and what the ring is built from."""

    window: Window
    weight: np.ndarray
    level: np.ndarray
    base_radius: np.ndarray
    brain_weight: np.ndarray


def _core_weight(params: LesionParams, brain: np.ndarray, rng: np.random.Generator) -> CoreWeight:
    """The core's soft weight (1 inside the irregular outline, cut softly to ``brain``)."""
    window = lesion_window(params, (int(brain.shape[0]), int(brain.shape[1])))
    top, bottom, left, right = window
    local_brain = brain[top:bottom, left:right]
    radius_px = math.sqrt(params.area_px / math.pi)
    level, base_radius = _outline_radius(params, rng, window)
    brain_weight = ndimage.gaussian_filter(local_brain.astype(np.float64), 0.7)
    brain_weight = np.where(
        local_brain, np.maximum(brain_weight, 0.5), np.minimum(brain_weight, 0.49)
    )
    weight = _soft_inside(level, radius_px, params.edge_px)
    weight = _without_islands(weight, base_radius, 2 * params.edge_px + 1) * brain_weight
    return CoreWeight(window, weight, level, base_radius, brain_weight)


def core_weight(params: LesionParams, brain: np.ndarray) -> CoreWeight:
    """:func:`render_lesion`'s core weight alone, for shapes painted with another intensity."""
    return _core_weight(params, brain, np.random.default_rng(params.detail_seed))


def render_lesion(
    magnitude: np.ndarray, brain: np.ndarray, params: LesionParams
) -> tuple[np.ndarray, np.ndarray]:
    """New magnitude and exact mask for ``params`` (random details from ``params.detail_seed``).

    Core: ``m <- (1 - w) m + w c T`` with ``c`` the lesion level (contrast x brain median) and
    ``T`` a smooth texture; ring: ``m <- m (1 +/- strength w_ring)``. Both weights are cut to the
    brain region; the mask is ``w >= 1/2`` or ``w_ring >= 1/2``. Only the lesion's window
    (:func:`lesion_window`) is computed and changed.
    """
    rng = np.random.default_rng(params.detail_seed)
    core = _core_weight(params, brain, rng)
    top, bottom, left, right = core.window
    local = magnitude[top:bottom, left:right]
    shape = (bottom - top, right - left)
    radius_px = math.sqrt(params.area_px / math.pi)
    level, base_radius, brain_weight = core.level, core.base_radius, core.brain_weight

    median = float(np.median(magnitude[brain]))
    texture = 1.0 + params.texture_strength * np.clip(
        _smooth_noise(rng, shape, params.texture_correlation_px), -3, 3
    )
    lesion_level = params.contrast * median * texture
    if params.necrotic_core:
        # Ring enhancement: a bright or dark rim around a core of the opposite sign.
        inner = _soft_inside(level / 0.55, radius_px * 0.55, params.edge_px)
        necrosis = (0.35 if params.hyperintense else 1.8) * median * texture
        lesion_level = (1 - inner) * lesion_level + inner * necrosis
    changed_local = (1.0 - core.weight) * local + core.weight * np.maximum(lesion_level, 0.0)

    ring = np.zeros(shape)
    if params.oedema_width > 0:
        outer_radius_px = radius_px * (1.0 + params.oedema_width)
        outer_level = level / (1.0 + params.oedema_width)
        outer = _soft_inside(outer_level, outer_radius_px, 2 * params.edge_px)
        reach = radius_px * params.oedema_width + 4 * params.edge_px + 1
        outer = _without_islands(outer, base_radius, reach)
        ring = np.clip(outer - core.weight, 0.0, 1.0) * brain_weight
        sign = 1.0 if params.hyperintense else -1.0
        changed_local = changed_local * (1.0 + sign * params.oedema_strength * ring)
    changed = np.array(magnitude, dtype=np.float64, copy=True)
    changed[top:bottom, left:right] = changed_local
    mask = np.zeros(magnitude.shape, dtype=bool)
    mask[top:bottom, left:right] = (core.weight >= 0.5) | (ring >= 0.5)
    return changed, mask


def insert_lesion(
    image: np.ndarray,
    seed: int,
    family: LesionFamily = TRAINING_FAMILY,
    head: np.ndarray | None = None,
    max_tries: int = 20,
) -> LesionedSlice:
    """Paint one lesion of ``family`` into a healthy slice; deterministic given ``seed``.

    ``head`` is the foreground mask (design.md's definition by default). Raises
    :class:`InputError` when the slice holds too little brain for a lesion.
    """
    magnitude = magnitude_of(image)
    if not np.isfinite(magnitude).all():
        raise InputError("image contains NaN or infinite values")
    head = head_mask(magnitude) if head is None else np.asarray(head, dtype=bool)
    if head.shape != magnitude.shape:
        raise InputError(f"head mask {head.shape} does not fit image {magnitude.shape}")
    brain = brain_region(magnitude, head)
    scale = brain.size / REFERENCE_PIXELS
    if brain.sum() < MIN_BRAIN_PIXELS * scale or float(np.median(magnitude[brain])) <= 0:
        raise InputError("slice holds too little brain to insert a lesion")
    rng = np.random.default_rng([seed, 0])
    for _ in range(max_tries):
        params = sample_lesion_params(rng, family, brain, detail_seed=int(rng.integers(2**31)))
        changed, mask = render_lesion(magnitude, brain, params)
        if mask.any():
            return LesionedSlice(with_magnitude(image, changed), mask, params)
    raise InputError(f"could not place a lesion in this slice after {max_tries} tries")
