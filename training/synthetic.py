"""Synthetic chest radiographs (and a chest CT series) written as real DICOM.

No labelled pneumonia data can be downloaded here, so the model is trained and tested on images rendered from a
simple physical picture of a PA chest radiograph:

- a thorax of soft tissue whose width, height and position vary per patient, with breast/shoulder soft tissue;
- two lung fields (the left one narrowed by the heart), domed diaphragms and a mediastinum with a spine, a heart shadow
  and hila;
- lung markings (vessels thinning towards the periphery), posterior and anterior ribs and both clavicles;
- exposure (mAs / kVp) variation, a heel-effect gradient, detector gain, quantum noise and 12/14/16 bit storage.

Positives (pneumonia) add one to three consolidations: patchy, textured opacities of random size, contrast and position
inside the lung fields, sometimes bilateral and sometimes subtle (air bronchograms are the darker branches left in a
patch). ``difficulty`` in [0, 1] scales lesion size and contrast down; ``prevalence`` and ``label_noise`` (a fraction of
observed labels flipped, as a real reader would) are controls too. Every image is a function of ``(seed, index)``
only, so any case can be regenerated on its own, and its lesion mask with it (:func:`generate_case`), which the triage
heat-map test uses as ground truth.

Patients have one to four studies (``patient_of``), each at a different date with a fresh exposure and positioning,
which is why training uses patient-level splits.

The calibration test (tests/training/test_synthetic.py) checks that the task is not trivial: a logistic regression on
global intensity statistics reaches at most 0.65 accuracy on a balanced cohort at the default difficulty.

CLI: ``python -m training.synthetic --out DIR --n N --seed S`` (``--ct`` writes a CT series instead).
"""

from __future__ import annotations

import argparse
import bisect
import csv
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from scipy import ndimage

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
DEFAULT_SIZE = 512
DEFAULT_PREVALENCE = 0.3
DEFAULT_DIFFICULTY = 0.5
MAX_STUDIES_PER_PATIENT = 4


