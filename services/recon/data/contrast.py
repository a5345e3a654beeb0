"""Random MR contrasts: per-tissue intensities for tissue maps, and remaps of template intensity.

Tissue-map rendering follows the generative model behind SynthSeg (Billot et al., Medical Image
Analysis 2023): each tissue class gets a random mean intensity drawn around a T1-, T2-, PD- or
FLAIR-like ordering (or fully at random; optionally the contrast of a diffusion scan's b = 0
image, dark tissue under very bright CSF), with per-tissue texture, then the partial-volume
probabilities mix them. Template intensities are remapped by a piecewise-linear curve through
the template's own tissue levels, which gives monotone (T1 -> T1) or inverting (T1 -> T2-like)
contrast changes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from services.recon.data.fields import texture_field
from services.recon.data.templates import TISSUE_CLASSES

GM, WM, CSF, BONE, SOFT, AIR = range(len(TISSUE_CLASSES))

CONTRAST_FAMILIES: tuple[str, ...] = ("t1", "t2", "pd", "flair", "random")
CONTRAST_PROBABILITIES: tuple[float, ...] = (0.32, 0.26, 0.14, 0.1, 0.18)


class FamilyLevels(NamedTuple):
    """Ranges of one contrast family's levels (uniform draws, in this order): the ``first``
    brain tissue, the ``second`` above it, CSF (absolute, or above grey matter), soft tissue
    and the skull's marrow."""

    first: int
    first_level: tuple[float, float]
    second: int
    second_above_first: tuple[float, float]
    csf: tuple[float, float]
    soft: tuple[float, float]
    marrow: tuple[float, float]
    csf_above_gm: bool = False


FAMILY_LEVELS: dict[str, FamilyLevels] = {
    "t1": FamilyLevels(GM, (0.38, 0.6), WM, (0.15, 0.35), (0.03, 0.22), (0.45, 1.0), (0.3, 0.9)),
    "t2": FamilyLevels(WM, (0.22, 0.42), GM, (0.1, 0.25), (0.8, 1.0), (0.3, 0.85), (0.2, 0.6)),
    "pd": FamilyLevels(
        WM, (0.5, 0.65), GM, (0.08, 0.2), (-0.05, 0.2), (0.5, 0.9), (0.3, 0.7), csf_above_gm=True
    ),
    "flair": FamilyLevels(WM, (0.35, 0.5), GM, (0.1, 0.25), (0.02, 0.12), (0.3, 0.8), (0.2, 0.6)),
    "dwi_b0": FamilyLevels(
        WM, (0.12, 0.26), GM, (0.04, 0.14), (0.85, 1.0), (0.05, 0.35), (0.0, 0.2)
    ),
}
"""Every family but ``random`` (all brain levels drawn independently in [0.05, 1])."""


class TissueContrast(NamedTuple):
    """Mean intensity of each tissue class (order of ``TISSUE_CLASSES``) and texture knobs."""

    family: str
    intensities: np.ndarray
    marrow: float
    soft_tissue_variation: float
    texture: float


def random_tissue_contrast(
    rng: np.random.Generator, dwi_probability: float = 0.0
) -> TissueContrast:
    """Draw a contrast family and its per-tissue intensities (air stays 0).

    With ``dwi_probability`` > 0 that share of draws is ``dwi_b0``: the T2-weighted, fat-suppressed
    b = 0 image of a diffusion (EPI) scan, where tissue sits at a fifth to a third of the CSF
    level. At 0 no extra random number is drawn, so older banks rebuild identically.
    """
    u = rng.uniform
    if dwi_probability > 0.0 and u() < dwi_probability:
        family = "dwi_b0"
    else:
        family = str(rng.choice(CONTRAST_FAMILIES, p=CONTRAST_PROBABILITIES))
    levels = np.zeros(len(TISSUE_CLASSES))
    if family in FAMILY_LEVELS:
        ranges = FAMILY_LEVELS[family]
        levels[ranges.first] = u(*ranges.first_level)
        levels[ranges.second] = levels[ranges.first] + u(*ranges.second_above_first)
        levels[CSF] = u(*ranges.csf) + (levels[GM] if ranges.csf_above_gm else 0.0)
        levels[SOFT] = u(*ranges.soft)
        marrow = u(*ranges.marrow)
    else:
        levels[[GM, WM, CSF]] = u(0.05, 1.0, size=3)
        levels[SOFT] = u(0.1, 1.0)
        marrow = u(0.0, 0.8)
    levels[BONE] = u(0.0, 0.12)
    return TissueContrast(
        family=family,
        intensities=levels.astype(np.float32),
        marrow=float(marrow),
        soft_tissue_variation=float(u(0.1, 0.4)),
        texture=float(u(0.0, 0.08)),
    )


