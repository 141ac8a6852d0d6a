"""A small analytic chest-CT phantom: a 300-slice, 512² CT series as real DICOM datasets.

The phantom is built slice by slice from simple shapes with CT numbers (Hounsfield units): an elliptical body with a
fat layer, two lungs that taper towards the apex and base, a vertebral body with cortical bone, ribs, the aorta, and a
contrast-filled vessel that spirals around the mediastinum (one turn every 60 slices, so neighbouring slices differ
visibly and a wrong slice is easy to detect), plus Gaussian noise (σ ≈ 12 HU, like a standard-dose scan). Stored
values are HU + 1024 as unsigned 16-bit with RescaleIntercept -1024, as most scanners write them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

ROOT = "1.2.826.0.1.3680043.10.1387."  # radloop test UIDs


@dataclass(frozen=True)
class SeriesIds:
    study: str
    series: str
    sops: tuple[str, ...]


def _ellipse(img: np.ndarray, cx: float, cy: float, ax: float, ay: float, value: float) -> None:
    """Set the pixels inside an axis-aligned ellipse (centre cx, cy; half-axes ax, ay), touching only its box."""
    size = img.shape[0]
    x0, x1 = max(0, int(cx - ax) - 1), min(size, int(cx + ax) + 2)
    y0, y1 = max(0, int(cy - ay) - 1), min(size, int(cy + ay) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    y, x = np.ogrid[y0:y1, x0:x1]
    inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
    img[y0:y1, x0:x1][inside] = value


def _disc(img: np.ndarray, cx: float, cy: float, r: float, value: float) -> None:
    _ellipse(img, cx, cy, r, r, value)


def slice_hu(k: int, n: int, size: int = 512, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """CT numbers (float32 HU) of slice k of n (k = 0 is the most cranial slice)."""
    rng = rng or np.random.default_rng(k)
    s = size / 512.0
    cx, cy = size / 2, size / 2 + 10 * s
    t = k / max(n - 1, 1)  # 0 at the apex, 1 at the base
    img = np.full((size, size), -1000.0, np.float32)  # air
    _ellipse(img, cx, cy, 200 * s, 150 * s, -100.0)  # subcutaneous fat
    _ellipse(img, cx, cy, 200 * s * 0.922, 150 * s * 0.922, 40.0)  # soft tissue
    # Lungs: largest mid-series, tapering at both ends.
    lung_scale = 0.35 + 0.65 * np.sin(np.pi * (0.1 + 0.85 * t))
    for side in (-1, 1):
        _ellipse(img, cx + side * 85 * s, cy - 5 * s, 62 * s * lung_scale, 95 * s * lung_scale, -850.0)
    # Lung vessels: small bright dots whose pattern changes every few slices.
    vrng = np.random.default_rng(1000 + k // 3)
    for _ in range(14):
        side = vrng.choice((-1, 1))
        vx = cx + side * 85 * s + vrng.normal(0, 30 * s * lung_scale)
        vy = cy - 5 * s + vrng.normal(0, 45 * s * lung_scale)
        _disc(img, vx, vy, 3 * s, 30.0)
    # Vertebral body with its cortical shell, and ribs.
    _disc(img, cx, cy + 95 * s, 26 * s, 1000.0)
    _disc(img, cx, cy + 95 * s, 21 * s, 300.0)
    for side in (-1, 1):
        for j in range(3):
            _disc(img, cx + side * (150 - 12 * j) * s, cy + (-60 + 55 * j) * s, 7 * s, 800.0)
    # Aorta, then the spiral vessel (contrast, 250 HU) that rotates one turn every 60 slices.
    _disc(img, cx + 20 * s, cy + 40 * s, 16 * s, 180.0)
    ang = 2 * np.pi * k / 60.0
    _disc(img, cx + 42 * s * np.cos(ang), cy - 10 * s + 42 * s * np.sin(ang), 11 * s, 250.0)
    # A solid nodule in the right lung over 20 slices.
    nz = (k - 0.55 * n) / 10.0
    if abs(nz) < 1:
        _disc(img, cx - 95 * s, cy - 30 * s, 12 * s * np.sqrt(1 - nz * nz), 20.0)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(12.0)
    return img


def make_ct_series(n: int = 300, size: int = 512, *, seed: int = 7, study: str | None = None) -> list[Dataset]:
    """The phantom as n CT Image Storage datasets (little endian, uncompressed), head first."""
    study_uid = study or f"{ROOT}{seed}.1"
    series_uid = f"{ROOT}{seed}.2"
    datasets = []
    for k in range(n):
        hu = slice_hu(k, n, size, rng=np.random.default_rng(seed * 100_000 + k))
        stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = f"{ROOT}{seed}.3.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = f"{ROOT}{seed}.4"
        ds.PatientName = "PHANTOM^CHEST"
        ds.PatientID = f"PH{seed:04d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20260115"
        ds.StudyTime = "101500"
        ds.AccessionNumber = f"ACC{seed:05d}"
        ds.StudyDescription = "CT CHEST PHANTOM"
        ds.StudyID = "1"
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Axial 1.25mm phantom"
        ds.BodyPartExamined = "CHEST"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-179.2, -179.2, round(-1.25 * k, 3)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 1.25
        ds.SliceLocation = round(-1.25 * k, 3)
        ds.PixelSpacing = [0.7 * 512 / size, 0.7 * 512 / size]
        ds.Rows = size
        ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.KVP = 120
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    return datasets


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_radiograph(*, seed: int = 11, size: int = 256) -> Dataset:
    """One small chest radiograph-like DX image (MONOCHROME2, 12 bit): two dark lung fields in a bright body."""
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    rng = np.random.default_rng(seed)
    img = np.full((size, size), 300.0, np.float32)
    _ellipse(img, size / 2, size / 2, size * 0.45, size * 0.48, 2600.0)
    for side in (-1, 1):
        _ellipse(img, size / 2 + side * size * 0.2, size * 0.48, size * 0.14, size * 0.3, 900.0)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(40.0)
    ds = make_ct_series(1, 64, seed=seed)[0]
    sop = f"{ROOT}{seed}.5.1"
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID = f"{ROOT}{seed}.6"
    ds.StudyDescription = "CHEST PA PHANTOM"
    ds.SeriesDescription = "PA"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "SliceLocation", "RescaleType",
               "KVP", "FrameOfReferenceUID"):
        delattr(ds, kw)
    ds.RescaleIntercept = 0
    ds.WindowCenter = 1500
    ds.WindowWidth = 3000
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = np.clip(np.rint(img), 0, 4095).astype(np.uint16).tobytes()
    return ds
