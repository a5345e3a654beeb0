"""Brain atrophy for tissue maps: CSF spaces widened into the surrounding brain.

The templates are young-adult averages, so their ventricles are small and their sulci narrow,
while the patients a hospital scans are often older: with age the brain shrinks and the CSF
spaces grow (wider sulci and ventricles; Fotenos et al., Neurology 2005). A classifier trained
only on young brains reads wide CSF spaces as lesions (it did: BENCHMARKS.md, session 15). In
the spirit of SynthSeg's domain randomisation (Billot et al., Medical Image Analysis 2023), a
tissue-map slice gets a random atrophy: every CSF space (ventricles, sulci, the subarachnoid
space at the brain's surface) grows by a random distance, with a partial-volume edge, taking
the grey and white matter it covers in proportion.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from services.recon.data.contrast import CSF, GM, WM

GROWTH_MM = (0.5, 4.0)
"""Range of the distance by which the CSF spaces grow, in mm."""


def grown_csf(csf: np.ndarray, growth_mm: float, pixel_mm: float) -> np.ndarray:
    """CSF fraction (H, W) after its spaces grow by ``growth_mm``: 1 within that distance of a
    mostly-CSF pixel, falling linearly to 0 one pixel further out (partial volume at the new
    edge), never below ``csf``."""
    distance_mm = ndimage.distance_transform_edt(csf < 0.5) * pixel_mm
    reached = np.clip((growth_mm - distance_mm) / pixel_mm + 1.0, 0.0, 1.0)
    return np.maximum(csf, reached).astype(np.float32)


def with_atrophy(
    probabilities: np.ndarray, rng: np.random.Generator, pixel_mm: float
) -> np.ndarray:
    """Tissue probabilities (H, W, C) with CSF spaces grown by a random 0.5-4 mm.

    Only grey and white matter turn into CSF (each in proportion to its share), so skull, scalp
    and air keep their place and the class sum per pixel is unchanged.
    """
    growth_mm = rng.uniform(*GROWTH_MM)
    brain = probabilities[..., GM] + probabilities[..., WM]
    wanted = grown_csf(probabilities[..., CSF], growth_mm, pixel_mm) - probabilities[..., CSF]
    moved = np.minimum(np.clip(wanted, 0.0, None), brain)
    share = np.divide(moved, brain, out=np.zeros_like(moved), where=brain > 0)
    atrophic = probabilities.copy()
    atrophic[..., GM] -= share * probabilities[..., GM]
    atrophic[..., WM] -= share * probabilities[..., WM]
    atrophic[..., CSF] += moved
    return atrophic
