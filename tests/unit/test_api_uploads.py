"""Upload checks: format sniffing (415), safe zip unpacking, reader errors (422), size limits."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from services.api.errors import install_error_handlers
from services.api.limits import BodySizeLimit
from services.api.upload_files import (
    UnsupportedUploadError,
    check_part_content_type,
    check_upload,
    safe_filename,
    save_stream,
    unpack_dicom_zip,
)
from services.recon.errors import InputError
from services.recon.io import write_dicom_series

LIMIT = 10_000


def write_kspace(path: Path, slices: int = 2, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    shape = (slices, size, size)
    kspace = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("kspace", data=kspace.astype(np.complex64))
    return path


def saved(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def dicom_series(folder: Path, slices: int = 3) -> list[Path]:
    images = np.random.default_rng(1).random((slices, 16, 16)).astype(np.float32)
    return write_dicom_series(folder, images, (1.0, 1.0), 2.0, None, "unit test series")


def test_hdf5_kspace_upload_is_read_and_counted(tmp_path: Path) -> None:
    path = write_kspace(tmp_path / "upload.part", slices=3)
    checked = check_upload(path, "knee.h5", "0" * 64, path.stat().st_size, LIMIT, tmp_path)
    assert checked.kind == "hdf5" and checked.slices == 3 and checked.holds_kspace
    assert [name for _, name in checked.files] == ["knee.h5"]


def test_zip_of_a_dicom_series_is_unpacked_flat(tmp_path: Path) -> None:
    files = dicom_series(tmp_path / "series")
    archive = tmp_path / "upload.part"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index, file in enumerate(files):
            bundle.write(file, f"../../evil/{index}/{file.name}")  # paths are never used
        bundle.writestr("DICOMDIR", b"ignored")
        bundle.writestr("notes.txt", b"not dicom")
    work = tmp_path / "work"
    work.mkdir()
    checked = check_upload(archive, "series.zip", "1" * 64, archive.stat().st_size, 10**7, work)
    assert checked.kind == "dicom-zip" and checked.slices == 3 and not checked.holds_kspace
    assert [name for _, name in checked.files] == ["00001.dcm", "00002.dcm", "00003.dcm"]
    assert all(path.parent == work / "series" for path, _ in checked.files)
    assert not (tmp_path / "evil").exists()


def test_zip_bomb_and_zip_without_dicom_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("a.dcm", b"\0" * 1_000_000)
    with pytest.raises(InputError, match="unpacks to more than"):
        unpack_dicom_zip(bomb, tmp_path / "out", max_bytes=100_000)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as bundle:
        bundle.writestr("readme.txt", b"hello")
    with pytest.raises(InputError, match="no DICOM files"):
        unpack_dicom_zip(empty, tmp_path / "out2", max_bytes=100_000)


def test_unknown_bytes_are_unsupported_and_bad_content_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedUploadError, match="unsupported file format"):
        check_upload(saved(tmp_path, "a", b"hello world"), "a.txt", "", 11, LIMIT, tmp_path)
    with h5py.File(tmp_path / "nokspace.part", "w") as h5:
        h5.create_dataset("image", data=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(InputError, match="without `kspace`") as error:
        check_upload(tmp_path / "nokspace.part", "x.h5", "", 1, LIMIT, tmp_path)
    assert not isinstance(error.value, UnsupportedUploadError)
    corrupt_dicom = saved(tmp_path, "c.part", b"\0" * 128 + b"DICM" + b"\x01\x02garbage")
    with pytest.raises(InputError) as dicom_error:
        check_upload(corrupt_dicom, "c.dcm", "", 1, LIMIT, tmp_path)
    assert not isinstance(dicom_error.value, UnsupportedUploadError)


def test_part_content_types_and_file_names() -> None:
    check_part_content_type("application/octet-stream")
    check_part_content_type(None)
    with pytest.raises(UnsupportedUploadError, match="text/plain"):
        check_part_content_type("text/plain; charset=utf-8")
    assert safe_filename("C:\\scans\\..\\knee scan.h5", "x") == "knee_scan.h5"
    assert safe_filename("../../", "fallback.bin") == "fallback.bin"


def test_save_stream_hashes_what_it_writes(tmp_path: Path) -> None:
    digest, size = save_stream(io.BytesIO(b"abc"), tmp_path / "f")
    assert size == 3 and digest.startswith("ba7816bf")


@pytest.fixture
def limited_client() -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(BodySizeLimit, limit_for=lambda scope: 1000)
    with TestClient(app) as client:
        yield client


def test_body_limit_checks_content_length_and_counts_streamed_bytes(
    limited_client: TestClient,
) -> None:
    assert limited_client.post("/echo", content=b"x" * 1000).json() == {"bytes": 1000}
    declared = limited_client.post("/echo", content=b"x" * 1001)
    assert declared.status_code == 413 and "1000 bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * 300

    streamed = limited_client.post("/echo", content=chunks())  # chunked: no Content-Length
    assert streamed.status_code == 413 and "presigned URL" in streamed.json()["detail"]
