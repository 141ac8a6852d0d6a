"""The published layouts of the supported datasets, read into items with radloop's pneumonia label.

radloop's finding is binary: ``pneumonia`` or ``normal`` (negative for pneumonia; not "no finding at all"). Each
dataset's labels map to it as follows (docs/datasets.md explains the choices):

- **RSNA Pneumonia** (``stage_2_train_labels.csv``: ``patientId,x,y,width,height,Target``, one row per box or one
  row with ``Target`` 0; ``stage_2_detailed_class_info.csv``: ``patientId,class``): ``Target`` 1 ("Lung Opacity") is
  pneumonia; class "Normal" is normal; "No Lung Opacity / Not Normal" (another abnormality) follows ``other``.
- **NIH ChestX-ray14** (``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``; "Finding Labels" joined with
  ``|``): a label list with "Pneumonia" is pneumonia; exactly "No Finding" is normal; other findings follow ``other``.
- **CheXpert** (``train.csv``/``valid.csv``: ``Path,Sex,Age,Frontal/Lateral,AP/PA`` and 14 observations encoded
  ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, blank not mentioned): Pneumonia 1.0 is pneumonia, 0.0 is
  normal, -1.0 follows ``uncertain`` (``ignore``: not imported; ``ones``: pneumonia; ``zeros``: normal); blank is
  normal when "No Finding" is 1.0, else it follows ``other``.

``other`` is ``normal`` (the default: pneumonia-negative, as RSNA's own ``Target`` column encodes it) or ``skip``.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Format = Literal["rsna-pneumonia", "chestxray14", "chexpert"]
FORMATS: tuple[str, ...] = ("rsna-pneumonia", "chestxray14", "chexpert")
Other = Literal["normal", "skip"]
Uncertain = Literal["ignore", "ones", "zeros"]


class DatasetError(Exception):
    """The directory is not in the dataset's published layout; ``str(exc)`` says what is missing."""


@dataclass(frozen=True)
class Patient:
    """What a wrapped image carries where DICOM keeps it (PatientID, PatientAge, PatientSex...): PHI-like values that
    ingestion's de-identification handles. Never logged."""

    patient_id: str
    age: str = ""  # DICOM AS, e.g. "058Y"
    sex: str = ""  # M, F, O or empty
    view: str = ""  # ViewPosition: PA, AP, LL...
    study: str = ""  # the dataset's study key within the patient
    series: str = ""


@dataclass(frozen=True)
class Item:
    """One image to import: where it is, its dataset-relative key, what it is and its label."""

    key: str  # the dataset-relative path: stable across runs (resumability), never printed
    path: Path
    kind: Literal["dicom", "png", "jpeg"]
    label: str  # pneumonia | normal
    patient: Patient


@dataclass
class Listing:
    """The items of a dataset and why rows were left out (reason -> count)."""

    items: list[Item] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path.name} lacks the column(s) {', '.join(repr(m) for m in missing)} of the "
                               "published layout")
        for row in reader:
            yield {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}


def _age(raw: str) -> str:
    """A DICOM AS value from "58", "058Y" or "57.0" ("" when it is not an age)."""
    m = re.fullmatch(r"0*(\d{1,3})(?:\.0+)?([DWMY]?)", raw.strip().upper())
    if not m:
        return ""
    return f"{int(m.group(1)):03d}{m.group(2) or 'Y'}"


def _sex(raw: str) -> str:
    v = raw.strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(v, "")


