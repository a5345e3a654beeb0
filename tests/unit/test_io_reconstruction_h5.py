"""Reconstruction output HDF5: design.md layout, atomic writes, overwrite protection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from services.recon.errors import InputError
from services.recon.io import (
    RESEARCH_USE_ONLY,
    atomic_output,
    read_reconstruction_h5,
    write_reconstruction_h5,
)


def test_round_trip_with_variance_extra_maps_and_attrs(
    tmp_path: Path, io_phantom: np.ndarray, io_line_mask: np.ndarray
) -> None:
    variance = np.abs(io_phantom) * 0.01
    anomaly = np.clip(io_phantom - 0.5, 0, None)
    attrs = {
        "method": "diffusion",
        "seed": 11,
        "samples": 8,
        "dc_residual": np.array([0.1, 0.2]),
        "warm_start": None,
        "options": {"steps": 50},
    }
    path = write_reconstruction_h5(
        tmp_path / "recon.h5",
        io_phantom,
        io_line_mask,
        attrs,
        variance=variance,
        extra={"anomaly_map": anomaly, "anomaly_mask": anomaly > 0},
    )
    datasets, back = read_reconstruction_h5(path)
    assert set(datasets) == {"reconstruction", "variance", "mask", "anomaly_map", "anomaly_mask"}
    assert datasets["reconstruction"].dtype == np.float32
    np.testing.assert_array_equal(datasets["reconstruction"], io_phantom)
    np.testing.assert_allclose(datasets["variance"], variance, rtol=1e-6)
    assert datasets["mask"].dtype == bool
    np.testing.assert_array_equal(datasets["anomaly_mask"], anomaly > 0)
    assert back["research_use_only"] == RESEARCH_USE_ONLY
    assert back["method"] == "diffusion" and back["seed"] == 11
    assert back["dc_residual"] == [0.1, 0.2]
    assert "warm_start" not in back  # None means absent, never a stand-in value
    assert back["options"] == '{"steps": 50}'


def test_without_variance_there_is_no_variance_dataset(
    tmp_path: Path, io_phantom: np.ndarray
) -> None:
    path = write_reconstruction_h5(
        tmp_path / "r.h5", io_phantom, np.ones(32, bool), {"research_use_only": "something else"}
    )
    datasets, attrs = read_reconstruction_h5(path)
    assert "variance" not in datasets
    assert attrs["research_use_only"] == RESEARCH_USE_ONLY


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path, io_phantom: np.ndarray) -> None:
    path = write_reconstruction_h5(tmp_path / "r.h5", io_phantom, np.ones(32, bool), {"seed": 1})
    with pytest.raises(InputError, match=str(path)):
        write_reconstruction_h5(path, io_phantom * 2, np.ones(32, bool), {"seed": 2})
    assert read_reconstruction_h5(path)[1]["seed"] == 1
    write_reconstruction_h5(path, io_phantom * 2, np.ones(32, bool), {"seed": 2}, overwrite=True)
    assert read_reconstruction_h5(path)[1]["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]


BAD_OUTPUTS: dict[str, tuple[dict[str, Any], str]] = {
    "nan reconstruction": (dict(reconstruction=np.full((2, 8, 8), np.nan)), "NaN"),
    "2-D reconstruction": (dict(reconstruction=np.ones((8, 8))), "slices, H, W"),
    "complex reconstruction": (dict(reconstruction=np.ones((2, 8, 8), complex)), "real-valued"),
    "variance shape": (dict(variance=np.ones((2, 8, 7))), "variance shape"),
    "negative variance": (dict(variance=-np.ones((2, 8, 8))), "negative"),
    "mask misfit": (dict(mask=np.ones((3, 8, 8), bool)), "mask shape"),
    "reserved extra": (dict(extra={"mask": np.ones((2, 8, 8))}), "reserved"),
    "unstorable attr": (dict(attrs={"x": object()}), "cannot store"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_bad_outputs_raise_and_leave_nothing(tmp_path: Path, case: str) -> None:
    arguments: dict[str, Any] = {
        "reconstruction": np.ones((2, 8, 8), np.float32),
        "mask": np.ones(8, bool),
        "attrs": {},
    }
    changes, message = BAD_OUTPUTS[case]
    arguments.update(changes)
    with pytest.raises(InputError, match=message):
        write_reconstruction_h5(tmp_path / "out.h5", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_read_rejects_files_without_reconstruction(tmp_path: Path) -> None:
    path = tmp_path / "k.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("kspace", data=np.ones((1, 4, 4), np.complex64))
    with pytest.raises(InputError, match=r"k.h5: no `reconstruction`"):
        read_reconstruction_h5(path)


def test_atomic_output_removes_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_output(target) as temp:
        assert temp.parent == target.parent and temp.name.endswith(".nii.gz")
        temp.write_bytes(b"partial")
        raise RuntimeError("writer crashed")
    assert list(target.parent.iterdir()) == []
