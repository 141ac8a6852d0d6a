"""A dataset's PNG or JPEG radiograph wrapped as a DICOM Secondary Capture instance (pydicom).

Secondary Capture is what the image is: a converted picture of a radiograph (ConversionType ``WSD``, as RSNA's own
DICOM conversion of the NIH images has it), not an acquisition, so no DX acquisition attribute is invented.
``Modality`` is ``CR`` (RSNA's conversion of the same NIH images uses it; the datasets do not say CR or DX) and
``BodyPartExamined`` ``CHEST``, so that triage's applicability check accepts it.

The dataset's patient id, age and sex go where DICOM keeps them (PatientID, PatientAge, PatientSex), so ingestion's
de-identification profile treats them like any PACS's. ``BurnedInAnnotation`` is ``NO``: the publishers released
these images as de-identified, pixels included (docs/datasets.md); ingestion would otherwise quarantine every image
when de-identification is on.

Every UID is derived from the dataset and the image's dataset-relative key (UUID v5 under 2.25), and the instance
holds no time of conversion, so wrapping the same file twice gives the same bytes: a resumed import re-sends the same
instance and ingestion answers "already stored".
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from radloop.datasets.formats import Item

SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
_NAMESPACE = uuid.UUID("5b0f6a44-2f0e-4c0e-9a55-7ad1c3a1d018")  # radloop import-dataset's UID namespace


def uid_for(*parts: str) -> str:
    """A deterministic UID (2.25 + UUID v5 of ``parts``)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(31).join(parts)).int}"


def read_pixels(path: Path) -> np.ndarray:
    """The image as a 2-D uint8 (or uint16 for 16-bit PNGs) grey array; colour or alpha images become grey."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.uint16)
        if im.mode == "I":
            return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        grey = im if im.mode == "L" else im.convert("L")  # RGB(A), P, LA: a few ChestX-ray14 PNGs are RGBA
        return np.asarray(grey, dtype=np.uint8)


def secondary_capture(item: Item, source: str) -> bytes:
    """The DICOM Part 10 bytes of ``item`` (a PNG or JPEG) as a Secondary Capture instance."""
    px = read_pixels(item.path)
    p = item.patient
    study_uid = uid_for(source, "study", p.patient_id, p.study)
    series_uid = uid_for(source, "series", p.patient_id, p.study, p.series)
    sop_uid = uid_for(source, "image", item.key)

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = UID(SC_SOP_CLASS)
    fm.MediaStorageSOPInstanceUID = UID(sop_uid)
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "RADLOOP_IMPORT"

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = SC_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.Manufacturer = ""
    ds.StudyDescription = "XR CHEST"
    ds.SeriesDescription = f"{source} {p.view}".strip()
    ds.PatientName = ""
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = p.sex
    if p.age:
        ds.PatientAge = p.age
    ds.BodyPartExamined = "CHEST"
    if p.view:
        ds.ViewPosition = p.view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = (p.study or "1")[:16]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(px.shape[0]), int(px.shape[1])
    bits = 16 if px.dtype == np.uint16 else 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    if item.kind == "jpeg":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    ds.PixelData = px.astype("<u2").tobytes() if bits == 16 else px.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
