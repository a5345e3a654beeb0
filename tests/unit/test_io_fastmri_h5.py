"""fastMRI-layout k-space HDF5: every mask shape, single/multi-coil, and every bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from services.recon.errors import InputError
from services.recon.io import KspaceVolume, read_fastmri_h5, write_kspace_h5


def write_raw(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as h5:
        for name, values in datasets.items():
            h5.create_dataset(name, data=values)
        h5.attrs["acquisition"] = "CORPD_FBK"
        h5.attrs["patient_id"] = "abc123"
    return path


def masks_for(io_line_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The same sampling as a (W,), an (H, W) and a per-slice (S, H, W) mask."""
    columns = io_line_mask[0, 0]
    plane = io_line_mask[0].copy()
    plane[:2] = True  # not constant over rows: a genuine (H, W) mask
    return {"W": columns, "HW": plane, "SHW": io_line_mask}


@pytest.mark.parametrize("multicoil", [False, True])
@pytest.mark.parametrize("mask_shape", ["W", "HW", "SHW", "none"])
def test_read_every_mask_shape(
    tmp_path: Path,
    io_coil_kspace: np.ndarray,
    io_line_mask: np.ndarray,
    multicoil: bool,
    mask_shape: str,
) -> None:
    kspace = io_coil_kspace if multicoil else io_coil_kspace[:, 0]
    expected_mask = np.broadcast_to(
        masks_for(io_line_mask).get(mask_shape, io_line_mask), io_line_mask.shape
    )
    datasets = {"kspace": kspace}
    if mask_shape == "none":
        # without a mask, zero samples are unsampled: zero the unsampled ones in the file
        full = io_coil_kspace * expected_mask[:, None]
        datasets["kspace"] = full if multicoil else full[:, 0]
    else:
        datasets["mask"] = masks_for(io_line_mask)[mask_shape]
    volume = read_fastmri_h5(write_raw(tmp_path / "k.h5", **datasets))

    assert volume.multicoil is multicoil
    assert volume.kspace.dtype == np.complex64
    assert volume.kspace.shape == (3, 4 if multicoil else 1, 32, 32)
    np.testing.assert_array_equal(volume.mask, expected_mask)
    expected = (io_coil_kspace if multicoil else io_coil_kspace[:, :1]) * expected_mask[:, None]
    np.testing.assert_allclose(volume.kspace, expected, atol=1e-6)
    assert volume.source == "k.h5"
    assert volume.attrs["acquisition"] == "CORPD_FBK"
    assert "patient_id" not in volume.attrs
    assert volume.simulated is False


def test_mask_zeroes_kspace_outside_it(tmp_path: Path, io_coil_kspace: np.ndarray) -> None:
    columns = np.zeros(32, dtype=np.float32)
    columns[10:20] = 1.0  # fastMRI stores float masks
    volume = read_fastmri_h5(write_raw(tmp_path / "k.h5", kspace=io_coil_kspace, mask=columns))
    assert np.all(volume.kspace[:, :, :, :10] == 0)
    assert np.all(volume.kspace[:, :, :, 10:20] == io_coil_kspace[:, :, :, 10:20])


def test_complex128_and_compound_kspace_are_accepted(
    tmp_path: Path, io_coil_kspace: np.ndarray
) -> None:
    single = io_coil_kspace[:, 0]
    compound = np.empty(single.shape, dtype=[("real", "<f4"), ("imag", "<f4")])
    compound["real"], compound["imag"] = single.real, single.imag
    for name, data in (("c128.h5", single.astype(np.complex128)), ("compound.h5", compound)):
        volume = read_fastmri_h5(write_raw(tmp_path / name, kspace=data))
        np.testing.assert_allclose(volume.kspace[:, 0], single, atol=1e-6)


def test_write_read_round_trip_keeps_attrs_and_compacts_mask(
    tmp_path: Path, io_coil_kspace: np.ndarray, io_line_mask: np.ndarray
) -> None:
    columns_only = np.broadcast_to(io_line_mask[0, 0], io_line_mask.shape).copy()
    volume = KspaceVolume(
        kspace=io_coil_kspace * columns_only[:, None],
        multicoil=True,
        mask=columns_only,
        attrs={"mask_kind": "equispaced", "accel": 2.0, "seed": 3, "options": {"a": 1}},
        simulated=True,
        pixel_spacing_mm=(1.5, 2.0),
        source="x",
    )
    path = write_kspace_h5(tmp_path / "out.h5", volume)
    with h5py.File(path, "r") as h5:
        assert h5["mask"].shape == (32,)
        assert h5.attrs["research_use_only"] == "research use only, not for diagnosis"
        assert bool(h5.attrs["simulated_kspace"]) is True
    back = read_fastmri_h5(path)
    np.testing.assert_array_equal(back.kspace, volume.kspace)
    np.testing.assert_array_equal(back.mask, columns_only)
    assert back.simulated is True
    assert back.pixel_spacing_mm == (1.5, 2.0)
    assert back.attrs["seed"] == 3
    assert back.attrs["options"] == '{"a": 1}'


