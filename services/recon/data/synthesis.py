"""Synthetic complex head MR slices for training the diffusion prior.

Each slice is drawn from a *recipe* over the training templates (see
:data:`services.recon.data.splits.TRAINING_SOURCES`): a random plane (mostly axial) through the
head with a random affine (rotation +/-15 degrees, scale 0.85-1.15, shifts, small tilts) and a
smooth elastic warp, read at the requested pixel size; then either tissue maps rendered with a
random per-tissue contrast (SynthSeg-style, Billot et al., MedIA 2023) or template intensities
through a random monotone or inverting remap; a smooth multiplicative bias field; a smooth
low-order phase; complex Gaussian noise (Rician magnitude) at a random SNR; and scaling so the
99th percentile of the magnitude is 1. Brain-only templates get the head (CSF, skull with its
marrow, scalp, air) from SPM's tissue probability maps, so the prior sees whole heads.
Optionally (:class:`SliceVariations`), tissue-map slices get synthetic cortical sulci
(:mod:`services.recon.data.folds`) or widened CSF spaces (:mod:`services.recon.data.atrophy`),
and any slice a diffusion b = 0 contrast.

Everything is a function of the ``numpy.random.Generator`` passed in: same seed, same slice.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Literal, NamedTuple

import numpy as np

from services.recon.data.atrophy import with_atrophy
from services.recon.data.contrast import (
    AIR,
    BONE,
    CSF,
    GM,
    WM,
    TissueContrast,
    random_tissue_contrast,
    remap_intensity,
    render_tissues,
    sharpen_probabilities,
)
from services.recon.data.fields import bias_field, coarse_grid_field, smooth_phase, texture_field
from services.recon.data.folds import with_cortical_folds
from services.recon.data.sampling import (
    Orientation,
    SlicePlane,
    make_plane,
    plane_world_points,
    sample_trilinear,
)
from services.recon.data.splits import TRAINING_SOURCES
from services.recon.data.templates import SourceVolume, load_source
from services.recon.errors import InputError, check_probability

RecipeMode = Literal["tissue", "intensity", "intensity_with_head"]


class Recipe(NamedTuple):
    """How to make one kind of slice: which training sources, and how to render them.

    ``weight_2mm`` / ``weight_1mm`` are the draw probabilities at coarse (>= 1.5 mm) and fine
    pixel sizes: sharp 1 mm sources dominate fine crops, blurry 2 mm averages only coarse ones.
    """

    name: str
    mode: RecipeMode
    sources: tuple[str, ...]
    weight_2mm: float
    weight_1mm: float


RECIPES: tuple[Recipe, ...] = (
    Recipe("tpm_tissues", "tissue", ("spm_tpm",), 0.14, 0.08),
    Recipe("dartel_tissues", "tissue", ("spm_dartel_icbm152", "spm_tpm"), 0.16, 0.14),
    Recipe("mni2009a_tissues", "tissue", ("mni152_2009a_tissues", "spm_tpm"), 0.3, 0.43),
    Recipe("mni2009a_t1_head", "intensity_with_head", ("mni152_2009a_t1", "spm_tpm"), 0.2, 0.3),
    Recipe("avg152T1", "intensity", ("spm_avg152T1", "spm_tpm"), 0.1, 0.025),
    Recipe("avg152T2", "intensity", ("spm_avg152T2", "spm_tpm"), 0.1, 0.025),
)
"""Slice recipes; every source they name must be in the training split (checked at import)."""

ORIENTATIONS: tuple[Orientation, ...] = ("axial", "coronal", "sagittal")
ORIENTATION_PROBABILITIES: tuple[float, ...] = (0.7, 0.15, 0.15)
HEAD_CENTRE_MM = np.array([0.0, -18.0, 8.0])
"""Approximate centre of the head in MNI space (between the ears, at the level of the AC)."""
NORMAL_RANGE_MM: dict[str, tuple[float, float]] = {
    "axial": (-55.0, 78.0),
    "coronal": (-100.0, 66.0),
    "sagittal": (-66.0, 66.0),
}
"""Where the slice may sit along its normal (MNI z, y, x): within the head."""
HEAD_WIDTH_MM = 200.0
TEMPLATE_BOTTOM_MM = -72.0
"""Lowest MNI z of every template: below it the neck is extended and faded (coil coverage)."""
MIN_HEAD_FRACTION = 0.06

TPM_ONLY = RECIPES[0]

_unknown = {source for recipe in RECIPES for source in recipe.sources} - set(TRAINING_SOURCES)
if _unknown:
    raise RuntimeError(f"recipes use sources outside the training split: {sorted(_unknown)}")


class SynthesizedSlice(NamedTuple):
    """One synthetic slice and how it was made (for the bank's provenance)."""

    image: np.ndarray
    recipe: str
    sources: tuple[str, ...]
    orientation: str
    contrast: str
    pixel_mm: float
    snr: float
    folded: bool = False
    atrophic: bool = False


def recipe_weights(pixel_mm: float) -> np.ndarray:
    """Draw probabilities of :data:`RECIPES` at ``pixel_mm``."""
    weights = np.array([r.weight_2mm if pixel_mm >= 1.5 else r.weight_1mm for r in RECIPES])
    return weights / weights.sum()


def _air_fill(source: SourceVolume) -> np.ndarray:
    """Out-of-volume value per channel: air for tissue maps that carry an air class."""
    fill = np.zeros(len(source.channels), dtype=np.float32)
    if "air" in source.channels:
        fill[source.channels.index("air")] = 1.0
    return fill


def tissue_probabilities(recipe: Recipe, points: np.ndarray) -> np.ndarray:
    """Six-class probabilities (H, W, 6) at ``points``.

    Brain sources give GM and WM; SPM's TPM gives the rest (CSF, bone, soft tissue, air), scaled
    to fill what GM and WM leave, so every recipe describes a whole head.
    """
    tpm_source = load_source("spm_tpm")
    tpm = sample_trilinear(tpm_source, points, fill=_air_fill(tpm_source), extend_inferior=True)
    brain_name = recipe.sources[0]
    if brain_name == "spm_tpm":
        return tpm
    brain_source = load_source(brain_name)
    brain = sample_trilinear(brain_source, points, extend_inferior=True)
    gm_wm = np.clip(brain[..., [brain_source.channels.index(c) for c in ("gm", "wm")]], 0, 1)
    total = gm_wm.sum(axis=-1, keepdims=True)
    gm_wm = gm_wm / np.maximum(total, 1.0)
    remainder = 1.0 - gm_wm.sum(axis=-1, keepdims=True)
    rest = tpm[..., CSF:].copy()
    rest_total = rest.sum(axis=-1, keepdims=True)
    empty = rest_total[..., 0] < 1e-3
    rest[empty] = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    rest_total[empty] = 1.0
    return np.concatenate([gm_wm, remainder * rest / rest_total], axis=-1)


@functools.cache
def template_tissue_levels(source_name: str) -> np.ndarray:
    """Typical intensity of each tissue class in an intensity template (6,).

    The template is read where SPM's TPM is confident (weights p**4), so the levels are those of
    pure tissue; a class the template lacks (no skull in a skull-stripped average) gets 0.
    """
    source = load_source(source_name)
    tpm_source = load_source("spm_tpm")
    step = max(1, round(4.0 / source.voxel_mm))
    grid = np.stack(
        np.meshgrid(*(np.arange(0, n, step) for n in source.shape), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    values = source.data[grid[:, 0], grid[:, 1], grid[:, 2], 0]
    points = grid @ source.affine[:3, :3].T + source.affine[:3, 3]
    weights = np.power(sample_trilinear(tpm_source, points, fill=_air_fill(tpm_source)), 4)
    levels = (weights * values[:, None]).sum(axis=0) / np.maximum(weights.sum(axis=0), 1e-6)
    levels[AIR] = 0.0
    return levels.astype(np.float32)


def random_plane(
    rng: np.random.Generator, orientation: Orientation, size: int, pixel_mm: float
) -> SlicePlane:
    """A random plane of ``orientation``: position, rotation +/-15 deg, scale 0.85-1.15, tilt."""
    normal_axis = {"axial": 2, "coronal": 1, "sagittal": 0}[orientation]
    centre = HEAD_CENTRE_MM.copy()
    low, high = NORMAL_RANGE_MM[orientation]
    centre[normal_axis] = rng.uniform(low, high)
    max_shift = max(10.0, 0.5 * (HEAD_WIDTH_MM - size * pixel_mm))
    in_plane_axes = [axis for axis in range(3) if axis != normal_axis]
    centre[in_plane_axes] += rng.uniform(-max_shift, max_shift, size=2)
    scale = rng.uniform(0.85, 1.15)
    anisotropy = rng.uniform(0.95, 1.05)
    return make_plane(
        orientation,
        centre,
        size,
        pixel_mm,
        in_plane_rotation=float(np.deg2rad(rng.uniform(-15.0, 15.0))),
        tilt=(float(np.deg2rad(rng.uniform(-8, 8))), float(np.deg2rad(rng.uniform(-8, 8)))),
        scale=(scale * anisotropy, scale / anisotropy),
    )


def elastic_displacement(rng: np.random.Generator, plane: SlicePlane) -> np.ndarray:
    """Smooth random displacement (size, size, 3) in mm: in plane up to ~3 mm std, 1 mm across."""
    shape = (plane.size, plane.size)
    grid = int(rng.integers(4, 8))
    strength = rng.uniform(0.0, 3.0)
    axes = (plane.u / np.linalg.norm(plane.u), plane.v / np.linalg.norm(plane.v), plane.normal)
    amplitudes = (strength, strength, 1.0)
    displacement = np.zeros((*shape, 3), dtype=np.float64)
    for axis, amplitude in zip(axes, amplitudes, strict=True):
        displacement += coarse_grid_field(rng, shape, grid, amplitude)[..., None] * axis
    return displacement


def render_magnitude(
    recipe: Recipe,
    points: np.ndarray,
    contrast: TissueContrast,
    rng: np.random.Generator,
    fold_pixel_mm: float | None = None,
    atrophy_pixel_mm: float | None = None,
) -> np.ndarray:
    """Noise-free magnitude (H, W) of ``recipe`` at ``points`` with ``contrast``.

    ``fold_pixel_mm`` (the pixel size) carves sulci into a tissue recipe's cortex
    (:mod:`services.recon.data.folds`) and ``atrophy_pixel_mm`` widens its CSF spaces
    (:mod:`services.recon.data.atrophy`); ``None`` leaves the templates' anatomy as it is.
    """
    shape = points.shape[:2]
    if recipe.mode == "tissue":
        gamma = rng.uniform(1.5, 3.5) if recipe.sources[0] == "spm_tpm" else rng.uniform(1.0, 2.0)
        raw = tissue_probabilities(recipe, points)
        probabilities = sharpen_probabilities(raw, gamma)
        if fold_pixel_mm is not None:
            probabilities = with_cortical_folds(probabilities, rng, fold_pixel_mm)
        if atrophy_pixel_mm is not None:
            probabilities = with_atrophy(probabilities, rng, atrophy_pixel_mm)
        return render_tissues(probabilities, contrast, rng, bone_core=skull_core(raw))
    template = load_source(recipe.sources[0])
    values = sample_trilinear(template, points, extend_inferior=True)
    levels = template_tissue_levels(recipe.sources[0])
    fine = texture_field(rng, shape, sigma_px=0.8)
    inside = remap_intensity(values[..., 0], levels, contrast) * (1.0 + contrast.texture * fine)
    if recipe.mode == "intensity":
        return np.clip(inside, 0.0, None)
    brain_mask = np.clip(values[..., template.channels.index("brain_mask")], 0.0, 1.0)
    raw = tissue_probabilities(TPM_ONLY, points)
    raw[..., [GM, WM]] = 0.0
    raw[..., CSF] += 1e-6
    head = sharpen_probabilities(raw, rng.uniform(1.5, 3.0))
    outside = render_tissues(head, contrast, rng, bone_core=skull_core(raw))
    return np.clip(brain_mask * inside + (1.0 - brain_mask) * outside, 0.0, None)


def coil_coverage(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """Signal fall-off below the templates' lowest plane, as a head coil's coverage ends."""
    depth = np.clip(TEMPLATE_BOTTOM_MM - points[..., 2], 0.0, None)
    return np.exp(-((depth / rng.uniform(20.0, 60.0)) ** 2)).astype(np.float32)


def skull_core(probabilities: np.ndarray) -> np.ndarray:
    """0..1 weight of the middle of the skull (where TPM is most sure of bone): the diploe."""
    return np.clip((probabilities[..., BONE] - 0.6) / 0.25, 0.0, 1.0)


def random_snr(rng: np.random.Generator) -> float:
    """Mostly high SNR: 80 % log-uniform in [30, 300], 20 % log-uniform in [10, 30]."""
    low, high = (30.0, 300.0) if rng.uniform() < 0.8 else (10.0, 30.0)
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def head_fraction(magnitude: np.ndarray) -> float:
    """Fraction of pixels above 10 % of the 99th percentile (the design's foreground level)."""
    threshold = 0.1 * float(np.percentile(magnitude, 99))
    return float(np.mean(magnitude > threshold)) if threshold > 0 else 0.0


def with_smooth_phase(magnitude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``magnitude * exp(i phi)``: a random global phase plus a smooth 2nd-order phase whose
    strength is drawn from [0.3, 3] rad (:func:`~services.recon.data.fields.smooth_phase`)."""
    shape = (magnitude.shape[0], magnitude.shape[1])
    phase = smooth_phase(rng, shape, max_radians=rng.uniform(0.3, 3.0))
    result: np.ndarray = magnitude * np.exp(1j * phase)
    return result


@dataclass(frozen=True)
class SliceVariations:
    """How often a synthetic slice gets each optional variation (probabilities in [0, 1]).

    A variation at 0 draws no random numbers, so banks built before it existed rebuild
    identically.
    """

    fold_probability: float = 0.0
    """Cortical sulci on a tissue-map slice (:mod:`services.recon.data.folds`)."""
    atrophy_probability: float = 0.0
    """Widened CSF spaces on a tissue-map slice (:mod:`services.recon.data.atrophy`)."""
    dwi_probability: float = 0.0
    """A diffusion b = 0 contrast on any slice (:func:`.contrast.random_tissue_contrast`)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            check_probability(field.name, getattr(self, field.name))


def synthesize_head_slice_with_info(
    rng: np.random.Generator,
    size: int = 128,
    pixel_mm: float = 2.0,
    variations: SliceVariations | None = None,
) -> SynthesizedSlice:
    """One synthetic complex head slice (complex64, size x size) and how it was made."""
    if size < 8 or not 0.25 <= pixel_mm <= 8.0:
        raise InputError(f"need size >= 8 and 0.25 <= pixel_mm <= 8, got {size}, {pixel_mm}")
    chance = variations or SliceVariations()
    recipe = RECIPES[int(rng.choice(len(RECIPES), p=recipe_weights(pixel_mm)))]
    folded = _tissue_variation(recipe, chance.fold_probability, rng)
    atrophic = _tissue_variation(recipe, chance.atrophy_probability, rng)
    orientation = ORIENTATIONS[int(rng.choice(len(ORIENTATIONS), p=ORIENTATION_PROBABILITIES))]
    contrast = random_tissue_contrast(rng, chance.dwi_probability)
    magnitude = np.zeros((size, size), dtype=np.float32)
    for _attempt in range(8):
        plane = random_plane(rng, orientation, size, pixel_mm)
        points = plane_world_points(plane, elastic_displacement(rng, plane))
        magnitude = render_magnitude(
            recipe,
            points,
            contrast,
            rng,
            pixel_mm if folded else None,
            pixel_mm if atrophic else None,
        ) * coil_coverage(rng, points)
        if head_fraction(magnitude) >= MIN_HEAD_FRACTION:
            break
    shape = (size, size)
    magnitude = magnitude * bias_field(rng, shape, strength=rng.uniform(0.0, 0.25))
    image = with_smooth_phase(magnitude, rng)
    snr = random_snr(rng)
    foreground = magnitude > 0.1 * np.percentile(magnitude, 99)
    signal = float(magnitude[foreground].mean()) if foreground.any() else 1.0
    sigma = signal / snr
    image = image + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    scale = float(np.percentile(np.abs(image), 99))
    image = image / max(scale, 1e-8)
    return SynthesizedSlice(
        image=image.astype(np.complex64),
        recipe=recipe.name,
        sources=recipe.sources,
        orientation=orientation,
        contrast=contrast.family,
        pixel_mm=float(pixel_mm),
        snr=snr,
        folded=folded,
        atrophic=atrophic,
    )


def _tissue_variation(recipe: Recipe, probability: float, rng: np.random.Generator) -> bool:
    """Whether a tissue-map slice gets a variation of this ``probability`` (no draw at 0)."""
    return probability > 0.0 and recipe.mode == "tissue" and rng.uniform() < probability


def synthesize_head_slice(
    rng: np.random.Generator, size: int = 128, pixel_mm: float = 2.0
) -> np.ndarray:
    """A synthetic complex head MR slice, complex64 (size, size), 99th pct of |x| equal to 1.

    About 2 mm pixels at 128 x 128 show the whole head; 1 mm pixels give 128 x 128 crops of a
    256 mm field of view. Deterministic given the generator's state.
    """
    return synthesize_head_slice_with_info(rng, size, pixel_mm).image


def example_mosaic(
    seed: int, rows: int = 4, cols: int = 4, size: int = 128, pixel_mm: float = 2.0
) -> np.ndarray:
    """Magnitudes of ``rows * cols`` slices (generators ``default_rng([seed, i])``) tiled."""
    tiles = [
        np.abs(synthesize_head_slice(np.random.default_rng([seed, i]), size, pixel_mm))
        for i in range(rows * cols)
    ]
    grid = np.asarray(tiles, dtype=np.float32).reshape(rows, cols, size, size)
    return grid.transpose(0, 2, 1, 3).reshape(rows * size, cols * size)
