"""Template volumes that registry packages ship, with their licence and provenance.

Every loader returns a :class:`SourceVolume`: the voxel data reoriented to RAS (axial slices
along the last spatial axis), channels last, float32, plus the voxel-to-world affine in MNI
millimetres so that slices can be sampled in world coordinates at any pixel size.

Sources (all in MNI152 space):

- nilearn: ICBM152 2009a nonlinear symmetric T1 (skull-stripped by nilearn) and GM/WM
  probability maps, 1 mm. Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging
  Centre, Montreal Neurological Institute, McGill University; permissive licence (use, copy,
  modify and distribute for any purpose without fee, with the copyright notice kept; no
  warranty). Fonov et al., NeuroImage 2011; Fonov et al., NeuroImage 2009.
- spm-runtime wheel (SPM 25.01, GPL-2.0): canonical averages avg152T1/T2/PD and avg305T1
  (2 mm, whole head), the DARTEL ``icbm152.nii`` GM/WM template (1.5 mm), the OldNorm
  templates (2 mm, smoothed) and the tissue probability maps ``tpm/TPM.nii`` (1.5 mm, six
  classes: GM, WM, CSF, bone, soft tissue, air; Ashburner & Friston, NeuroImage 2005).
  Read from the wheel's ``_spm.ctf`` zip in memory; nothing is extracted.

``single_subj_T1`` (the Colin27 subject) is deliberately *not* loadable from here: it is a real
single-subject scan and belongs to the evaluation split (see :mod:`services.recon.data.splits`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from services.recon.errors import InputError

SourceKind = Literal["intensity", "tissue"]

TISSUE_CLASSES: tuple[str, ...] = ("gm", "wm", "csf", "bone", "soft_tissue", "air")
"""Channel names of tissue sources, in the order of SPM's TPM.nii."""

MNI_LICENCE = (
    "ICBM 2009a nonlinear symmetric template (nilearn copy). Copyright (C) 1993-2009 Louis "
    "Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
    "University. Permission to use, copy, modify and distribute for any purpose without fee is "
    "granted provided the copyright notice appears in all copies; provided 'as is' without "
    "warranty."
)
SPM_LICENCE = (
    "GPL-2.0: template shipped inside the spm-runtime wheel (SPM, Wellcome Centre for Human "
    "Neuroimaging, UCL), read from spm_runtime/_spm/_spm.ctf."
)
SPM_MEMBER_PREFIX = "fsroot/_spm/cleaned/spm/"
FORBIDDEN_TRAINING_MEMBERS: frozenset[str] = frozenset({"canonical/single_subj_T1.nii"})


@dataclass(frozen=True, eq=False)
class SourceVolume:
    """One template volume in MNI space, RAS voxel order, channels last.

    ``data`` is float32 shaped (X, Y, Z, C) (memory ordered Z, Y, X, C); ``affine`` maps voxel
    indices to MNI millimetres.
    Intensity sources have one channel (the template's contrast); tissue sources carry the
    probabilities named by ``channels`` (a subset of :data:`TISSUE_CLASSES`).
    """

    name: str
    volume_id: str
    kind: SourceKind
    channels: tuple[str, ...]
    data: np.ndarray
    affine: np.ndarray
    voxel_mm: float
    includes_head: bool
    is_real_scan: bool
    licence: str
    provenance: str

    def __post_init__(self) -> None:
        if self.data.ndim != 4 or self.data.shape[-1] != len(self.channels):
            raise InputError(f"source {self.name}: data {self.data.shape} vs {self.channels}")
        object.__setattr__(self, "data", z_major(self.data))

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.data.shape[:3]
        return (x, y, z)


def z_major(data: np.ndarray) -> np.ndarray:
    """float32 (X, Y, Z, C) view whose memory is ordered (Z, Y, X, C).

    Indexing stays RAS; an axial slab is contiguous in memory, which makes sampling axial
    planes cache-friendly (see :func:`services.recon.data.sampling.sample_trilinear`).
    """
    zyx = np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0, 3))
    return zyx.transpose(2, 1, 0, 3)


