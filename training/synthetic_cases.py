"""The plan of a synthetic cohort: which patient and study each case is, and its labels, from ``(seed, index)``.

Deterministic helpers (seeded random streams, UIDs under the 2.25 root) and the patient-level anatomy live here too,
because everything rendered from a case (:mod:`training.synthetic_render`, :mod:`training.synthetic_ct`) derives
from them.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

import numpy as np

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
DEFAULT_SIZE = 512
DEFAULT_PREVALENCE = 0.3
DEFAULT_DIFFICULTY = 0.5
MAX_STUDIES_PER_PATIENT = 4


# ---------------------------------------------------------------------------------------------------------------------
# determinism helpers


def keyed_rng(*keys: int | str) -> np.random.Generator:
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
    return int(keyed_rng(seed, "nstudies", patient).choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))


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
    r = keyed_rng(seed, "label", patient, study)
    # a patient-level propensity keeps the marginal prevalence while making a patient's studies correlated
    u_patient = keyed_rng(seed, "propensity", patient).random()
    u = 0.5 * u_patient + 0.5 * r.random()
    # u is triangular on [0,1]; invert its CDF so that P(u' < prevalence) == prevalence
    u = 2 * u * u if u < 0.5 else 1 - 2 * (1 - u) ** 2
    true_label = int(u < prevalence)
    label = true_label ^ int(r.random() < label_noise)
    return CaseSpec(seed, index, patient, study, true_label, label, size, difficulty)



# ---------------------------------------------------------------------------------------------------------------------
# patient-level anatomy


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


def patient_anatomy(seed: int, patient: int) -> Anatomy:
    r = keyed_rng(seed, "anatomy", patient)
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
