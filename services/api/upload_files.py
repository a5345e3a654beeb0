"""Check an uploaded file before it becomes a job: what format it is, and whether it reads.

The format is sniffed from the bytes (HDF5 signature, ``PK`` zip header, ``DICM`` preamble;
NIfTI by name): anything else is *unsupported* (HTTP 415). A supported file is then read with
the same reader the pipeline uses (:func:`services.recon.io.read_input`); a reader's
:class:`InputError` makes it *invalid* (HTTP 422) with the reader's message. A zip is unpacked
safely (no paths kept, member count and total size bounded, so no zip bomb and no zip slip) into
flat numbered ``.dcm`` files, which must form one DICOM series.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import zipfile
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import h5py

from services.recon.errors import InputError
from services.recon.io import ImageVolume, KspaceVolume, read_input

InputKind = Literal["hdf5", "dicom", "dicom-zip", "nifti"]
MAX_ZIP_MEMBERS = 10_000
ZIP_EXPANSION_LIMIT = 4  # unpacked bytes at most this many times the upload limit
COPY_CHUNK = 1024 * 1024
ACCEPTED_PART_TYPES = frozenset(
    {
        "",
        "application/octet-stream",
        "application/x-hdf5",
        "application/x-hdf",
        "application/hdf5",
        "application/dicom",
        "application/zip",
        "application/x-zip-compressed",
        "application/gzip",
        "application/x-gzip",
        "application/x-nifti",
    }
)
SUPPORTED = "fastMRI HDF5, ISMRMRD HDF5, a DICOM file, a zip of a DICOM series, or NIfTI"


class UnsupportedUploadError(InputError):
    """The upload is not a format mrdiff reads (HTTP 415)."""


class CheckedUpload(NamedTuple):
    """A readable upload: the files to store (local path, name to keep) and what they hold."""

    kind: InputKind
    files: list[tuple[Path, str]]
    sha256: str
    size: int
    slices: int
    holds_kspace: bool


def safe_filename(name: str | None, fallback: str) -> str:
    """The last path segment of a client's file name, reduced to ``A-Za-z0-9._+=-``."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._+=-]", "_", base).lstrip("._-")[:120]
    return cleaned or fallback


def check_part_content_type(content_type: str | None) -> None:
    """415 unless the file part's declared type is one a scanner file may carry."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared not in ACCEPTED_PART_TYPES:
        raise UnsupportedUploadError(
            f"unsupported content type {declared!r} for field 'file'; "
            f"send {SUPPORTED} as application/octet-stream"
        )


def save_stream(source: BinaryIO, target: Path) -> tuple[str, int]:
    """Copy ``source`` to ``target``; returns (sha256 hex, bytes)."""
    hasher = hashlib.sha256()
    size = 0
    with open(target, "wb") as sink:
        while chunk := source.read(COPY_CHUNK):
            hasher.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def file_sha256(path: Path) -> str:
    """Hex sha256 of a local file."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def sniff_kind(path: Path, filename: str) -> InputKind:
    """The upload's format from its bytes (and, for NIfTI, its name); 415 if none fits."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if not head:
        raise InputError(f"{filename}: empty file")
    if h5py.is_hdf5(path):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return "dicom-zip"
    if head[128:132] == b"DICM":
        return "dicom"
    lowered = filename.lower()
    if lowered.endswith((".nii", ".nii.gz")):
        return "nifti"
    raise UnsupportedUploadError(f"{filename}: unsupported file format; expected {SUPPORTED}")


def unpack_dicom_zip(archive: Path, target: Path, max_bytes: int) -> list[Path]:
    """Extract the DICOM members of ``archive`` into ``target`` as ``00001.dcm`` ...

    Member paths are never used (no zip slip); directories, ``DICOMDIR`` and files without the
    DICM preamble are skipped; more than :data:`MAX_ZIP_MEMBERS` members or more than
    ``max_bytes`` unpacked is refused.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_MEMBERS:
                raise InputError(f"zip has {len(members)} files; at most {MAX_ZIP_MEMBERS}")
            if any(m.flag_bits & 0x1 for m in members):
                raise InputError("zip is encrypted; upload an unencrypted zip")
            target.mkdir(parents=True, exist_ok=True)
            written: list[Path] = []
            budget = max_bytes
            for member in members:
                if Path(member.filename).name.upper() == "DICOMDIR":
                    continue
                path = target / f"{len(written) + 1:05d}.dcm"
                with bundle.open(member) as source, open(path, "wb") as sink:
                    while chunk := source.read(COPY_CHUNK):
                        budget -= len(chunk)
                        if budget < 0:
                            raise InputError(f"zip unpacks to more than {max_bytes} bytes")
                        sink.write(chunk)
                with open(path, "rb") as handle:
                    is_dicom = handle.read(132)[128:132] == b"DICM"
                if is_dicom:
                    written.append(path)
                else:
                    path.unlink()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise InputError(f"zip is damaged or uses an unsupported feature: {error}") from None
    if not written:
        raise InputError("zip holds no DICOM files (files with the DICM preamble)")
    return written


def check_upload(
    path: Path, filename: str, sha256: str, size: int, max_bytes: int, work_dir: Path
) -> CheckedUpload:
    """Sniff and read the upload at ``path``; 415/422 errors name the problem."""
    kind = sniff_kind(path, filename)
    if kind == "dicom-zip":
        folder = work_dir / "series"
        members = unpack_dicom_zip(path, folder, max_bytes * ZIP_EXPANSION_LIMIT)
        volume = read_input(folder)
        files = [(member, member.name) for member in members]
    else:
        if kind == "nifti" and not filename.lower().endswith((".nii", ".nii.gz")):
            filename += ".nii"
        named = path.with_name(filename)
        if named != path:
            shutil.move(path, named)
        volume = read_input(named)
        files = [(named, filename)]
    return CheckedUpload(
        kind=kind,
        files=files,
        sha256=sha256,
        size=size,
        slices=_slices(volume),
        holds_kspace=isinstance(volume, KspaceVolume),
    )


def _slices(volume: KspaceVolume | ImageVolume) -> int:
    if isinstance(volume, KspaceVolume):
        return int(volume.kspace.shape[0])
    return int(volume.images.shape[0])