def sharpen_probabilities(probabilities: np.ndarray, gamma: float) -> np.ndarray:
    """Raise class probabilities (..., C) to ``gamma`` and renormalise: crisper boundaries."""
    powered = np.power(np.clip(probabilities, 0.0, 1.0), gamma)
    return powered / np.maximum(powered.sum(axis=-1, keepdims=True), 1e-8)


def render_tissues(
    probabilities: np.ndarray,
    contrast: TissueContrast,
    rng: np.random.Generator,
    bone_core: np.ndarray | None = None,
) -> np.ndarray:
    """Magnitude image (H, W) from tissue probabilities (H, W, 6) and a random contrast.

    Each class has a textured intensity; bone gets a smooth bright marrow band (the diploe)
    where ``bone_core`` (0..1, the middle of the skull) is high; soft tissue varies smoothly
    between fat-like and muscle-like levels.
    """
    shape = probabilities.shape[:2]
    fine = texture_field(rng, shape, sigma_px=0.8)
    coarse = texture_field(rng, shape, sigma_px=3.0)
    weights = rng.uniform(0.3, 1.0, size=(len(TISSUE_CLASSES), 2)) * contrast.texture
    per_class = contrast.intensities[None, None, :] * (
        1.0 + weights[:, 0] * fine[..., None] + weights[:, 1] * coarse[..., None]
    )
    soft_modulation = texture_field(rng, shape, sigma_px=float(rng.uniform(3.0, 6.0)))
    per_class[..., SOFT] *= 1.0 + contrast.soft_tissue_variation * soft_modulation
    if bone_core is not None:
        per_class[..., BONE] += contrast.marrow * bone_core * (1.0 + 0.25 * coarse)
    per_class[..., AIR] = 0.0
    image = np.sum(probabilities * np.clip(per_class, 0.0, None), axis=-1)
    return np.asarray(image, dtype=np.float32)


def remap_intensity(
    values: np.ndarray, template_levels: np.ndarray, contrast: TissueContrast
) -> np.ndarray:
    """Map template intensities through knots (template level of class k -> new level of k).

    Knots: air (0 -> 0); bone if it is darker than every brain tissue; CSF, GM and WM (skipping
    one within 0.05 of an accepted knot); and the template's bright end (fat in T1) -> the new
    soft-tissue level. Between knots the map is linear, beyond them constant. A T1 template
    under a T2-like contrast is thus inverted (CSF bright, WM darker than GM) while the
    background stays dark.
    """
    brain = [CSF, GM, WM]
    knots = [(0.0, 0.0)]
    bone_level = float(template_levels[BONE])
    if 0.05 <= bone_level < min(float(template_levels[k]) for k in brain) - 0.05:
        knots.append((bone_level, float(contrast.intensities[BONE])))
    for tissue in brain:
        level = float(template_levels[tissue])
        if all(abs(level - x) >= 0.05 for x, _ in knots):
            knots.append((level, float(contrast.intensities[tissue])))
    top = max(1.0, max(x for x, _ in knots) + 0.05)
    knots.append((top, float(contrast.intensities[SOFT])))
    xs, ys = (np.asarray(column) for column in zip(*sorted(knots), strict=True))
    return np.interp(values, xs, ys).astype(np.float32)
