"""Template loaders: orientation, dtype, provenance; Colin27 is not a template."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from services.recon.data.templates import (
    SOURCE_LOADERS,
    TISSUE_CLASSES,
    load_source,
    read_spm_nifti,
    z_major,
)
from services.recon.errors import InputError

SMALL_SOURCES = ("spm_avg152T1", "spm_avg305T1", "spm_oldnorm_EPI", "spm_tpm")


@pytest.mark.parametrize("name", SMALL_SOURCES)
def test_sources_are_ras_float32_with_provenance(name: str) -> None:
    source = load_source(name)
    assert nib.aff2axcodes(source.affine) == ("R", "A", "S")
    assert source.data.dtype == np.float32
    assert source.data.shape[-1] == len(source.channels)
    assert np.isfinite(source.data).all()
    assert source.licence and source.provenance and source.volume_id
    assert not source.is_real_scan
    assert "single_subj" not in source.volume_id


def test_tpm_has_six_classes_that_sum_to_one() -> None:
    tpm = load_source("spm_tpm")
    assert tpm.channels == TISSUE_CLASSES
    total = tpm.data.sum(axis=-1)
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    assert tpm.includes_head


def test_head_centroid_sits_where_mni_puts_the_head() -> None:
    # data and affine agree: the head's centre of mass is near MNI (0, -18, 0) mm
    source = load_source("spm_avg152T1")
    data = source.data[..., 0]
    index = np.stack(np.nonzero(data > 0.2), axis=1).astype(float)
    weights = data[data > 0.2][:, None]
    centroid = (index * weights).sum(axis=0) / weights.sum()
    world = source.affine[:3, :3] @ centroid + source.affine[:3, 3]
    assert abs(world[0]) < 5 and -35 < world[1] < 0 and -25 < world[2] < 25


def test_colin27_is_not_a_training_template() -> None:
    assert not any("single_subj" in name for name in SOURCE_LOADERS)
    with pytest.raises(InputError):
        load_source("single_subj_T1")


def test_unknown_spm_member_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no member"):
        read_spm_nifti("canonical/does_not_exist.nii")


def test_z_major_keeps_ras_indexing() -> None:
    data = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    reordered = z_major(data)
    np.testing.assert_array_equal(reordered, data)
    assert reordered.transpose(2, 1, 0, 3).flags.c_contiguous
