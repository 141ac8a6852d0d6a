"""A synthetic chest CT series (CT Image Storage, int16 with HU rescale), for streaming and viewer tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from training.synthetic_cases import CT_SOP_CLASS, DEFAULT_SIZE, Anatomy, keyed_rng, patient_anatomy, synthetic_uid
from training.synthetic_dicom import file_meta


def _ct_slice_hu(z: float, n: int, an: Anatomy, opac: list[tuple[float, float, float, float, float]],
                 yy: np.ndarray, xx: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """HU of one axial slice at normalised height z in [0, 1] (0 = lung apices, 1 = upper abdomen)."""
    x, y = xx, yy
    hu = np.full((n, n), -1000.0, dtype=np.float32)
    bw, bh = an.body_w * 0.95, 0.62
    body = ((x / bw) ** 2 + (y / bh) ** 2) < 1
    fat = ((x / bw) ** 2 + (y / bh) ** 2) > 0.82
    hu[body] = 40.0
    hu[body & fat] = -100.0
    # table under the patient
    hu[(y > 0.78) & (y < 0.84) & (np.abs(x) < 0.9)] = 200.0
    # lungs shrink towards the apex and the diaphragm
    lung_scale = np.sin(np.pi * np.clip(z / 0.85, 0, 1)) ** 0.6
    lungs = np.zeros((n, n), dtype=bool)
    if lung_scale > 0.05:
        for sgn in (-1, 1):
            cx = sgn * (an.lung_gap + an.lung_w)
            lw, lh = an.lung_w * lung_scale * 1.1, 0.42 * lung_scale
            lungs |= (((x - cx) / lw) ** 2 + ((y + 0.02) / lh) ** 2) < 1
    heart = (((x - an.heart_shift) / (an.heart_w * 1.1)) ** 2 + ((y + 0.05) / 0.3) ** 2) < 1
    heart_on = 0.45 < z < 0.85
    if heart_on:
        lungs &= ~heart
    hu[lungs] = -860.0
    if heart_on:
        hu[heart & body] = 45.0
    if z > 0.85:  # liver
        hu[body & ~fat & (x < 0.3)] = 60.0
    # vertebral body and posterior elements, sternum, ribs as a ring of short arcs
    spine = ((x / 0.09) ** 2 + ((y - 0.38) / 0.09) ** 2) < 1
    hu[spine] = 700.0
    hu[((x / 0.1) ** 2 + ((y + 0.55) / 0.03) ** 2) < 1] = 500.0
    ang = np.arctan2(y / bh, x / bw)
    rad = np.sqrt((x / bw) ** 2 + (y / bh) ** 2)
    rib_phase = (z * 10) % 1.0
    rib_band = (np.abs(rad - 0.86) < 0.03) & (np.cos(ang * 2) < 0.6) if rib_phase < 0.35 else np.zeros_like(body)
    hu[rib_band] = 900.0
    # ground-glass / consolidation opacities (z0, x0, y0, radius, hu)
    for z0, x0, y0, rr, val in opac:
        dz = (z - z0) / rr
        if abs(dz) < 1:
            rz = rr * np.sqrt(1 - dz * dz)
            blob = ((x - x0) ** 2 + (y - y0) ** 2) < rz * rz
            hu[blob & lungs] = val
    hu += noise
    return hu


def iter_ct_series(
    seed: int = 0, *, slices: int = 300, size: int = DEFAULT_SIZE, opacities: bool = False, patient: int = 0,
) -> Iterator[Dataset]:
    """Yield the ``slices`` CT Image Storage datasets of one synthetic chest CT series (int16, HU rescale tags).

    Stored values are HU + 1024 as signed 16-bit (RescaleIntercept -1024, RescaleSlope 1), 1.25 mm apart, so the
    series is a real volume for streaming and viewer tests. ``opacities=True`` adds 1-4 spherical opacities inside
    the lungs.
    """
    if slices < 1 or size < 32:
        raise ValueError(f"a CT series needs at least 1 slice of at least 32 px, got {slices} slices of {size} px")
    an = patient_anatomy(seed, patient)
    r = keyed_rng(seed, "ct", patient)
    opac: list[tuple[float, float, float, float, float]] = []
    if opacities:
        for _ in range(int(r.integers(1, 5))):
            sgn = 1 if r.random() < 0.5 else -1
            opac.append((float(r.uniform(0.25, 0.75)), float(sgn * (an.lung_gap + an.lung_w) + r.uniform(-0.1, 0.1)),
                         float(r.uniform(-0.15, 0.15)), float(r.uniform(0.04, 0.12)), float(r.uniform(-500, 20))))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx = (xx + 0.5) / size * 2 - 1
    yy = (yy + 0.5) / size * 2 - 1
    study, series = synthetic_uid(seed, patient, "ct-study"), synthetic_uid(seed, patient, "ct-series")
    frame_of_ref = synthetic_uid(seed, patient, "ct-for")
    spacing_xy = 350.0 / size
    thickness = 1.25
    noise_field = r.standard_normal((4, size, size)).astype(np.float32) * 12.0
    for k in range(slices):
        z = (k + 0.5) / slices
        hu = _ct_slice_hu(z, size, an, opac, yy, xx, noise_field[k % 4])
        stored = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16)
        sop = synthetic_uid(seed, patient, "ct-sop", k)
        ds = Dataset()
        ds.file_meta = file_meta(CT_SOP_CLASS, sop)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_SOP_CLASS
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = "20240301"
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.AccessionNumber = f"CT{seed:04d}{patient:06d}"[:16]
        ds.Modality = "CT"
        ds.Manufacturer = "radloop synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = "AXIAL 1.25"
        ds.PatientName = f"SYNTHETIC^CT{patient:06d}"
        ds.PatientID = f"SYNCT{seed:04d}-{patient:06d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = an.sex
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{thickness}"
        ds.KVP = "120"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{-175.0:.2f}", f"{-175.0:.2f}", f"{-k * thickness:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{-k * thickness:.2f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [f"{spacing_xy:.4f}", f"{spacing_xy:.4f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = ["-600", "40"]
        ds.WindowWidth = ["1500", "400"]
        ds.PixelData = stored.astype("<i2").tobytes()
        yield ds


def write_ct_series(out: str | Path, seed: int = 0, **kw: Any) -> list[Path]:
    """Write a CT series as ``ct_{n:04d}.dcm`` files into ``out``."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in iter_ct_series(seed, **kw):
        p = d / f"ct_{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
