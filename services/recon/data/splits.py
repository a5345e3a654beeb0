"""Benchmark splits by source volume (work in progress)."""

from __future__ import annotations

TRAINING_SOURCES: tuple[str, ...] = (
    "spm_tpm",
    "spm_dartel_icbm152",
    "mni152_2009a_tissues",
    "mni152_2009a_t1",
    "spm_avg152T1",
    "spm_avg152T2",
)
