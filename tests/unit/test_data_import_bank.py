"""`mrdiff data import-bank`: a site's fully sampled scans become a slice bank training reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from services.cli import main
from services.recon.data.bank import SliceBank, read_manifest
from services.recon.data.import_bank import import_bank
from services.recon.data.scan_slices import require_fully_sampled
from services.recon.errors import InputError
from services.recon.io import write_dicom_series, write_kspace_h5, write_nifti
from services.recon.io.volumes import KspaceVolume
from services.recon.training import open_bank

MATRIX = 32
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN55501", "PatientBirthDate": "19700101"}


def write_site_nifti(path: Path, phantom: np.ndarray) -> Path:
    """A magnitude volume with 2 mm pixels whose first slice is background only."""
    volume = phantom * 100.0
    volume[0] = 0.0
    return write_nifti(path, volume, (2.0, 2.0), 4.0)


def write_site_kspace(path: Path, kspace: np.ndarray, mask: np.ndarray | None = None) -> Path:
    """A multi-coil fastMRI-style HDF5 (fully sampled unless ``mask`` says otherwise)."""
    slices, _, height, width = kspace.shape
    full = np.ones((slices, height, width), bool) if mask is None else mask
    volume = KspaceVolume(kspace=kspace * full[:, None], multicoil=True, mask=full)
    return write_kspace_h5(path, volume)


def write_site_dicom(folder: Path, phantom: np.ndarray) -> Path:
    """An MR series whose headers name a (made-up) patient."""
    write_dicom_series(folder, phantom * 100.0, (1.25, 1.5), 3.0, reference=PATIENT)
    return folder


@pytest.fixture(scope="module")
def site_inputs(
    tmp_path_factory: pytest.TempPathFactory, io_phantom: np.ndarray, io_coil_kspace: np.ndarray
) -> list[Path]:
    folder = tmp_path_factory.mktemp("site")
    return [
        write_site_nifti(folder / "doe_jane_t1.nii.gz", io_phantom),
        write_site_kspace(folder / "doe_jane_raw.h5", io_coil_kspace),
        write_site_dicom(folder / "doe_jane_series", io_phantom),
    ]


@pytest.fixture(scope="module")
def site_bank(site_inputs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("banks") / "site_bank"
    import_bank(site_inputs, out, size=MATRIX, seed=4, shard_size=4)
    return out


def test_imported_bank_opens_with_the_training_dataset(site_bank: Path) -> None:
    manifest = read_manifest(site_bank)
    assert manifest["n"] == 8 and manifest["slices_skipped"] == 1 and manifest["size"] == MATRIX
    assert [shard["count"] for shard in manifest["shards"]] == [4, 4]
    dataset = open_bank(site_bank)
    assert len(dataset) == 8  # type: ignore[arg-type]
    item = dataset[0]
    assert item.shape == (2, MATRIX, MATRIX) and item.dtype == torch.float32
    plain = SliceBank(site_bank, augment=False)
    magnitudes = torch.stack([plain[i] for i in range(len(plain))]).square().sum(1).sqrt()
    p99 = torch.quantile(magnitudes.flatten(1), 0.99, dim=1)
    torch.testing.assert_close(p99, torch.ones(8), atol=2e-3, rtol=0)


def test_manifest_counts_and_hashes_every_source(site_bank: Path, site_inputs: list[Path]) -> None:
    sources = read_manifest(site_bank)["sources"]
    assert [source["slices"] for source in sources] == [3, 3, 3]
    assert [source["slices_kept"] for source in sources] == [2, 3, 3]
    for source, path in zip(sources[:2], site_inputs[:2], strict=True):
        assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [source["phase"] for source in sources][1] == "measured"
    assert sources[0]["phase"].startswith("synthetic")
    assert sources[0]["pixel_mm_in"] == [2.0, 2.0] and sources[2]["pixel_mm_in"] == [1.25, 1.5]
    assert "no pixel size" in sources[1]["geometry"]


def test_magnitude_slices_get_a_smooth_phase(site_bank: Path) -> None:
    plain = SliceBank(site_bank, augment=False)
    first = plain[0]  # from the NIfTI: magnitude only
    assert float(first[1].abs().max()) > 0.1


def test_manifest_has_no_file_names_or_patient_headers(
    site_inputs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bank"
    main(["data", "import-bank", *map(str, site_inputs), "--out", str(out), "--matrix", "16"])
    printed = capsys.readouterr()
    text = "".join(path.read_text() for path in out.iterdir() if path.suffix in (".json", ".csv"))
    for secret in ("doe_jane", "Doe^Jane", "MRN55501", "19700101", ".nii", ".h5"):
        assert secret.lower() not in text.lower(), secret
        assert secret.lower() not in (printed.out + printed.err).lower(), secret
    assert "wrote 8 slices from 3 inputs" in printed.out


def test_existing_bank_is_refused(
    site_bank: Path, site_inputs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {path.name: path.read_bytes() for path in site_bank.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "import-bank", str(site_inputs[0]), "--out", str(site_bank)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "not empty" in message
    assert {path.name: path.read_bytes() for path in site_bank.iterdir()} == before


def undersampled_kspace(folder: Path, kspace: np.ndarray, mask: np.ndarray) -> Path:
    return write_site_kspace(folder / "under.h5", kspace, mask)


def not_a_scan(folder: Path, kspace: np.ndarray, mask: np.ndarray) -> Path:
    path = folder / "junk.h5"
    path.write_bytes(b"not an HDF5 file" * 8)
    return path


def background_only(folder: Path, kspace: np.ndarray, mask: np.ndarray) -> Path:
    return write_nifti(folder / "empty.nii", np.zeros((2, 16, 16), np.float32), (2.0, 2.0), 2.0)


BAD_INPUTS = {
    "undersampled k-space": (undersampled_kspace, "undersampled"),
    "not a scan": (not_a_scan, "hdf5"),
    "background only": (background_only, "nothing to import"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(
    case: str,
    tmp_path: Path,
    io_coil_kspace: np.ndarray,
    io_line_mask: np.ndarray,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_input, expected = BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    bad = make_input(inputs, io_coil_kspace, io_line_mask)
    out = tmp_path / "bank"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "import-bank", str(bad), "--out", str(out), "--matrix", "16"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1, message
    assert expected in message.lower(), message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inputs"]


def test_same_input_twice_is_refused(site_inputs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="same content"):
        import_bank([site_inputs[0], site_inputs[0]], tmp_path / "bank", size=16)
    assert list(tmp_path.iterdir()) == []


def test_fully_sampled_allows_zero_padded_edges_but_not_gaps() -> None:
    mask = np.zeros((1, 8, 8), bool)
    mask[0, :, 2:6] = True
    require_fully_sampled(mask, "input 1")
    mask[0, :, 3] = False
    with pytest.raises(InputError, match="undersampled"):
        require_fully_sampled(mask, "input 1")
