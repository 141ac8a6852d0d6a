"""Small dataset folders in each dataset's exact published layout (file names, CSV columns, label encodings).

- RSNA Pneumonia (Kaggle): ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``; one row per box,
  blank box columns for Target 0), ``stage_2_detailed_class_info.csv`` (``patientId,class``, one row per label row),
  ``stage_2_train_images/<patientId>.dcm``: Secondary Capture, JPEG Baseline, Modality CR, ConversionType WSD,
  PatientAge without a unit ("43") as the published files have it.
- NIH ChestX-ray14: ``Data_Entry_2017.csv`` as first released (CRLF, a trailing comma in the header, the unquoted
  ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` headers, zero-padded ids, ages as ``058Y``)
  or its v2020 form, and ``images_00N/images/<Patient>_<follow-up>.png``; "Finding Labels" joined with ``|``.
- CheXpert: ``CheXpert-v1.0-small/{train,valid}.csv`` with the 19 published columns, ``1.0``/``0.0``/``-1.0``/blank,
  images at ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``.

Each builder returns what a correct import must produce: the expected label per image key.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

SIZE = 96  # small images keep ingestion's transcoding fast; the layout, not the resolution, is under test


def _pixels(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = 60 + 100 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (2 * (size / 3) ** 2))
    return np.clip(base + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def _jpeg(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px, mode="L").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# -- RSNA ----------------------------------------------------------------------------------------------------------
#: (patientId, boxes, class, sex, age, view); a patientId with two boxes has two label rows, as published.
RSNA_ROWS = [
    (str(uuid.UUID(int=0x0004CFAB14FD4E4980BA63A80B6BDDD6)), [], "No Lung Opacity / Not Normal", "F", "51", "PA"),
    (str(uuid.UUID(int=0x00436515870C4B36A041DE91049B9AB4)), [(264, 152, 213, 379), (562, 152, 256, 453)],
     "Lung Opacity", "F", "32", "AP"),
    (str(uuid.UUID(int=0x00313EE09EAA42F4B0ABC148ED3241CD)), [], "Normal", "M", "48", "PA"),
    (str(uuid.UUID(int=0x00704310_78A8_4B38_8475_49F4573B2DBB)), [(323, 577, 160, 104)], "Lung Opacity", "M", "75",
     "AP"),
]


def rsna_dicom(pid: str, sex: str, age: str, view: str, seed: int) -> tuple[bytes, str]:
    """An instance like the challenge's files (SC, JPEG Baseline, CR, WSD); returns its bytes and SOP UID."""
    px = _pixels(seed)
    sop = generate_uid()
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    fm.MediaStorageSOPInstanceUID = sop
    fm.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = sop
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {view}"
    ds.PatientName = pid
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    with config.disable_value_validation():  # the published files' PatientAge has no unit ("43"): invalid AS
        ds.PatientAge = age
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = ""
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.PixelSpacing = ["0.168", "0.168"]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([_jpeg(px)])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), sop


def make_rsna(root: Path) -> dict[str, str]:
    """The RSNA layout; returns {SOP Instance UID: expected label} (other findings -> normal, the default)."""
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    labels = ["patientId,x,y,width,height,Target"]
    classes = ["patientId,class"]
    expected: dict[str, str] = {}
    for i, (pid, boxes, cls, sex, age, view) in enumerate(RSNA_ROWS):
        for box in boxes or [None]:
            labels.append(f"{pid},{','.join(f'{v:.1f}' for v in box)},1" if box else f"{pid},,,,,0")
            classes.append(f"{pid},{cls}")
        data, sop = rsna_dicom(pid, sex, age, view, i)
        (images / f"{pid}.dcm").write_bytes(data)
        expected[sop] = "pneumonia" if boxes else "normal"
    # a label row whose image the user did not download: left out, not an error
    labels.append("ffffffff-0000-4000-8000-000000000000,,,,,0")
    classes.append("ffffffff-0000-4000-8000-000000000000,Normal")
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")
    return expected


# -- NIH ChestX-ray14 ----------------------------------------------------------------------------------------------
#: (Image Index, Finding Labels, Follow-up #, Patient ID, age, sex, view, folder)
NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA", "images_001"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA", "images_001"),
    ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA", "images_001"),
    ("00000003_000.png", "Infiltration|Pneumonia", 0, 3, 74, "F", "AP", "images_001"),
    ("00000004_000.png", "Pneumonia", 0, 4, 82, "M", "AP", "images_002"),
    ("00000005_000.png", "No Finding", 0, 5, 69, "F", "PA", "images_002"),
]
NIH_EXPECTED_DEFAULT = {"00000001_000.png": "normal", "00000001_001.png": "normal", "00000002_000.png": "normal",
                        "00000003_000.png": "pneumonia", "00000004_000.png": "pneumonia", "00000005_000.png": "normal"}


