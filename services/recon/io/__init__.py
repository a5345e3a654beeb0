"""Readers and writers: fastMRI HDF5, ISMRMRD, DICOM series, NIfTI, PNG; one volume type each way.

Everything written says "research use only, not for diagnosis"; bad input raises
:class:`services.recon.errors.InputError`; outputs are written atomically.
"""

from services.recon.io.atomic import atomic_output
from services.recon.io.dicom_reader import read_dicom_series
from services.recon.io.dicom_writer import write_dicom_series
from services.recon.io.fastmri_h5 import read_fastmri_h5, write_kspace_h5
from services.recon.io.ismrmrd_raw import read_ismrmrd, write_ismrmrd
from services.recon.io.nifti import read_nifti, write_nifti
from services.recon.io.notice import RESEARCH_USE_ONLY, RESEARCH_USE_ONLY_DICOM
from services.recon.io.png import png_bytes, write_png
from services.recon.io.reconstruction_h5 import read_reconstruction_h5, write_reconstruction_h5
from services.recon.io.sniff import read_input
from services.recon.io.volumes import ImageVolume, KspaceVolume

__all__ = [
    "RESEARCH_USE_ONLY",
    "RESEARCH_USE_ONLY_DICOM",
    "ImageVolume",
    "KspaceVolume",
    "atomic_output",
    "png_bytes",
    "read_dicom_series",
    "read_fastmri_h5",
    "read_input",
    "read_ismrmrd",
    "read_nifti",
    "read_reconstruction_h5",
    "write_dicom_series",
    "write_ismrmrd",
    "write_kspace_h5",
    "write_nifti",
    "write_png",
    "write_reconstruction_h5",
]