# ---------------------------------------------------------------------------------------------------------------------
# determinism helpers


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by the hash of ``keys``: independent streams for (seed, patient, study, purpose)."""
    h = hashlib.sha256("/".join(str(k) for k in keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:16], "little"))


def synthetic_uid(*keys: int | str) -> str:
    """A deterministic UID under the 2.25 root (PS3.5 §B.2) derived from ``keys``."""
    n = int.from_bytes(hashlib.sha256(("uid/" + "/".join(str(k) for k in keys)).encode()).digest()[:15], "big")
    return f"2.25.{n or 1}"


# ---------------------------------------------------------------------------------------------------------------------
# cohort plan


@dataclass(frozen=True)
class CaseSpec:
    """Everything that identifies one synthetic study (one image)."""

    seed: int
    index: int
    patient: int
    study: int  # 0-based study number of this patient
    true_label: int
    label: int  # observed label (after label noise)
    size: int = DEFAULT_SIZE
    difficulty: float = DEFAULT_DIFFICULTY

    @property
    def patient_id(self) -> str:
        return f"SYN{self.seed:04d}-{self.patient:06d}"

    @property
    def study_uid(self) -> str:
        return synthetic_uid(self.seed, self.patient, self.study, "study")

    @property
    def series_uid(self) -> str:
        return synthetic_uid(self.seed, self.patient, self.study, "series")

    @property
    def sop_uid(self) -> str:
        return synthetic_uid(self.seed, self.patient, self.study, "sop")


def _studies_of(seed: int, patient: int) -> int:
    # 1-4 studies per patient, skewed to few (most patients are imaged once or twice)
    return int(_rng(seed, "nstudies", patient).choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))


_PATIENT_STARTS: dict[int, list[int]] = {}


def patient_of(index: int, seed: int = 0) -> tuple[int, int]:
    """(patient number, study number) of case ``index`` in cohort ``seed``: patients take consecutive indices."""
    if index < 0:
        raise ValueError(f"case index must be >= 0, got {index}")
    starts = _PATIENT_STARTS.setdefault(seed, [0])  # starts[p] = first index of patient p (grown on demand)
    while starts[-1] <= index:
        starts.append(starts[-1] + _studies_of(seed, len(starts) - 1))
    patient = bisect.bisect_right(starts, index) - 1
    return patient, index - starts[patient]


def case_spec(
    index: int,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    prevalence: float = DEFAULT_PREVALENCE,
    difficulty: float = DEFAULT_DIFFICULTY,
    label_noise: float = 0.0,
) -> CaseSpec:
    """The spec of case ``index``: its patient, study and labels. Labels are correlated within a patient."""
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if not 0.0 <= label_noise <= 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5], got {label_noise}")
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    patient, study = patient_of(index, seed)
    r = _rng(seed, "label", patient, study)
    # a patient-level propensity keeps the marginal prevalence while making a patient's studies correlated
    u_patient = _rng(seed, "propensity", patient).random()
    u = 0.5 * u_patient + 0.5 * r.random()
    # u is triangular on [0,1]; invert its CDF so that P(u' < prevalence) == prevalence
    u = 2 * u * u if u < 0.5 else 1 - 2 * (1 - u) ** 2
    true_label = int(u < prevalence)
    label = true_label ^ int(r.random() < label_noise)
    return CaseSpec(seed, index, patient, study, true_label, label, size, difficulty)


# ---------------------------------------------------------------------------------------------------------------------
# rendering


@dataclass(frozen=True)
class Anatomy:
    """Patient-level anatomy (fixed across the patient's studies)."""

    body_w: float
    body_h: float
    lung_w: float
    lung_h: float
    lung_gap: float
    heart_w: float
    heart_h: float
    heart_shift: float
    dome_r: float
    dome_l: float
    rib_pitch: float
    rib_tilt: float
    soft_tissue: float
    breast: float
    sex: str
    age: int


def _anatomy(seed: int, patient: int) -> Anatomy:
    r = _rng(seed, "anatomy", patient)
    sex = "F" if r.random() < 0.5 else "M"
    return Anatomy(
        body_w=r.uniform(0.78, 0.95),
        body_h=r.uniform(1.05, 1.25),
        lung_w=r.uniform(0.30, 0.38),
        lung_h=r.uniform(1.12, 1.3),
        lung_gap=r.uniform(0.09, 0.14),
        heart_w=r.uniform(0.24, 0.32),
        heart_h=r.uniform(0.24, 0.32),
        heart_shift=r.uniform(0.08, 0.16),
        dome_r=r.uniform(0.04, 0.10),
        dome_l=r.uniform(0.03, 0.08),
        rib_pitch=r.uniform(0.085, 0.11),
        rib_tilt=r.uniform(0.25, 0.45),
        soft_tissue=r.uniform(0.8, 1.25),
        breast=r.uniform(0.1, 0.35) if sex == "F" else r.uniform(0.0, 0.08),
        sex=sex,
        age=int(r.integers(18, 90)),
    )


def _smooth_noise(r: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise whose correlation length is ``scale`` (fraction of the image)."""
    low = max(4, int(round(1.0 / max(scale, 1e-3))) * 2)
    g = r.standard_normal((low, low))
    g = ndimage.gaussian_filter(g, 1.0, mode="wrap")
    up = ndimage.zoom(g, size / low, order=3, mode="grid-wrap", grid_mode=True)[:size, :size]
    up -= up.mean()
    s = up.std()
    return up / s if s > 0 else up


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """A soft step 0 -> 1 as x goes from +width to -width (inside is x < 0)."""
    return 1.0 / (1.0 + np.exp(np.clip(x / max(width, 1e-6), -40, 40)))


@dataclass
class Rendered:
    """One rendered radiograph: stored pixels, the lesion mask, and what the DICOM header needs."""

    spec: CaseSpec
    pixels: np.ndarray  # uint16, MONOCHROME2
    lesion_mask: np.ndarray  # bool, same shape
    lung_mask: np.ndarray  # bool
    bits_stored: int
    kvp: float
    exposure_mas: float
    anatomy: Anatomy
    lesions: list[dict[str, float]] = field(default_factory=list)


def render(spec: CaseSpec) -> Rendered:
    """Render the radiograph of ``spec`` (deterministic)."""
    n = spec.size
    an = _anatomy(spec.seed, spec.patient)
    r = _rng(spec.seed, "study", spec.patient, spec.study)
    # study-level positioning: shift, rotation, inspiration depth, and a tilt
    dx, dy = r.uniform(-0.06, 0.06), r.uniform(-0.05, 0.07)
    rot = np.deg2rad(r.uniform(-4, 4))
    insp = r.uniform(0.92, 1.08)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    x0 = (xx + 0.5) / n * 2 - 1 - dx
    y0 = (yy + 0.5) / n * 2 - 1 - dy
    x = x0 * np.cos(rot) - y0 * np.sin(rot)
    y = x0 * np.sin(rot) + y0 * np.cos(rot)
    px = 2.0 / n  # one pixel in normalised units
    edge = 2.5 * px

    # --- soft tissue and thorax outline
    body = _soft(np.sqrt((x / an.body_w) ** 2 + ((y - 0.1) / an.body_h) ** 2) - 1, 0.03)
    # shoulders/axillae: extra soft tissue laterally at the top
    shoulders = _soft(np.sqrt(((np.abs(x) - 0.75) / 0.3) ** 2 + ((y + 0.8) / 0.25) ** 2) - 1, 0.08)
    density = 0.55 * an.soft_tissue * body + 0.1 * shoulders * body
    # breast shadows over the lower lungs
    if an.breast > 0.02:
        for sgn in (-1, 1):
            b = _soft(np.sqrt(((x - sgn * 0.45) / 0.32) ** 2 + ((y - 0.35) / 0.25) ** 2) - 1, 0.12)
            density += 0.3 * an.breast * b * np.clip((y - 0.1) / 0.35, 0, 1)

    # --- lungs (image left = patient right in PA)
    lung_h = an.lung_h * insp
    top = -0.8
    lungs = np.zeros_like(x)
    for sgn, width_scale, dome in ((-1, 1.0, an.dome_r), (1, 0.88, an.dome_l)):
        cx = sgn * (an.lung_gap + an.lung_w * width_scale)
        lx = (x - cx) / (an.lung_w * width_scale)
        # a rounded apex, straighter lateral wall, and a domed base
        ly = (y - (top + lung_h / 2)) / (lung_h / 2)
        shape = np.sqrt(lx**2 + np.maximum(ly, 0) ** 4 + np.minimum(ly, 0) ** 2 * 1.2) - 1
        base = top + lung_h - dome * (1 - np.clip(lx, -1, 1) ** 2) + 0.06 * np.clip(sgn * lx, 0, 1)
        inside = _soft(shape, 0.02) * _soft(y - base, edge)
        lungs = np.maximum(lungs, inside)
    # the heart narrows the left lung
    heart_cx = an.heart_shift
    heart_cy = top + lung_h - an.heart_h * 0.9
    heart = _soft(np.sqrt(((x - heart_cx) / an.heart_w) ** 2 + ((y - heart_cy) / an.heart_h) ** 2) - 1, 0.015)
    mediastinum = _soft(np.abs(x - 0.01) - (an.lung_gap * 0.9 + 0.03 * (y + 0.6)), 0.02) * _soft(y - 0.6, 0.05)
    lungs = lungs * (1 - heart) * (1 - 0.9 * mediastinum)
    lung_density = 0.42 * an.soft_tissue
    # diffuse haze over the lungs (overlying soft tissue, poor inspiration) in every image, whatever its label:
    # it moves global intensity statistics more than a consolidation does, so they cannot reveal the label
    haze = r.uniform(0.0, 0.3) * lung_density
    density -= (lung_density - haze) * lungs
    density += 0.04 * heart + 0.03 * mediastinum
    # abdomen below the diaphragm is soft tissue: already in `body`; add the liver/stomach contrast difference
    density += 0.05 * _soft(-(y - (top + lung_h + 0.05)), 0.04) * body
    # spine
    spine = _soft(np.abs(x - 0.005) - 0.055, 0.01) * body
    density += 0.1 * spine
    # hila and lung markings: vessels radiating from the hila, finer towards the periphery
    r_vessel = _rng(spec.seed, "vessels", spec.patient)
    # thin branching markings: ridges of band-limited noise (|noise| near zero), not blobs that mimic consolidation
    vessels = np.exp(-(_smooth_noise(r_vessel, n, 0.04) / 0.25) ** 2)
    hilum_dist = np.minimum(
        np.hypot(x + an.lung_gap + 0.08, y - (top + 0.45 * lung_h)), np.hypot(x - an.lung_gap - 0.08, y - (top + 0.45 * lung_h))
    )
    markings = vessels * np.exp(-hilum_dist / 0.35)
    density += 0.05 * markings * lungs + 0.08 * np.exp(-((hilum_dist / 0.07) ** 2)) * lungs

    # --- ribs: posterior ribs are arcs sloping down laterally; anterior ribs fainter, sloping the other way
    ribs = np.zeros_like(x)
    for i in range(10):
        yc = top - 0.02 + i * an.rib_pitch * insp
        for sgn in (-1, 1):
            lx = sgn * x  # 0 at the midline, positive laterally
            arc = yc - 0.1 - 0.2 * lx + (0.55 + an.rib_tilt) * lx**2
            d = np.abs(y - arc)
            thick = 0.022 + 0.004 * (i / 10)
            band = _soft(d - thick, px * 1.5) * (lx > 0.04) * _soft(lx - (an.lung_gap + 2.05 * an.lung_w), 0.02)
            cortex = _soft(np.abs(d - thick) - px * 1.2, px) * (lx > 0.04)
            ribs += band * 0.08 + cortex * 0.04 * band.max()
            ant = yc + 0.3 - 0.35 * (0.9 - lx) - 0.2 * an.rib_tilt * (0.9 - lx) ** 2
            d2 = np.abs(y - ant)
            ribs += 0.035 * _soft(d2 - 0.016, px * 2) * (lx > 0.15) * (lx < an.lung_gap + 1.6 * an.lung_w)
    density += ribs * body
    # clavicles: from the sternal notch outwards and slightly upwards
    for sgn in (-1, 1):
        lx = sgn * x
        cl = -0.66 - 0.12 * (lx - 0.1) + 0.25 * (lx - 0.35) ** 2
        clav = _soft(np.abs(y - cl) - 0.025, px * 2) * (lx > 0.06) * (lx < 0.62)
        density += 0.14 * clav

    # --- pneumonia-like consolidations
    lesion_density = np.zeros_like(x)
    lesions: list[dict[str, float]] = []
    if spec.true_label:
        rl = _rng(spec.seed, "lesion", spec.patient, spec.study)
        bilateral = rl.random() < 0.25
        count = int(rl.choice([1, 2, 3], p=[0.6, 0.3, 0.1])) + (1 if bilateral else 0)
        sides = [-1, 1] if bilateral else [int(rl.choice([-1, 1]))]
        lung_pts = np.argwhere(lungs > 0.9)
        for k in range(count):
            side = sides[k % len(sides)]
            side_pts = lung_pts[(x[lung_pts[:, 0], lung_pts[:, 1]] * side) > 0] if len(lung_pts) else lung_pts
            if len(side_pts) == 0:
                side_pts = lung_pts
            if len(side_pts) == 0:
                break
            # lower zones are more often involved (lobar pneumonia), so bias towards larger y
            w = (y[side_pts[:, 0], side_pts[:, 1]] + 1.2) ** 1.5
            j = rl.choice(len(side_pts), p=w / w.sum())
            cy_, cx_ = side_pts[j]
            cxn, cyn = x[cy_, cx_], y[cy_, cx_]
            subtle = rl.random() < 0.1 + 0.3 * spec.difficulty
            size_scale = 1.0 - 0.35 * spec.difficulty
            sx = rl.uniform(0.08, 0.22) * size_scale
            sy = sx * rl.uniform(0.6, 1.5)
            ang = rl.uniform(0, np.pi)
            u = (x - cxn) * np.cos(ang) + (y - cyn) * np.sin(ang)
            v = -(x - cxn) * np.sin(ang) + (y - cyn) * np.cos(ang)
            env = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2) ** rl.uniform(0.8, 1.6))
            tex_scale = rl.uniform(0.015, 0.05)
            tex = _smooth_noise(rl, n, tex_scale)
            # patchy: parts of the envelope are spared; confluent more often when easy
            patch = _soft(-(tex + rl.uniform(0.0, 1.2) - 0.8 * spec.difficulty), 0.5)
            bronchi = np.clip(_smooth_noise(rl, n, 0.02), 1.2, None) - 1.2  # air bronchograms stay darker
            amp = lung_density * rl.uniform(0.45, 0.9) * (1.0 - 0.5 * spec.difficulty)
            if subtle:
                amp *= rl.uniform(0.45, 0.7)
            op = amp * env * (0.45 + 0.55 * patch) * (1 - 0.5 * np.clip(bronchi, 0, 1))
            lesion_density = np.maximum(lesion_density, op)
            lesions.append({"x": float(cxn), "y": float(cyn), "sx": float(sx), "sy": float(sy), "amp": float(amp),
                            "subtle": float(subtle)})
    lung_soft = np.clip(lungs * 1.1, 0, 1)
    density += lesion_density * lung_soft
    lesion_mask = (lesion_density * lung_soft) > 0.25 * max((d["amp"] for d in lesions), default=1.0)

    # --- acquisition: exposure, kVp-dependent contrast, heel effect, detector, noise
    kvp = float(r.uniform(100, 130))
    mas = float(r.uniform(1.5, 5.0))
    mu = 2.2 * (1.0 + (120 - kvp) / 120)  # harder beams flatten contrast
    transmitted = np.exp(-mu * np.clip(density, 0, None))
    heel = 1.0 + r.uniform(-0.12, 0.12) * y + r.uniform(-0.06, 0.06) * x
    signal = transmitted * heel * mas
    # quantum noise (Poisson-like, relative std falls with dose) plus a little structured detector noise
    q = r.standard_normal(signal.shape).astype(np.float32)
    signal = signal + q * np.sqrt(np.clip(signal, 1e-6, None)) * 0.02 * r.uniform(0.7, 1.4)
    signal = signal * (1 + 0.01 * _smooth_noise(r, n, 0.3))
    # MONOCHROME2: dense is bright, so store a log-transformed inverted signal, as DX processing does
    log_img = -np.log(np.clip(signal, 1e-4, None))
    gamma = r.uniform(0.85, 1.15)
    lo, hi = np.percentile(log_img, [0.1, 99.9])
    img = np.clip((log_img - lo) / max(hi - lo, 1e-6), 0, 1) ** gamma
    bits = int(r.choice([12, 14, 16]))
    top_val = 2**bits - 1
    offset = r.uniform(0.02, 0.12)
    scale = r.uniform(0.75, 0.95)
    stored = np.clip(np.round((offset + scale * img) * top_val), 0, top_val).astype(np.uint16)
    return Rendered(spec, stored, lesion_mask.astype(bool), lungs > 0.5, bits, kvp, mas, an, lesions)


# ---------------------------------------------------------------------------------------------------------------------
# DICOM


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fm.ImplementationVersionName = "RADLOOP_SYN"
    return fm


def _study_date(seed: int, patient: int, study: int) -> dt.date:
    base = dt.date(2020, 1, 1) + dt.timedelta(days=int(_rng(seed, "date", patient).integers(0, 1500)))
    return base + dt.timedelta(days=int(study * 45 + _rng(seed, "date", patient, study).integers(0, 30)))


def to_dataset(rd: Rendered) -> Dataset:
    """The DICOM dataset of a rendered radiograph (DX For Presentation, explicit VR little endian)."""
    s = rd.spec
    ds = Dataset()
    ds.file_meta = _file_meta(DX_SOP_CLASS, s.sop_uid)
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
    ds.Manufacturer = "radloop synthetic"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST PA"
    ds.SeriesDescription = "PA"
    ds.PatientName = f"SYNTHETIC^{s.patient:06d}"
    ds.PatientID = s.patient_id
    birth = date.year - rd.anatomy.age
    ds.PatientBirthDate = f"{birth:04d}0101"
    ds.PatientSex = rd.anatomy.sex
    ds.PatientAge = f"{rd.anatomy.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
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
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = rd.pixels.astype("<u2").tobytes()
    return ds


def generate_case(
    index: int,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    prevalence: float = DEFAULT_PREVALENCE,
    difficulty: float = DEFAULT_DIFFICULTY,
    label_noise: float = 0.0,
) -> tuple[Dataset, int, np.ndarray]:
    """Case ``index`` of cohort ``seed`` -> (DICOM dataset, observed label 0/1, lesion mask bool[size, size]).

    The lesion mask marks the pixels of the consolidations (empty for true negatives); with label noise the observed
    label may disagree with it.
    """
    rd = render(case_spec(index, seed, size=size, prevalence=prevalence, difficulty=difficulty, label_noise=label_noise))
    return to_dataset(rd), rd.spec.label, rd.lesion_mask


def iter_cohort(
    n: int,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    prevalence: float = DEFAULT_PREVALENCE,
    difficulty: float = DEFAULT_DIFFICULTY,
    label_noise: float = 0.0,
    start: int = 0,
) -> Iterator[Rendered]:
    """Render cases ``start .. start+n-1`` of cohort ``seed``."""
    for i in range(start, start + n):
        yield render(case_spec(i, seed, size=size, prevalence=prevalence, difficulty=difficulty,
                               label_noise=label_noise))


def write_cohort(out: str | Path, n: int, seed: int = 0, *, masks: bool = False, **kw: Any) -> list[dict[str, Any]]:
    """Write ``n`` DICOM files and ``labels.csv`` (+ ``labels.jsonl``) into ``out``; returns the label rows."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for rd in iter_cohort(n, seed, **kw):
        s = rd.spec
        name = f"{s.index:06d}.dcm"
        to_dataset(rd).save_as(d / name, enforce_file_format=True)
        if masks:
            np.save(d / f"{s.index:06d}_mask.npy", rd.lesion_mask)
        rows.append({"file": name, "index": s.index, "label": s.label, "true_label": s.true_label,
                     "patient_id": s.patient_id, "study": s.study, "study_uid": s.study_uid,
                     "series_uid": s.series_uid, "sop_uid": s.sop_uid, "lesion_pixels": int(rd.lesion_mask.sum())})
    if rows:
        with open(d / "labels.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (d / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# publishing a cohort as the platform stores it (HTJ2K frames + DICOM JSON + a dataset manifest)


def publish_cohort(
    s3: Any,
    *,
    images_bucket: str,
    ml_bucket: str,
    n: int,
    seed: int = 0,
    pseudonym_key: str = "synthetic",
    label_version: int = 1,
    reader: str = "synthetic",
    **kw: Any,
) -> tuple[str, str]:
    """Store ``n`` cases like ingestion does and write their manifest; returns (manifest s3 uri, sha256).

    ``s3`` is a boto3 S3 client. Frames go to ``frame_key(...,1)`` as HTJ2K, DICOM JSON to ``metadata_key``, and the
    manifest (shared.datasets) to ``dataset_manifest_key(sha)`` in ``ml_bucket``. For tests and demos.
    """
    from shared import datasets, htj2k, storage
    from shared.events import pseudonymise

    records = []
    for rd in iter_cohort(n, seed, **kw):
        s = rd.spec
        ds = to_dataset(rd)
        fk = storage.frame_key(s.study_uid, s.series_uid, s.sop_uid, 1)
        mk = storage.metadata_key(s.study_uid, s.series_uid, s.sop_uid)
        s3.put_object(Bucket=images_bucket, Key=fk, Body=htj2k.encode(rd.pixels))
        meta = ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _el: "")
        meta.pop("7FE00010", None)
        s3.put_object(Bucket=images_bucket, Key=mk, Body=json.dumps(meta).encode())
        pseudo = pseudonymise(s.patient_id, pseudonym_key)
        records.append(datasets.ManifestRecord(
            sop_uid=s.sop_uid, study_uid=s.study_uid, series_uid=s.series_uid, bucket=images_bucket, frame_key=fk,
            metadata_key=mk, label="pneumonia" if s.label else "normal", target=s.label, label_version=label_version,
            reader=reader, patient_pseudo_id=pseudo, split=datasets.split_for(pseudo)))
    body = datasets.serialize(records)
    sha = datasets.sha256(body)
    key = storage.dataset_manifest_key(sha)
    s3.put_object(Bucket=ml_bucket, Key=key, Body=body)
    return f"s3://{ml_bucket}/{key}", sha


# ---------------------------------------------------------------------------------------------------------------------
# CT series


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
    an = _anatomy(seed, patient)
    r = _rng(seed, "ct", patient)
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
        ds.file_meta = _file_meta(CT_SOP_CLASS, sop)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n", type=int, default=100, help="number of radiographs (or CT slices with --ct)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE)
    ap.add_argument("--prevalence", type=float, default=DEFAULT_PREVALENCE)
    ap.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY)
    ap.add_argument("--label-noise", type=float, default=0.0)
    ap.add_argument("--masks", action="store_true", help="also write lesion masks as .npy")
    ap.add_argument("--ct", action="store_true", help="write a chest CT series of --n slices instead")
    ap.add_argument("--opacities", action="store_true", help="CT: add lung opacities")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error(f"--n must be at least 1, got {a.n}")
    if a.ct:
        paths = write_ct_series(a.out, a.seed, slices=a.n, size=a.size, opacities=a.opacities)
        sys.stdout.write(json.dumps({"out": a.out, "ct_slices": len(paths)}) + "\n")
        return 0
    rows = write_cohort(a.out, a.n, a.seed, masks=a.masks, size=a.size, prevalence=a.prevalence,
                        difficulty=a.difficulty, label_noise=a.label_noise)
    pos = sum(r["label"] for r in rows)
    patients = len({r["patient_id"] for r in rows})
    sys.stdout.write(json.dumps({"out": a.out, "images": len(rows), "positives": pos, "patients": patients}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "CaseSpec", "Rendered", "case_spec", "generate_case", "iter_cohort", "iter_ct_series", "main", "patient_of",
    "publish_cohort", "render", "synthetic_uid", "to_dataset", "write_cohort", "write_ct_series",
]


def _shard_cases(args: tuple[int, int, int, int, int | None, str, dict[str, Any]]
                 ) -> list[tuple[str, np.ndarray, int, str, str]]:
    """Render and preprocess cases ``start .. start+n-1`` (one worker's chunk of :func:`cohort_shards`)."""
    from shared.datasets import split_for
    from shared.events import pseudonymise
    from shared.preprocessing import params_from_dataset, preprocess

    start, n, seed, image_size, render_size, pseudonym_key, kw = args
    out = []
    for rd in iter_cohort(n, seed, size=render_size or image_size, start=start, **kw):
        pseudo = pseudonymise(rd.spec.patient_id, pseudonym_key)
        x = preprocess(rd.pixels, params_from_dataset(to_dataset(rd)), size=image_size)
        out.append((split_for(pseudo), x, rd.spec.label, rd.spec.sop_uid, pseudo))
    return out


def cohort_shards(out_root: str | Path, n: int, seed: int = 0, *, image_size: int = 128, render_size: int | None = None,
                  pseudonym_key: str = "synthetic", workers: int = 1, **kw: Any) -> dict[str, Any]:
    """Render ``n`` cases straight into preprocessed train/val/test shards (no S3), split by patient like the manifest.

    For tests and benchmarks: the same :func:`shared.preprocessing.preprocess` and :func:`shared.datasets.split_for`
    as the pipeline, without the HTJ2K round trip (which is lossless, so the arrays are the same). ``workers`` > 1
    renders chunks in worker processes; the shards are identical for any number of workers (cases keep their order).
    """
    from training.preprocess import write_shard

    root = Path(out_root)
    buckets: dict[str, tuple[list[np.ndarray], list[int], list[str], list[str]]] = {
        s: ([], [], [], []) for s in ("train", "val", "test")}
    chunk = max(1, min(64, -(-n // max(1, workers * 4))))
    jobs = [(a, min(chunk, n - a), seed, image_size, render_size, pseudonym_key, kw) for a in range(0, n, chunk)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_shard_cases, jobs))
    else:
        results = [_shard_cases(j) for j in jobs]
    for part in results:
        for split, x, label, sop, pseudo in part:
            b = buckets[split]
            b[0].append(x)
            b[1].append(label)
            b[2].append(sop)
            b[3].append(pseudo)
    counts = {}
    for split, (xs, ys, ids, pats) in buckets.items():
        x = np.stack(xs) if xs else np.zeros((0, image_size, image_size), np.float32)
        write_shard(root / split, x, ys, ids, pats)
        counts[split] = {"n": len(ys), "positives": int(sum(ys))}
    meta = {"manifest_sha256": None, "image_size": image_size, "counts": counts, "synthetic_seed": seed}
    for split in buckets:
        (root / split / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