# -- RSNA Pneumonia Detection Challenge --------------------------------------------------------------------------
def rsna_pneumonia(root: Path, *, other: Other = "normal") -> Listing:
    """``stage_2_train_images/<patientId>.dcm`` labelled from ``stage_2_train_labels.csv`` (+ detailed class info)."""
    labels_csv = root / "stage_2_train_labels.csv"
    images = root / "stage_2_train_images"
    if not labels_csv.is_file() or not images.is_dir():
        raise DatasetError(f"{root} is not the RSNA Pneumonia layout: expected stage_2_train_labels.csv and "
                           "stage_2_train_images/ (unzip the Kaggle download there)")
    target: dict[str, int] = {}
    for row in _read_csv(labels_csv, ("patientId", "x", "y", "width", "height", "Target")):
        try:
            t = int(float(row["Target"]))
        except ValueError:
            raise DatasetError(f"stage_2_train_labels.csv: Target {row['Target']!r} is not 0 or 1") from None
        target[row["patientId"]] = max(target.get(row["patientId"], 0), t)
    classes: dict[str, str] = {}
    detailed = root / "stage_2_detailed_class_info.csv"
    if detailed.is_file():
        for row in _read_csv(detailed, ("patientId", "class")):
            classes[row["patientId"]] = row["class"]
    out = Listing()
    for pid, t in target.items():
        path = images / f"{pid}.dcm"
        if not path.is_file():
            out.excluded["image file missing"] += 1
            continue
        cls = classes.get(pid)
        if t == 1:
            if cls is not None and cls != "Lung Opacity":
                out.excluded["labels disagree (Target 1, class not Lung Opacity)"] += 1
                continue
            label = "pneumonia"
        elif cls == "No Lung Opacity / Not Normal":
            if other == "skip":
                out.excluded["other findings (--other skip)"] += 1
                continue
            label = "normal"
        elif cls == "Lung Opacity":
            out.excluded["labels disagree (Target 0, class Lung Opacity)"] += 1
            continue
        else:
            label = "normal"
        # The DICOM file is sent as it is: it carries its own PatientID, age, sex and view.
        out.items.append(Item(key=f"stage_2_train_images/{pid}.dcm", path=path, kind="dicom", label=label,
                              patient=Patient(patient_id=pid)))
    return out


# -- NIH ChestX-ray14 ----------------------------------------------------------------------------------------------
NIH_CSVS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position")


def _nih_images(root: Path) -> dict[str, Path]:
    """Image name -> path, from the published folders (``images_001/images/*.png`` ... or an extracted ``images/``)."""
    found: dict[str, Path] = {}
    for pattern in ("images_*/images/*.png", "images/*.png", "images_*/*.png"):
        for p in root.glob(pattern):
            found.setdefault(p.name, p)
    return found


def chestxray14(root: Path, *, other: Other = "normal") -> Listing:
    """The PNGs of ``Data_Entry_2017.csv`` (either release), labelled from "Finding Labels"."""
    csv_path = next((root / n for n in NIH_CSVS if (root / n).is_file()), None)
    if csv_path is None:
        raise DatasetError(f"{root} is not the ChestX-ray14 layout: expected {' or '.join(NIH_CSVS)} and "
                           "images_*/images/*.png")
    images = _nih_images(root)
    out = Listing()
    for row in _read_csv(csv_path, NIH_COLUMNS):
        name = row["Image Index"]
        path = images.get(name)
        if path is None:
            out.excluded["image file missing"] += 1
            continue
        findings = {f.strip() for f in row["Finding Labels"].split("|") if f.strip()}
        if "Pneumonia" in findings:
            label = "pneumonia"
        elif findings == {"No Finding"}:
            label = "normal"
        elif other == "skip":
            out.excluded["other findings (--other skip)"] += 1
            continue
        else:
            label = "normal"
        raw_pid = row["Patient ID"]
        pid = f"{int(raw_pid):08d}" if raw_pid.isdigit() else raw_pid
        follow = row["Follow-up #"]
        study = str(int(follow)) if follow.isdigit() else follow
        view = row["View Position"].upper()
        out.items.append(Item(key=f"{path.relative_to(root).as_posix()}", path=path, kind="png", label=label,
                              patient=Patient(patient_id=pid, age=_age(row["Patient Age"]),
                                              sex=_sex(row["Patient Gender"]), view=view if view in ("PA", "AP") else "",
                                              study=study, series=view or "1")))
    return out


# -- CheXpert ------------------------------------------------------------------------------------------------------
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Pneumonia")
_CHEXPERT_PATH = re.compile(r"(?:^|/)(?:train|valid|test)/(patient\d+)/(study\d+)/(view\d+)_(frontal|lateral)\.jpg$")


