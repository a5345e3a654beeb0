"""Benchmark splits, defined by source volume.

- **training**: template volumes the synthetic slice bank is made from (and nothing else);
- **validation**: other template volumes, never used in training; they choose parameters
  (compressed-sensing lambdas, sampler knobs);
- **evaluation**: real single-subject head scans that packages ship; no training or tuning sees
  them. Every evaluation entry is a real scan (``is_real_scan``): no template is independent of
  the training templates (they are MNI-space group averages of overlapping populations, and
  SPM's OldNorm T1/T2/PD are smoothed copies of avg152T1/T2/PD), so the "overall" and
  "real-scan" numbers coincide;
- **excluded**: files that were inspected and rejected, with the reason.

:data:`SPLIT_TABLE_MARKDOWN` renders :data:`SOURCE_TABLE` for MODEL_CARD.md.
:func:`load_split` turns the validation or evaluation volumes into :class:`EvalSlice` references:
axial slices (or the one stored slice) resampled to ``pixel_mm``, padded/cropped to
``size`` x ``size`` around the head, scaled so the 99th percentile is 1.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from typing import Literal, NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from services.recon.data.templates import (
    MNI_LICENCE,
    SPM_LICENCE,
    load_source,
    read_spm_nifti,
    site_packages_file,
    to_ras_channels_last,
)
from services.recon.errors import InputError

SplitName = Literal["training", "validation", "evaluation", "excluded"]

NIBABEL_LICENCE = "MIT (nibabel test data, shipped in the nibabel wheel)"
DIPY_LICENCE = "BSD-3-Clause (dipy test data, shipped in the dipy wheel)"
MATPLOTLIB_LICENCE = "Matplotlib licence (PSF-style; sample data shipped in the matplotlib wheel)"
PYDICOM_LICENCE = "MIT (pydicom test files)"


class SourceEntry(NamedTuple):
    """One source volume (or rejected file) and the split it belongs to."""

    source: str
    volume_id: str
    split: SplitName
    is_real_scan: bool
    contrast: str
    licence: str
    notes: str


SOURCE_TABLE: tuple[SourceEntry, ...] = (
    # ---- training: templates only (services.recon.data.synthesis.RECIPES) ----
    SourceEntry(
        "spm_tpm",
        "spm-runtime:tpm/TPM.nii",
        "training",
        False,
        "tissue maps",
        SPM_LICENCE,
        "6-class tissue probabilities incl. bone, soft tissue: the head",
    ),
    SourceEntry(
        "spm_dartel_icbm152",
        "spm-runtime:toolbox/DARTEL/icbm152.nii",
        "training",
        False,
        "tissue maps",
        SPM_LICENCE,
        "GM/WM template, 1.5 mm",
    ),
    SourceEntry(
        "mni152_2009a_tissues",
        "nilearn:datasets/data/mni_icbm152_{gm,wm}_tal_nlin_sym_09a_converted.nii.gz",
        "training",
        False,
        "tissue maps",
        MNI_LICENCE,
        "GM/WM maps, 1 mm",
    ),
    SourceEntry(
        "mni152_2009a_t1",
        "nilearn:datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "training",
        False,
        "T1",
        MNI_LICENCE,
        "skull-stripped 1 mm average; head added from spm_tpm",
    ),
    SourceEntry(
        "spm_avg152T1",
        "spm-runtime:canonical/avg152T1.nii",
        "training",
        False,
        "T1",
        SPM_LICENCE,
        "whole-head average of 152 subjects, 2 mm",
    ),
    SourceEntry(
        "spm_avg152T2",
        "spm-runtime:canonical/avg152T2.nii",
        "training",
        False,
        "T2",
        SPM_LICENCE,
        "whole-head average of 152 subjects, 2 mm",
    ),
    # ---- validation: held-out templates, for choosing parameters ----
    SourceEntry(
        "spm_avg305T1",
        "spm-runtime:canonical/avg305T1.nii",
        "validation",
        False,
        "T1",
        SPM_LICENCE,
        "whole-head average of 305 subjects, 2 mm",
    ),
    SourceEntry(
        "spm_avg152PD",
        "spm-runtime:canonical/avg152PD.nii",
        "validation",
        False,
        "PD",
        SPM_LICENCE,
        "whole-head average, 2 mm (its OldNorm copy is excluded)",
    ),
    SourceEntry(
        "spm_oldnorm_EPI",
        "spm-runtime:toolbox/OldNorm/EPI.nii",
        "validation",
        False,
        "T2* EPI",
        SPM_LICENCE,
        "smoothed EPI template, 2 mm",
    ),
    # ---- evaluation: real single-subject head scans ----
    SourceEntry(
        "spm_single_subj_T1",
        "spm-runtime:canonical/single_subj_T1.nii",
        "evaluation",
        True,
        "T1",
        SPM_LICENCE,
        "Colin27 (Holmes et al. 1998), one subject, whole head, 2 mm; axial slices",
    ),
    SourceEntry(
        "nibabel_example4d",
        "nibabel:tests/data/example4d.nii.gz",
        "evaluation",
        True,
        "T2* EPI",
        NIBABEL_LICENCE,
        "first fMRI volume, 128x96x24, 2x2x2.2 mm; axial",
    ),
    SourceEntry(
        "dipy_S0_10slices",
        "dipy:data/files/S0_10slices.nii.gz",
        "evaluation",
        True,
        "T2 (b=0 DWI)",
        DIPY_LICENCE,
        "128x128x10 at 2x2 mm; axial",
    ),
    SourceEntry(
        "dipy_t1_coronal_slice",
        "dipy:data/files/t1_coronal_slice.npy",
        "evaluation",
        True,
        "T1",
        DIPY_LICENCE,
        "one 256x256 coronal slice, skull-stripped; spacing not stored, 1 mm assumed "
        "(brain width 142 px)",
    ),
    SourceEntry(
        "matplotlib_s1045",
        "matplotlib:mpl-data/sample_data/s1045.ima.gz",
        "evaluation",
        True,
        "T1",
        MATPLOTLIB_LICENCE,
        "one 256x256 sagittal head slice; spacing not stored, 1 mm assumed (head length 175 px)",
    ),
    # ---- inspected and excluded ----
    SourceEntry(
        "spm_oldnorm_PD",
        "spm-runtime:toolbox/OldNorm/PD.nii",
        "excluded",
        False,
        "PD",
        SPM_LICENCE,
        "avg152PD smoothed (r=0.999): a duplicate of a validation volume",
    ),
    SourceEntry(
        "spm_oldnorm_T1",
        "spm-runtime:toolbox/OldNorm/T1.nii",
        "excluded",
        False,
        "T1",
        SPM_LICENCE,
        "avg152T1 smoothed (r=0.999); FieldMap/T1.nii is the same file",
    ),
    SourceEntry(
        "spm_oldnorm_T2",
        "spm-runtime:toolbox/OldNorm/T2.nii",
        "excluded",
        False,
        "T2",
        SPM_LICENCE,
        "avg152T2 smoothed (r=0.999)",
    ),
    SourceEntry(
        "spm_oldnorm_PET_SPECT_Transm",
        "spm-runtime:toolbox/OldNorm/{PET,SPECT,Transm}",
        "excluded",
        False,
        "not MR",
        SPM_LICENCE,
        "not MR images",
    ),
    SourceEntry(
        "nibabel_anatomical",
        "nibabel:tests/data/anatomical.nii",
        "excluded",
        True,
        "T1",
        NIBABEL_LICENCE,
        "a 66x82x50 mm crop inside the brain: no head in the FOV",
    ),
    SourceEntry(
        "nibabel_functional_and_moved",
        "nibabel:tests/data/{functional,*_anat_moved}.nii",
        "excluded",
        True,
        "mixed",
        NIBABEL_LICENCE,
        "4 mm, 3 slices; copies of anatomical",
    ),
    SourceEntry(
        "nibabel_example_nifti2",
        "nibabel:tests/data/example_nifti2.nii.gz",
        "excluded",
        True,
        "T2* EPI",
        NIBABEL_LICENCE,
        "32x20 crop of example4d",
    ),
    SourceEntry(
        "nibabel_minc_mgz",
        "nibabel:tests/data/{small,tiny,minc*}.mnc, test.mgz",
        "excluded",
        False,
        "mixed",
        NIBABEL_LICENCE,
        "toy arrays or 7-9 mm voxels",
    ),
    SourceEntry(
        "nibabel_nicom_dicoms",
        "nibabel:nicom/tests/data/*.dcm",
        "excluded",
        False,
        "mixed",
        NIBABEL_LICENCE,
        "synthetic ramp pixels, no pixels, all-zero map, or a neck angiography MIP",
    ),
    SourceEntry(
        "dipy_small_rois",
        "dipy:data/files/small_{25,64D,101D}.nii*",
        "excluded",
        True,
        "DWI",
        DIPY_LICENCE,
        "10x10 voxel regions of interest",
    ),
    SourceEntry(
        "dipy_aniso_vox",
        "dipy:data/files/{aniso_vox,ascm_out_test}.nii.gz",
        "excluded",
        True,
        "T2 (b=0)",
        DIPY_LICENCE,
        "4x4x5 mm voxels; ascm_out_test is denoised",
    ),
    SourceEntry(
        "dipy_test_piesno",
        "dipy:data/files/test_piesno.nii.gz",
        "excluded",
        True,
        "DWI",
        DIPY_LICENCE,
        "noise-estimation test data: noise-dominated, spacing not real",
    ),
    SourceEntry(
        "pydicom_mr_small",
        "pydicom:data/test_files/MR_small*.dcm",
        "excluded",
        True,
        "MR",
        PYDICOM_LICENCE,
        "64x64 at 0.31 mm (20 mm field of view): not a head slice",
    ),
    SourceEntry(
        "pydicom_other_mr",
        "pydicom:data/test_files/{examples_overlay,dicomdirtests}",
        "excluded",
        True,
        "MR",
        PYDICOM_LICENCE,
        "abdomen; 16x16 DICOMDIR stubs",
    ),
)
"""Every source inspected for the splits; ``single_subj_T1`` is evaluation only."""

TRAINING_SOURCES: tuple[str, ...] = tuple(e.source for e in SOURCE_TABLE if e.split == "training")
VALIDATION_SOURCES: tuple[str, ...] = tuple(
    e.source for e in SOURCE_TABLE if e.split == "validation"
)
EVALUATION_SOURCES: tuple[str, ...] = tuple(
    e.source for e in SOURCE_TABLE if e.split == "evaluation"
)


def split_table_markdown() -> str:
    """:data:`SOURCE_TABLE` as a Markdown table (for MODEL_CARD.md)."""
    lines = [
        "| split | source | file (package:path) | real scan | contrast | licence | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in SOURCE_TABLE:
        real = "yes" if e.is_real_scan else "no"
        lines.append(
            f"| {e.split} | {e.source} | `{e.volume_id}` | {real} | {e.contrast} | "
            f"{e.licence} | {e.notes} |"
        )
    return "\n".join(lines) + "\n"


SPLIT_TABLE_MARKDOWN: str = split_table_markdown()


class EvalSlice(NamedTuple):
    """A magnitude reference slice of the validation or evaluation split."""

    source: str
    volume_id: str
    slice_index: int
    image: np.ndarray
    is_real_scan: bool
    pixel_mm: float


class SliceStack(NamedTuple):
    """Display-oriented slices (S, H, W) of one volume with their in-plane spacing (mm)."""

    images: np.ndarray
    row_mm: float
    col_mm: float


def axial_stack(image: nib.spatialimages.SpatialImage, volume: int = 0) -> SliceStack:
    """Axial slices of a NIfTI volume in radiological display orientation.

    Rows run anterior to posterior, columns from the patient's right to left.
    """
    data, affine = to_ras_channels_last(image)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    volume_data = data[..., volume]
    images = np.transpose(volume_data[::-1, ::-1, :], (2, 1, 0))
    return SliceStack(np.clip(images, 0.0, None), row_mm=float(zooms[1]), col_mm=float(zooms[0]))


def _template_stack(name: str) -> SliceStack:
    source = load_source(name)
    data = source.data[..., 0]
    images = np.transpose(data[::-1, ::-1, :], (2, 1, 0))
    return SliceStack(np.ascontiguousarray(images), source.voxel_mm, source.voxel_mm)


def _colin27() -> SliceStack:
    return axial_stack(read_spm_nifti("canonical/single_subj_T1.nii"))


def _load_nifti(package: str, *relative: str) -> nib.Nifti1Image:
    image = nib.load(site_packages_file(package, *relative))
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(f"{package}:{'/'.join(relative)} is not a NIfTI-1 image")
    return image


def _nibabel_example4d() -> SliceStack:
    return axial_stack(_load_nifti("nibabel", "tests", "data", "example4d.nii.gz"))


def _dipy_s0() -> SliceStack:
    return axial_stack(_load_nifti("dipy", "data", "files", "S0_10slices.nii.gz"))


def _dipy_t1_coronal() -> SliceStack:
    image = np.load(site_packages_file("dipy", "data", "files", "t1_coronal_slice.npy"))
    return SliceStack(np.clip(image, 0, None)[None].astype(np.float32), 1.0, 1.0)


def _matplotlib_s1045() -> SliceStack:
    path = site_packages_file("matplotlib", "mpl-data", "sample_data", "s1045.ima.gz")
    with gzip.open(path) as handle:
        pixels = np.frombuffer(handle.read(), dtype=np.uint16)
    return SliceStack(pixels.reshape(1, 256, 256).astype(np.float32), 1.0, 1.0)


STACK_LOADERS: dict[str, Callable[[], SliceStack]] = {
    "spm_avg305T1": lambda: _template_stack("spm_avg305T1"),
    "spm_avg152PD": lambda: _template_stack("spm_avg152PD"),
    "spm_oldnorm_EPI": lambda: _template_stack("spm_oldnorm_EPI"),
    "spm_single_subj_T1": _colin27,
    "nibabel_example4d": _nibabel_example4d,
    "dipy_S0_10slices": _dipy_s0,
    "dipy_t1_coronal_slice": _dipy_t1_coronal,
    "matplotlib_s1045": _matplotlib_s1045,
}


def zoom_to_pixel(image: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float) -> np.ndarray:
    """A real 2-D image at square ``pixel_mm`` pixels (cubic; Gaussian anti-aliasing)."""
    factors = np.array([row_mm / pixel_mm, col_mm / pixel_mm])
    sigma = np.where(factors < 1.0, (1.0 / factors - 1.0) / 2.0, 0.0)
    if np.any(sigma > 0):
        image = ndimage.gaussian_filter(image, sigma)
    resampled: np.ndarray = ndimage.zoom(image, factors, order=3, mode="nearest", grid_mode=True)
    return resampled


def resample_slice(image: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float) -> np.ndarray:
    """Resample a 2-D magnitude image to square ``pixel_mm`` pixels (:func:`zoom_to_pixel`)."""
    resampled = zoom_to_pixel(image, row_mm, col_mm, pixel_mm)
    return np.clip(resampled, 0.0, None).astype(np.float32)


def place_in_field_of_view(image: np.ndarray, centre: tuple[float, float], size: int) -> np.ndarray:
    """Pad/crop ``image`` to ``size`` x ``size`` with ``centre`` (row, col) at the middle."""
    out = np.zeros((size, size), dtype=np.float32)
    top = round(centre[0]) - size // 2
    left = round(centre[1]) - size // 2
    rows = slice(max(top, 0), min(top + size, image.shape[0]))
    cols = slice(max(left, 0), min(left + size, image.shape[1]))
    target = (slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
    out[target] = image[rows, cols]
    return out


def head_centre(head: np.ndarray, label: str) -> tuple[float, float]:
    """(row, column) centre of the bounding box of a foreground stack (S, H, W), all slices."""
    rows, cols = np.nonzero(head.any(axis=0))
    if len(rows) == 0:
        raise InputError(f"{label}: no head content found")
    return ((rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0)


def _select_slices(
    name: str, size: int, pixel_mm: float, max_slices: int
) -> list[tuple[int, np.ndarray]]:
    stack = STACK_LOADERS[name]()
    resampled = [resample_slice(s, stack.row_mm, stack.col_mm, pixel_mm) for s in stack.images]
    volume = np.stack(resampled)
    threshold = 0.1 * float(np.percentile(volume, 99))
    head = volume > threshold
    areas = head.sum(axis=(1, 2))
    centre = head_centre(head, name)
    placed_areas = np.array(
        [(place_in_field_of_view(h.astype(np.float32), centre, size) > 0.5).sum() for h in head]
    )
    keep = np.nonzero((areas >= 0.5 * areas.max()) & (placed_areas >= 0.1 * size * size))[0]
    if len(keep) > max_slices:
        keep = keep[np.round(np.linspace(0, len(keep) - 1, max_slices)).astype(int)]
    selected = []
    for index in keep:
        image = place_in_field_of_view(volume[index], centre, size)
        scale = float(np.percentile(image, 99))
        selected.append((int(index), image / max(scale, 1e-8)))
    return selected


@functools.lru_cache(maxsize=16)
def _load_split_cached(
    name: str, size: int, pixel_mm: float, max_slices_per_volume: int
) -> tuple[EvalSlice, ...]:
    entries = [e for e in SOURCE_TABLE if e.split == name]
    slices = []
    for entry in entries:
        for index, image in _select_slices(entry.source, size, pixel_mm, max_slices_per_volume):
            image.setflags(write=False)
            slices.append(
                EvalSlice(
                    source=entry.source,
                    volume_id=entry.volume_id,
                    slice_index=index,
                    image=image,
                    is_real_scan=entry.is_real_scan,
                    pixel_mm=pixel_mm,
                )
            )
    return tuple(slices)


def load_split(
    name: Literal["validation", "evaluation"],
    size: int = 128,
    pixel_mm: float = 2.0,
    max_slices_per_volume: int = 8,
) -> list[EvalSlice]:
    """Reference slices of the validation or evaluation split, deterministic.

    Each volume is read in display orientation, every slice resampled to ``pixel_mm`` and
    padded/cropped to ``size`` x ``size`` around the volume's head; slices whose head area is at
    least half the volume's largest (and fills at least 10 % of the field of view) are kept,
    at most ``max_slices_per_volume``, evenly spaced. Each image is scaled so its 99th
    percentile is 1; arrays are read-only (shared by a cache).
    """
    if name not in ("validation", "evaluation"):
        raise InputError(f"unknown split {name!r}; use 'validation' or 'evaluation'")
    if size < 16 or not 0.25 <= pixel_mm <= 8.0 or max_slices_per_volume < 1:
        raise InputError(
            f"need size >= 16, 0.25 <= pixel_mm <= 8, max_slices_per_volume >= 1; "
            f"got {size}, {pixel_mm}, {max_slices_per_volume}"
        )
    return list(_load_split_cached(name, size, float(pixel_mm), max_slices_per_volume))
