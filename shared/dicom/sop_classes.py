"""SOP classes radloop stores without pixel data, and the modalities of derived (non-acquired) objects.

Everything else must be an image: ingestion refuses a dataset without Pixel Data unless its SOP Class is listed
here. Structured reports are what AI results and reads are exchanged as (IHE AI Results), so the archive stores
them, indexes them for QIDO-RS and C-FIND, and serves them through WADO-RS and C-GET/C-MOVE like any instance.
"""

from __future__ import annotations

#: Structured Report Storage SOP classes (PS3.4 Annex B.5) and Key Object Selection.
NON_IMAGE_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
})

#: Modalities of objects derived from images (reports, segmentations, presentation states): nothing to read or score.
DERIVED_MODALITIES: frozenset[str] = frozenset({"SR", "SEG", "KO", "PR", "RWV"})

#: SOP classes of derived objects: the non-image classes plus Segmentation (what radloop's results are stored as).
DERIVED_SOP_CLASSES: frozenset[str] = NON_IMAGE_SOP_CLASSES | {"1.2.840.10008.5.1.4.1.1.66.4"}

#: The Storage SOP classes the archive accepts (ingestion's DIMSE SCP) and serves back (the Q/R SCP's C-GET
#: sub-operations): one list, so an instance that can be stored can be retrieved (the two lists had drifted: C-GET
#: could not send Extensible SR or the multi-frame Secondary Capture classes; found by a review, session 22).
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image, For Processing
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    # AI results and reports (docs/interop.md): segmentations and the SR classes stored without pixel data.
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    *sorted(NON_IMAGE_SOP_CLASSES),
)