def site_packages_file(package: str, *relative: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed; it ships this data file")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*relative)
    if not path.is_file():
        raise InputError(f"data file missing from package {package!r}: {path}")
    return path


def spm_archive_path() -> Path:
    """The spm-runtime wheel's ``_spm.ctf`` archive (a zip of the SPM tree)."""
    return site_packages_file("spm_runtime", "_spm", "_spm.ctf")


def read_spm_nifti(member: str) -> nib.Nifti1Image:
    """Read ``member`` (e.g. ``canonical/avg152T1.nii``) from the SPM archive, in memory."""
    with zipfile.ZipFile(spm_archive_path()) as archive:
        try:
            payload = archive.read(SPM_MEMBER_PREFIX + member)
        except KeyError as error:
            raise InputError(f"SPM archive has no member {member!r}") from error
    holder = nib.FileHolder(fileobj=io.BytesIO(payload))
    return nib.Nifti1Image.from_file_map({"header": holder, "image": holder})


def to_ras_channels_last(image: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """Reorient to RAS and return float32 (X, Y, Z, C) data with its affine."""
    canonical = nib.as_closest_canonical(image)
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(data), np.asarray(canonical.affine, dtype=np.float64)


def crop_to_content(
    data: np.ndarray, affine: np.ndarray, margin: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Crop (X, Y, Z, C) data to its nonzero bounding box plus ``margin`` voxels; fix the affine.

    Trilinear samples are unchanged (everything cut away is zero), but brain-only templates
    shrink to about 40 % of their voxels, which makes loading and sampling faster.
    """
    occupied = np.nonzero(np.any(data != 0, axis=-1))
    if len(occupied[0]) == 0:
        return data, affine
    low = [max(int(axis.min()) - margin, 0) for axis in occupied]
    high = [
        min(int(axis.max()) + margin + 1, n)
        for axis, n in zip(occupied, data.shape[:3], strict=True)
    ]
    cropped = data[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.asarray(low, dtype=np.float64) + affine[:3, 3]
    return cropped, shifted


def _voxel_mm(affine: np.ndarray) -> float:
    return float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())


def _intensity_source(
    name: str,
    volume_id: str,
    image: nib.spatialimages.SpatialImage,
    contrast: str,
    includes_head: bool,
    licence: str,
    provenance: str,
) -> SourceVolume:
    data, affine = to_ras_channels_last(image)
    data = np.clip(data, 0.0, None)
    data /= max(float(np.percentile(data[data > 0], 99.5)), 1e-6)
    return SourceVolume(
        name=name,
        volume_id=volume_id,
        kind="intensity",
        channels=(contrast,),
        data=data,
        affine=affine,
        voxel_mm=_voxel_mm(affine),
        includes_head=includes_head,
        is_real_scan=False,
        licence=licence,
        provenance=provenance,
    )


def _nilearn_volume(kind: str) -> nib.Nifti1Image:
    path = site_packages_file(
        "nilearn", "datasets", "data", f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    )
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    return image


def load_mni152_2009a_t1() -> SourceVolume:
    """nilearn's ICBM152 2009a T1 average, skull-stripped, 1 mm, with its brain mask.

    Channels: ``t1`` (scaled so its 99.5th percentile inside the brain is 1) and
    ``brain_mask`` (1 where nilearn kept the voxel, i.e. brain and inner CSF).
    """
    source = _intensity_source(
        "mni152_2009a_t1",
        "nilearn:datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        _nilearn_volume("t1"),
        contrast="t1",
        includes_head=False,
        licence=MNI_LICENCE,
        provenance="nilearn wheel; ICBM152 2009a nonlinear average T1, skull-stripped, 1 mm",
    )
    mask = (source.data > 0).astype(np.float32)
    data, affine = crop_to_content(np.concatenate([source.data, mask], axis=-1), source.affine)
    return dataclasses.replace(source, channels=("t1", "brain_mask"), data=data, affine=affine)


def load_mni152_2009a_tissues() -> SourceVolume:
    """nilearn's ICBM152 2009a GM and WM probability maps, 1 mm."""
    gm, affine = to_ras_channels_last(_nilearn_volume("gm"))
    wm, _ = to_ras_channels_last(_nilearn_volume("wm"))
    data, affine = crop_to_content(np.concatenate([gm, wm], axis=-1) / 255.0, affine)
    return SourceVolume(
        name="mni152_2009a_tissues",
        volume_id="nilearn:datasets/data/mni_icbm152_{gm,wm}_tal_nlin_sym_09a_converted.nii.gz",
        kind="tissue",
        channels=("gm", "wm"),
        data=np.ascontiguousarray(np.clip(data, 0.0, 1.0), dtype=np.float32),
        affine=affine,
        voxel_mm=_voxel_mm(affine),
        includes_head=False,
        is_real_scan=False,
        licence=MNI_LICENCE,
        provenance="nilearn wheel; ICBM152 2009a nonlinear GM/WM probability maps, 1 mm",
    )


def load_spm_canonical(
    contrast: Literal["avg152T1", "avg152T2", "avg152PD", "avg305T1"],
) -> SourceVolume:
    """An SPM canonical group average (whole head, 2 mm)."""
    member = f"canonical/{contrast}.nii"
    subjects = "305" if contrast.startswith("avg305") else "152"
    return _intensity_source(
        f"spm_{contrast}",
        f"spm-runtime:{member}",
        read_spm_nifti(member),
        contrast=contrast[-2:].lower(),
        includes_head=True,
        licence=SPM_LICENCE,
        provenance=f"SPM {member}: average of {subjects} normal subjects in MNI space, 2 mm",
    )


def load_spm_oldnorm(contrast: Literal["T1", "T2", "PD", "EPI"]) -> SourceVolume:
    """An SPM OldNorm template (whole head, 2 mm, heavily smoothed).

    The OldNorm T1/T2/PD templates are the avg152 averages smoothed by about 4 mm FWHM
    (correlation 0.999 after smoothing), so they are *not* independent of those volumes.
    """
    member = f"toolbox/OldNorm/{contrast}.nii"
    return _intensity_source(
        f"spm_oldnorm_{contrast}",
        f"spm-runtime:{member}",
        read_spm_nifti(member),
        contrast=contrast.lower(),
        includes_head=True,
        licence=SPM_LICENCE,
        provenance=f"SPM {member}: smoothed normalisation template, 2 mm",
    )


def load_spm_tpm() -> SourceVolume:
    """SPM's six-class tissue probability maps (GM, WM, CSF, bone, soft tissue, air), 1.5 mm."""
    data, affine = to_ras_channels_last(read_spm_nifti("tpm/TPM.nii"))
    data = np.clip(data, 0.0, 1.0)
    data /= np.maximum(data.sum(axis=-1, keepdims=True), 1e-6)
    return SourceVolume(
        name="spm_tpm",
        volume_id="spm-runtime:tpm/TPM.nii",
        kind="tissue",
        channels=TISSUE_CLASSES,
        data=np.ascontiguousarray(data, dtype=np.float32),
        affine=affine,
        voxel_mm=_voxel_mm(affine),
        includes_head=True,
        is_real_scan=False,
        licence=SPM_LICENCE,
        provenance="SPM tpm/TPM.nii: tissue probability maps from the IXI population, 1.5 mm",
    )


def load_spm_dartel_icbm152() -> SourceVolume:
    """SPM's DARTEL ``icbm152.nii`` GM/WM template, 1.5 mm."""
    data, affine = to_ras_channels_last(read_spm_nifti("toolbox/DARTEL/icbm152.nii"))
    return SourceVolume(
        name="spm_dartel_icbm152",
        volume_id="spm-runtime:toolbox/DARTEL/icbm152.nii",
        kind="tissue",
        channels=("gm", "wm"),
        data=np.ascontiguousarray(np.clip(data, 0.0, 1.0), dtype=np.float32),
        affine=affine,
        voxel_mm=_voxel_mm(affine),
        includes_head=False,
        is_real_scan=False,
        licence=SPM_LICENCE,
        provenance="SPM toolbox/DARTEL/icbm152.nii: ICBM152 GM/WM template, 1.5 mm",
    )


SOURCE_LOADERS: dict[str, Callable[[], SourceVolume]] = {
    "mni152_2009a_t1": load_mni152_2009a_t1,
    "mni152_2009a_tissues": load_mni152_2009a_tissues,
    "spm_avg152T1": lambda: load_spm_canonical("avg152T1"),
    "spm_avg152T2": lambda: load_spm_canonical("avg152T2"),
    "spm_avg152PD": lambda: load_spm_canonical("avg152PD"),
    "spm_avg305T1": lambda: load_spm_canonical("avg305T1"),
    "spm_oldnorm_T1": lambda: load_spm_oldnorm("T1"),
    "spm_oldnorm_T2": lambda: load_spm_oldnorm("T2"),
    "spm_oldnorm_PD": lambda: load_spm_oldnorm("PD"),
    "spm_oldnorm_EPI": lambda: load_spm_oldnorm("EPI"),
    "spm_tpm": load_spm_tpm,
    "spm_dartel_icbm152": load_spm_dartel_icbm152,
}
"""Every template this module can load, by source name."""


@functools.cache
def load_source(name: str) -> SourceVolume:
    """Load (once per process) the template called ``name``; see :data:`SOURCE_LOADERS`."""
    try:
        loader = SOURCE_LOADERS[name]
    except KeyError as error:
        known = ", ".join(sorted(SOURCE_LOADERS))
        raise InputError(f"unknown template source {name!r}; known: {known}") from error
    return loader()