def test_single_coil_is_stored_three_dimensional(
    tmp_path: Path, io_coil_kspace: np.ndarray, io_line_mask: np.ndarray
) -> None:
    volume = KspaceVolume(io_coil_kspace[:, :1] * io_line_mask[:, None], False, io_line_mask)
    path = write_kspace_h5(tmp_path / "single.h5", volume)
    with h5py.File(path, "r") as h5:
        assert h5["kspace"].shape == (3, 32, 32)
        assert h5["mask"].shape == (3, 32, 32)
    assert read_fastmri_h5(path).multicoil is False


def test_write_refuses_to_overwrite(
    tmp_path: Path, io_coil_kspace: np.ndarray, io_line_mask: np.ndarray
) -> None:
    volume = KspaceVolume(io_coil_kspace * io_line_mask[:, None], True, io_line_mask)
    path = write_kspace_h5(tmp_path / "out.h5", volume)
    before = path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        write_kspace_h5(path, volume)
    assert path.read_bytes() == before
    write_kspace_h5(path, volume, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_spacing_from_fastmri_ismrmrd_header(tmp_path: Path, io_coil_kspace: np.ndarray) -> None:
    xml = (
        '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        "<experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>"
        "</experimentalConditions><encoding><encodedSpace><matrixSize><x>32</x><y>32</y><z>1</z>"
        "</matrixSize><fieldOfView_mm><x>64</x><y>48</y><z>3</z></fieldOfView_mm></encodedSpace>"
        "<reconSpace><matrixSize><x>16</x><y>32</y><z>1</z></matrixSize><fieldOfView_mm><x>32</x>"
        "<y>48</y><z>3</z></fieldOfView_mm></reconSpace><encodingLimits/>"
        "<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"
    )
    path = write_raw(tmp_path / "k.h5", kspace=io_coil_kspace)
    with h5py.File(path, "a") as h5:
        h5.create_dataset("ismrmrd_header", data=xml.encode())
    assert read_fastmri_h5(path).pixel_spacing_mm == (2.0, 1.5)


BAD_KSPACE_CASES: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "real-valued": ({"kspace": np.ones((2, 8, 8), np.float32)}, "real-valued"),
    "wrong ndim": ({"kspace": np.ones((8, 8), np.complex64)}, "got shape"),
    "five dims": ({"kspace": np.ones((1, 1, 1, 8, 8), np.complex64)}, "got shape"),
    "empty": ({"kspace": np.ones((0, 8, 8), np.complex64)}, "empty"),
    "nan": ({"kspace": np.full((2, 8, 8), np.nan, np.complex64)}, "NaN"),
    "inf": ({"kspace": np.full((2, 8, 8), np.inf, np.complex64)}, "inf"),
    "all zero": ({"kspace": np.zeros((2, 8, 8), np.complex64)}, "all zeros"),
    "no kspace": ({"reconstruction": np.ones((2, 8, 8), np.float32)}, "no `kspace`"),
    "mask misfit": (
        {"kspace": np.ones((2, 8, 8), np.complex64), "mask": np.ones(7, bool)},
        r"mask.*does not fit",
    ),
    "mask 2d misfit": (
        {"kspace": np.ones((2, 8, 8), np.complex64), "mask": np.ones((8, 7), bool)},
        r"mask.*does not fit",
    ),
    "mask samples nothing": (
        {"kspace": np.ones((2, 8, 8), np.complex64), "mask": np.zeros(8, bool)},
        "selects no",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_KSPACE_CASES))
def test_bad_hdf5_inputs_raise_input_error(tmp_path: Path, case: str) -> None:
    datasets, message = BAD_KSPACE_CASES[case]
    path = write_raw(tmp_path / "bad.h5", **datasets)
    with pytest.raises(InputError, match=message) as caught:
        read_fastmri_h5(path)
    assert "bad.h5" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_hdf5_empty_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    empty = tmp_path / "empty.h5"
    empty.touch()
    with pytest.raises(InputError, match=r"notes.h5: not an HDF5 file"):
        read_fastmri_h5(text)
    with pytest.raises(InputError, match=r"empty.h5: empty file"):
        read_fastmri_h5(empty)
    with pytest.raises(InputError, match=r"missing.h5: no such file"):
        read_fastmri_h5(tmp_path / "missing.h5")


def test_bad_volume_to_write_leaves_no_file(tmp_path: Path, io_coil_kspace: np.ndarray) -> None:
    wrong_mask = KspaceVolume(io_coil_kspace, True, np.ones((3, 32, 31), bool))
    with pytest.raises(InputError, match="mask shape"):
        write_kspace_h5(tmp_path / "out.h5", wrong_mask)
    unstorable = KspaceVolume(
        io_coil_kspace, True, np.ones((3, 32, 32), bool), attrs={"x": object()}
    )
    with pytest.raises(InputError, match="cannot store"):
        write_kspace_h5(tmp_path / "out.h5", unstorable)
    assert list(tmp_path.iterdir()) == []