def make_chestxray14(root: Path, *, release: str = "2017") -> dict[str, str]:
    """The ChestX-ray14 layout ('2017': first release; 'v2020'); returns {image key: expected label}."""
    if release == "2017":
        header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
        rows = [f"{n},{f},{fu:03d},{pid:08d},{age:03d}Y,{sex},{view},2682,2749,0.143,0.143"
                for n, f, fu, pid, age, sex, view, _ in NIH_ROWS]
        (root / "Data_Entry_2017.csv").write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode())
    else:
        header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
        rows = [f"{n},{f},{fu},{pid},{age},{sex},{view},2500,2048,0.168,0.168"
                for n, f, fu, pid, age, sex, view, _ in NIH_ROWS]
        (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([header, *rows]) + "\n")
    expected = {}
    for i, (name, _f, _fu, _pid, _age, _sex, _view, folder) in enumerate(NIH_ROWS):
        d = root / folder / "images"
        d.mkdir(parents=True, exist_ok=True)
        px = _pixels(100 + i)
        # most are 8-bit grey; one is RGBA, as a few published PNGs are
        img = Image.fromarray(px, mode="L") if i != 2 else Image.fromarray(px, mode="L").convert("RGBA")
        img.save(d / name)
        expected[f"{folder}/images/{name}"] = NIH_EXPECTED_DEFAULT[name]
    return expected


# -- CheXpert ------------------------------------------------------------------------------------------------------
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,"
                   "Pleural Other,Fracture,Support Devices")


def _obs(no_finding: str = "", pneumonia: str = "", other: str = "") -> str:
    # 14 observations: No Finding, EC, Cardiomegaly, Lung Opacity, Lung Lesion, Edema, Consolidation, Pneumonia,
    # Atelectasis, Pneumothorax, Pleural Effusion, Pleural Other, Fracture, Support Devices
    vals = [no_finding, "", "", other, "", "", "", pneumonia, "", "", "", "", "", ""]
    return ",".join(vals)


#: (split, patient, study, view, Sex, Age, Frontal/Lateral, AP/PA, No Finding, Pneumonia, Lung Opacity, expected label
#: with the defaults: uncertain ignored, laterals left out, other findings normal)
CHEXPERT_ROWS = [
    ("train", "patient00001", "study1", "view1_frontal", "Female", "68", "Frontal", "AP", "1.0", "", "", "normal"),
    ("train", "patient00002", "study2", "view1_frontal", "Female", "87", "Frontal", "AP", "", "-1.0", "1.0", None),
    ("train", "patient00002", "study1", "view1_frontal", "Female", "83", "Frontal", "AP", "", "1.0", "1.0",
     "pneumonia"),
    ("train", "patient00002", "study1", "view2_lateral", "Female", "83", "Lateral", "", "", "1.0", "1.0", None),
    ("train", "patient00003", "study1", "view1_frontal", "Male", "41", "Frontal", "PA", "", "0.0", "1.0", "normal"),
    ("train", "patient00004", "study1", "view1_frontal", "Male", "20", "Frontal", "PA", "", "", "1.0", "normal"),
    ("valid", "patient64541", "study1", "view1_frontal", "Male", "73", "Frontal", "AP", "0.0", "1.0", "1.0",
     "pneumonia"),
    ("valid", "patient64542", "study1", "view1_frontal", "Male", "70", "Frontal", "PA", "1.0", "0.0", "0.0", "normal"),
]


def make_chexpert(parent: Path) -> dict[str, str | None]:
    """``parent/CheXpert-v1.0-small/`` in the published layout; returns {image key: expected label or None}."""
    root = parent / "CheXpert-v1.0-small"
    rows: dict[str, list[str]] = {"train": [CHEXPERT_HEADER], "valid": [CHEXPERT_HEADER]}
    expected: dict[str, str | None] = {}
    for i, (split, pt, st, view, sex, age, fl, appa, nf, pn, lo, exp) in enumerate(CHEXPERT_ROWS):
        rel = f"{split}/{pt}/{st}/{view}.jpg"
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(_jpeg(_pixels(200 + i)))
        if split == "valid":  # valid.csv has 0/1 only (radiologist consensus), written as 1.0/0.0
            nf, pn, lo = nf or "0.0", pn or "0.0", lo or "0.0"
        rows[split].append(f"CheXpert-v1.0-small/{rel},{sex},{age},{fl},{appa},{_obs(nf, pn, lo)}")
        expected[rel] = exp
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return expected
