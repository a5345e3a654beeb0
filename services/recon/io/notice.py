"""The notice that everything mrdiff writes carries (design.md: research use only)."""

RESEARCH_USE_ONLY = "research use only, not for diagnosis"
"""Attribute value, PNG footer and NIfTI description."""

RESEARCH_USE_ONLY_DICOM = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
"""The same notice in the upper-case form DICOM viewers show in SeriesDescription/ImageComments."""
