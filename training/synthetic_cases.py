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


@dataclass(frozen=True)
class SiteProfile:
    """One acquiring site and device: what its images look like, whatever the label (a confounder, not a signal).

    Ranges are (low, high) of a per-study draw. Site 0 is the generator's original acquisition (no collimation, no
    markers), so a one-site cohort (``sites=1``) renders exactly as the generator did before sites existed.
    """

    institution: str
    station: str
    model: str
    view: str  # PA or AP
    #: share of patients imaged here (renormalised over the sites a cohort uses)
    weight: float
    kvp: tuple[float, float] = (100.0, 130.0)
    gamma: tuple[float, float] = (0.85, 1.15)  # of the processed (log, inverted) image
    offset: tuple[float, float] = (0.02, 0.12)  # of the stored range
    scale: tuple[float, float] = (0.75, 0.95)
    #: quantum noise relative to site 0, and the heel-effect gradient relative to site 0
    noise: float = 1.0
    heel: float = 1.0
    #: positioning: rotation (degrees) and shift (fraction of the field) added to every study's own
    extra_rotation_deg: float = 0.0
    extra_shift: float = 0.0
    #: collimation: each edge of the exposed field moves in by a fraction of the image in this range
    collimation: tuple[float, float] = (0.0, 0.0)
    #: True: processing blanks the unexposed border to black (an electronic shutter); False: it stays bright
    shutter: bool = False
    #: a lead side marker exposed with the image (radiopaque, so bright): "R", "L" or None
    marker: str | None = None
    #: text burned into the pixels by the modality (white), e.g. "AP PORTABLE"
    burned_in_text: str | None = None


#: The sites of a synthetic cohort (the generator's one source for them): a DR room, a CR room with noisier, flatter
#: images and tighter collimation, and an emergency department's portable unit (AP, low kVp, noisy, rotated, shuttered,
#: with burned-in text). Prevalence is the same at every site, so a site tells nothing about the label: a model has to
#: learn the lungs, not the scanner (docs/training.md, "The synthetic cohort").
SITES: tuple[SiteProfile, ...] = (
    SiteProfile("Synthetic General Hospital", "SGH-DR1", "SYN-DR 1717", "PA", weight=0.5),
    SiteProfile("Synthetic Community Hospital", "SCH-CR2", "SYN-CR 35", "PA", weight=0.3,
                kvp=(110.0, 125.0), gamma=(1.05, 1.35), offset=(0.08, 0.2), scale=(0.6, 0.8), noise=1.8, heel=1.5,
                extra_rotation_deg=3.0, extra_shift=0.03, collimation=(0.02, 0.07), marker="R"),
    SiteProfile("Synthetic Emergency Department", "SED-PORT1", "SYN-PORTABLE 2", "AP", weight=0.2,
                kvp=(80.0, 100.0), gamma=(0.7, 0.95), offset=(0.0, 0.06), scale=(0.85, 0.98), noise=2.5, heel=2.0,
                extra_rotation_deg=6.0, extra_shift=0.05, collimation=(0.03, 0.09), shutter=True, marker="L",
                burned_in_text="AP PORTABLE"),
)
DEFAULT_SITES = len(SITES)


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
    site: int = 0  # index into SITES (a patient's site: one hospital per patient)

    @property
    def site_profile(self) -> SiteProfile:
        return SITES[self.site]

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
    sites: int = DEFAULT_SITES,
) -> CaseSpec:
    """The spec of case ``index``: its patient, study, site and labels. Labels are correlated within a patient; the
    site (one of the first ``sites`` of :data:`SITES`) is the patient's and independent of the label."""
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if not 0.0 <= label_noise <= 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5], got {label_noise}")
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    if not 1 <= sites <= len(SITES):
        raise ValueError(f"sites must be in [1, {len(SITES)}], got {sites}")
    patient, study = patient_of(index, seed)
    r = keyed_rng(seed, "label", patient, study)
    # a patient-level propensity keeps the marginal prevalence while making a patient's studies correlated
    u_patient = keyed_rng(seed, "propensity", patient).random()
    u = 0.5 * u_patient + 0.5 * r.random()
    # u is triangular on [0,1]; invert its CDF so that P(u' < prevalence) == prevalence
    u = 2 * u * u if u < 0.5 else 1 - 2 * (1 - u) ** 2
    true_label = int(u < prevalence)
    label = true_label ^ int(r.random() < label_noise)
    return CaseSpec(seed, index, patient, study, true_label, label, size, difficulty, site_of(seed, patient, sites))


def site_of(seed: int, patient: int, sites: int = DEFAULT_SITES) -> int:
    """The site of ``patient``: drawn by the sites' weights from its own stream (so labels do not move with it)."""
    if sites == 1:
        return 0
    w = np.array([p.weight for p in SITES[:sites]], dtype=np.float64)
    return int(keyed_rng(seed, "site", patient).choice(sites, p=w / w.sum()))



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