def _chexpert_root(root: Path) -> Path:
    """The folder holding train.csv/valid.csv: ``root`` itself or its one ``CheXpert-v1.0*`` child."""
    if (root / "train.csv").is_file() or (root / "valid.csv").is_file():
        return root
    kids = sorted(p for p in root.glob("CheXpert-v1.0*") if (p / "train.csv").is_file() or (p / "valid.csv").is_file())
    if len(kids) == 1:
        return kids[0]
    raise DatasetError(f"{root} is not the CheXpert layout: expected train.csv and/or valid.csv (in it or in one "
                       "CheXpert-v1.0-small/ or CheXpert-v1.0/ folder under it)")


def _observation(raw: str) -> float | None:
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise DatasetError(f"CheXpert observation value {raw!r} is not 1.0, 0.0, -1.0 or blank") from None


def chexpert(root: Path, *, other: Other = "normal", uncertain: Uncertain = "ignore",
             views: Literal["frontal", "all"] = "frontal", split: Literal["train", "valid", "all"] = "all") -> Listing:
    """The JPEGs of ``train.csv``/``valid.csv`` labelled from the Pneumonia (and No Finding) observation."""
    base = _chexpert_root(root)
    out = Listing()
    names = {"train": ("train.csv",), "valid": ("valid.csv",), "all": ("train.csv", "valid.csv")}[split]
    csvs = [base / n for n in names if (base / n).is_file()]
    if not csvs:
        raise DatasetError(f"{base} has no {' or '.join(names)}")
    for csv_path in csvs:
        for row in _read_csv(csv_path, CHEXPERT_COLUMNS):
            rel = row["Path"]
            m = _CHEXPERT_PATH.search(rel)
            if not m:
                out.excluded["Path not in the published form"] += 1
                continue
            patient, study, view_no, fl = m.groups()
            # Path starts with the dataset folder's own name (CheXpert-v1.0-small/train/...): resolve it from base.
            parts = rel.split("/")
            path = base / "/".join(parts[1:]) if parts[0].startswith("CheXpert") else base / rel
            if not path.is_file():
                out.excluded["image file missing"] += 1
                continue
            if views == "frontal" and row["Frontal/Lateral"] != "Frontal":
                out.excluded["lateral view (--views frontal)"] += 1
                continue
            p, nf = _observation(row["Pneumonia"]), _observation(row["No Finding"])
            if p == 1.0:
                label = "pneumonia"
            elif p == 0.0:
                label = "normal"
            elif p == -1.0:
                if uncertain == "ignore":
                    out.excluded["uncertain pneumonia (--uncertain ignore)"] += 1
                    continue
                label = "pneumonia" if uncertain == "ones" else "normal"
            elif nf == 1.0:
                label = "normal"
            elif other == "skip":
                out.excluded["other findings (--other skip)"] += 1
                continue
            else:
                label = "normal"
            ap_pa = row["AP/PA"].upper()
            out.items.append(Item(
                key="/".join(parts[1:]) if parts[0].startswith("CheXpert") else rel, path=path, kind="jpeg",
                label=label, patient=Patient(patient_id=patient, age=_age(row["Age"]), sex=_sex(row["Sex"]),
                                             view=ap_pa if ap_pa in ("AP", "PA", "LL", "RL") else "",
                                             study=study, series=f"{view_no}_{fl}")))
    return out


def list_dataset(fmt: str, root: Path, *, other: Other = "normal", uncertain: Uncertain = "ignore",
                 views: Literal["frontal", "all"] = "frontal",
                 split: Literal["train", "valid", "all"] = "all") -> Listing:
    """The items of the dataset at ``root`` in format ``fmt``; :class:`DatasetError` when the layout is not found."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    if fmt == "rsna-pneumonia":
        return rsna_pneumonia(root, other=other)
    if fmt == "chestxray14":
        return chestxray14(root, other=other)
    if fmt == "chexpert":
        return chexpert(root, other=other, uncertain=uncertain, views=views, split=split)
    raise DatasetError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
