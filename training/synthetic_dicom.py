"""A rendered synthetic radiograph as a DICOM dataset (DX For Presentation, explicit VR little endian)."""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from training.synthetic_cases import DX_SOP_CLASS, keyed_rng
from training.synthetic_render import Rendered


def file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    """The file meta information of a synthetic instance (explicit VR little endian, radloop's implementation name)."""
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "RADLOOP_SYN"
    return fm


def _study_date(seed: int, patient: int, study: int) -> dt.date:
    base = dt.date(2020, 1, 1) + dt.timedelta(days=int(keyed_rng(seed, "date", patient).integers(0, 1500)))
    return base + dt.timedelta(days=int(study * 45 + keyed_rng(seed, "date", patient, study).integers(0, 30)))


def to_dataset(rd: Rendered) -> Dataset:
    """The DICOM dataset of a rendered radiograph (DX For Presentation, explicit VR little endian)."""
    s = rd.spec
    ds = Dataset()
    ds.file_meta = file_meta(DX_SOP_CLASS, s.sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = s.sop_uid
    date = _study_date(s.seed, s.patient, s.study)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + s.index % 10:02d}{(s.index * 7) % 60:02d}00"
    ds.AccessionNumber = f"A{s.seed:03d}{s.index:07d}"[:16]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    site = s.site_profile
    ds.Manufacturer = "radloop synthetic"
    ds.ManufacturerModelName = site.model
    ds.InstitutionName = site.institution
    ds.StationName = site.station
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR CHEST {site.view}" + (" PORTABLE" if "PORTABLE" in (site.burned_in_text or "") else "")
    ds.SeriesDescription = site.view
    ds.PatientName = f"SYNTHETIC^{s.patient:06d}"
    ds.PatientID = s.patient_id
    birth = date.year - rd.anatomy.age
    ds.PatientBirthDate = f"{birth:04d}0101"
    ds.PatientSex = rd.anatomy.sex
    ds.PatientAge = f"{rd.anatomy.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = site.view
    ds.PatientOrientation = ["R", "F"]
    ds.KVP = f"{rd.kvp:.0f}"
    ds.ExposureInuAs = int(rd.exposure_mas * 1000)
    ds.DistanceSourceToDetector = "1800"
    ds.StudyInstanceUID = s.study_uid
    ds.SeriesInstanceUID = s.series_uid
    ds.StudyID = f"{s.study + 1}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rd.pixels.shape
    spacing = 430.0 / rd.pixels.shape[0]  # a 43 cm detector
    ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = rd.bits_stored
    ds.HighBit = rd.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    lo, hi = np.percentile(rd.pixels, [1, 99])
    ds.WindowCenter = f"{(lo + hi) / 2:.0f}"
    ds.WindowWidth = f"{max(hi - lo, 2):.0f}"
    ds.BurnedInAnnotation = "YES" if site.burned_in_text else "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = rd.pixels.astype("<u2").tobytes()
    return ds
