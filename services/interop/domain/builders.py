"""AI results and verified reads as standard DICOM objects, built with highdicom (pure: no AWS, no I/O).

Three objects, each referencing the source image and each a new series in the source's study:

- :func:`build_ai_sr`: a Comprehensive 3D SR holding a TID 1500 Measurement Report. One TID 1501 measurement group
  says what the algorithm found: a qualitative evaluation (Pneumonia: Present/Absent at the operating threshold), the
  probability as a numeric measurement (DCM "Probability", unit UCUM ``1``) and the operating threshold. The group
  carries the Algorithm Identification (TID 4019: name, version, and the model version and threshold as parameters)
  and the source image (Source Image for Measurement Group); the observer is the algorithm, a device (TID 1004).
- :func:`build_heatmap_seg`: the Grad-CAM map as a FRACTIONAL Segmentation of type PROBABILITY (0..255 for 0..1),
  one segment, referencing the source image, with the same algorithm identification.
- :func:`build_verified_sr`: the radiologist's final read as a TID 1500 report whose observer is a person (TID 1003)
  identified only by a pseudonym and a coded role, never by a name that the study does not already hold; the
  document is marked complete, verified and final.

Invariants: every UID is derived (:func:`services.interop.domain.uids.derived_uid`) from the source SOP Instance UID
and the model or label version, and every date and time comes from the triggering event, so building the same result
twice gives the same bytes (:func:`to_bytes`), which is what makes regeneration idempotent end to end. Patient and
study attributes are copied from the source, which is what places the objects in the same study; no other PHI enters.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from services.interop.domain.uids import derived_uid

MANUFACTURER = "radloop"
#: SNOMED CT concepts used in the reports (the DICOM content mapping resources' usual codes).
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
RADIOLOGIST = hd.sr.CodedConcept("66862007", "SCT", "Radiologist")
#: The coded value for each label of a verified read.
LABEL_VALUES: dict[str, hd.sr.CodedConcept] = {
    "pneumonia": hd.sr.CodedConcept("52101004", "SCT", "Present"),
    "normal": hd.sr.CodedConcept("2667000", "SCT", "Absent"),
    "indeterminate": hd.sr.CodedConcept("82334004", "SCT", "Indeterminate"),
}
#: Series numbers of the derived series (high, so that they sort after the acquired series in viewers).
SERIES_NUMBER = {"ai-sr": 9001, "ai-seg": 9002, "read-sr": 9003}
SERIES_DESCRIPTION = {"ai-sr": "AI triage result (radloop)", "ai-seg": "AI heatmap Grad-CAM (radloop)",
                      "read-sr": "Verified read (radloop)"}


@dataclass(frozen=True)
class Algorithm:
    """What produced a result: TID 4019's name and version, plus the model version."""

    name: str
    version: str
    model_version: int

    @property
    def full_version(self) -> str:
        return f"{self.version}+model.{self.model_version}"


@dataclass(frozen=True)
class Score:
    """One scored image: the probability and the operating threshold the triage used, and when it was scored."""

    probability: float
    threshold: float
    scored_at: datetime

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class VerifiedRead:
    """A final radiologist read. ``reader_pseudo_id`` is already a pseudonym (see :func:`shared.events.pseudonymise`)."""

    label: str
    label_version: int
    resolution: str
    reader_pseudo_id: str
    verified_at: datetime


class ResultBuildError(ValueError):
    """The inputs cannot make a valid object (the sentence says which value and what was expected)."""


def series_uid(study_uid: str, kind: str, version: int) -> str:
    """The derived series of one kind in one study: one per model version for AI results, one for all reads."""
    return derived_uid("radloop-series", study_uid, kind, 0 if kind == "read-sr" else version)


def sop_uid(source_sop_uid: str, kind: str, version: int) -> str:
    """The derived instance of one kind for one source image and one model (or label) version."""
    return derived_uid("radloop-instance", source_sop_uid, kind, version)


def _common(source: Dataset, kind: str, version: int, at: datetime) -> dict[str, object]:
    instance_number = int(source.get("InstanceNumber") or 1)
    return {
        "series_instance_uid": series_uid(str(source.StudyInstanceUID), kind, version),
        "series_number": SERIES_NUMBER[kind],
        "sop_instance_uid": sop_uid(str(source.SOPInstanceUID), kind, version),
        "instance_number": max(1, instance_number),
        "content_date": at.date(),
        "content_time": at.time().replace(microsecond=0),
        "series_date": at.date(),
        "series_time": at.time().replace(microsecond=0),
        "series_description": SERIES_DESCRIPTION[kind],
    }


def _algorithm_id(algo: Algorithm, threshold: float | None) -> hd.sr.AlgorithmIdentification:
    params = [f"model_version={algo.model_version}"]
    if threshold is not None:
        params.append(f"operating_threshold={threshold:.6g}")
    return hd.sr.AlgorithmIdentification(name=algo.name, version=algo.full_version, parameters=params)


def _device_context(algo: Algorithm) -> hd.sr.ObservationContext:
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("radloop-device", algo.name, algo.full_version), name=algo.name,
            manufacturer_name=MANUFACTURER, model_name=f"model {algo.model_version}"),
    ))


def _source_ref(source: Dataset) -> list[hd.sr.SourceImageForMeasurementGroup]:
    return [hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID), str(source.SOPInstanceUID))]


#: Type 2 attributes of the Patient and General Study modules that highdicom copies from the source. Ingestion
#: accepts images without them (type 2 means present but possibly empty; senders omit them), so they are added empty.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _check_source(source: Dataset) -> Dataset:
    """The source, refused without the UIDs a result references; a copy with absent type 2 attributes made empty."""
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(source.get(kw) or ""):
            raise ResultBuildError(f"The source image has no {kw}; a result must reference its source image.")
    missing = [kw for kw in TYPE2_COPIED if kw not in source]
    if not missing:
        return source
    filled = Dataset()
    filled.update(source)
    if hasattr(source, "file_meta"):
        filled.file_meta = source.file_meta
    for kw in missing:
        setattr(filled, kw, None)
    return filled


def build_ai_sr(source: Dataset, score: Score, algo: Algorithm) -> hd.sr.Comprehensive3DSR:
    """The AI result for one image as a Comprehensive 3D SR (TID 1500), see the module docstring."""
    source = _check_source(source)
    if not 0.0 <= score.probability <= 1.0:
        raise ResultBuildError(f"The probability {score.probability!r} must lie between 0 and 1.")
    algo_id = _algorithm_id(algo, score.threshold)
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid("radloop-tracking", str(source.SOPInstanceUID), "ai", algo.model_version),
        identifier="pneumonia triage")
    finding = hd.sr.CodedConcept("52101004", "SCT", "Present") if score.positive else hd.sr.CodedConcept(
        "2667000", "SCT", "Absent")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=PNEUMONIA,
        algorithm_id=algo_id,
        source_images=_source_ref(source),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=finding)],
        measurements=[
            hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(score.probability), 6),
                              unit=codes.UCUM.NoUnits, algorithm_id=algo_id),
            hd.sr.Measurement(name=hd.sr.CodedConcept("RL001", "99RADLOOP", "Operating threshold"),
                              value=round(float(score.threshold), 6), unit=codes.UCUM.NoUnits),
        ],
    )
    report = hd.sr.MeasurementReport(observation_context=_device_context(algo), procedure_reported=PLAIN_CHEST_XRAY,
                                     imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=report, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, **_common(source, "ai-sr", algo.model_version, score.scored_at))
    _pin_times(sr, score.scored_at)
    return sr


def build_verified_sr(source: Dataset, read: VerifiedRead) -> hd.sr.Comprehensive3DSR:
    """The final radiologist read of one image as a Comprehensive 3D SR (TID 1500), see the module docstring."""
    source = _check_source(source)
    try:
        value = LABEL_VALUES[read.label]
    except KeyError:
        raise ResultBuildError(f"The label {read.label!r} is not one of {sorted(LABEL_VALUES)}.") from None
    pseudo = read.reader_pseudo_id
    if not pseudo or len(pseudo) > 48 or not pseudo.replace("-", "").isalnum():
        raise ResultBuildError(f"The reader pseudonym {pseudo!r} must be 1 to 48 letters, digits or dashes.")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            # A pseudonym in the name's family-name component: the name value is required by TID 1003, and the
            # reader's real name must not leave radloop.
            name=f"READER^{pseudo}", login_name=pseudo, organization_name=MANUFACTURER,
            role_in_organization=RADIOLOGIST),
    )
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid("radloop-tracking", str(source.SOPInstanceUID), "read", read.label_version),
        identifier=f"verified read v{read.label_version} ({read.resolution})")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=PNEUMONIA, source_images=_source_ref(source),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=value)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY, imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=report, manufacturer=MANUFACTURER, is_complete=True, is_final=True,
        is_verified=True, verifying_observer_name=f"READER^{pseudo}", verifying_organization=MANUFACTURER,
        **_common(source, "read-sr", read.label_version, read.verified_at))
    # VerificationDateTime is the wall clock too; the read's own time is the truth (and keeps the bytes stable).
    for item in sr.get("VerifyingObserverSequence") or []:
        item.VerificationDateTime = read.verified_at.strftime("%Y%m%d%H%M%S")
    if read.label_version > 1:
        # An amended read replaces the previous version's report: name it (Predecessor Documents Sequence, PS3.3
        # C.17.2), so a PACS shows one current report and its history, not two final ones that disagree (found by
        # a review, session 22). Its UIDs are derived, so no lookup is needed.
        prev = read.label_version - 1
        ref = Dataset()
        ref.ReferencedSOPClassUID = sr.SOPClassUID
        ref.ReferencedSOPInstanceUID = sop_uid(str(source.SOPInstanceUID), "read-sr", prev)
        series = Dataset()
        series.SeriesInstanceUID = series_uid(str(source.StudyInstanceUID), "read-sr", prev)
        series.ReferencedSOPSequence = [ref]
        item = Dataset()
        item.StudyInstanceUID = source.StudyInstanceUID
        item.ReferencedSeriesSequence = [series]
        sr.PredecessorDocumentsSequence = [item]
    _pin_times(sr, read.verified_at)
    return sr


def build_heatmap_seg(source: Dataset, heatmap: np.ndarray, algo: Algorithm, at: datetime) -> hd.seg.Segmentation:
    """The Grad-CAM map (``rows x columns`` floats in 0..1) as a FRACTIONAL PROBABILITY Segmentation."""
    source = _check_source(source)
    rows, cols = int(source.Rows), int(source.Columns)
    if heatmap.shape != (rows, cols):
        raise ResultBuildError(f"The heatmap is {heatmap.shape[0]} x {heatmap.shape[1]} but the source image is "
                               f"{rows} x {cols}; a segmentation must match its source image.")
    if not np.isfinite(heatmap).all() or heatmap.min() < 0.0 or heatmap.max() > 1.0:
        raise ResultBuildError("The heatmap must hold finite values between 0 and 1.")
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Grad-CAM pneumonia",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure, segmented_property_type=PNEUMONIA,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algo.name, family=codes.DCM.ArtificialIntelligence, version=algo.full_version,
            parameters={"model_version": str(algo.model_version), "method": "Grad-CAM"}),
        tracking_uid=derived_uid("radloop-tracking", str(source.SOPInstanceUID), "seg", algo.model_version),
        tracking_id="pneumonia heatmap",
    )
    common = _common(source, "ai-seg", algo.model_version, at)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=heatmap.astype(np.float32)[None], segmentation_type="FRACTIONAL",
        fractional_type="PROBABILITY", max_fractional_value=255, segment_descriptions=[description],
        manufacturer=MANUFACTURER, manufacturer_model_name=algo.name, software_versions=algo.full_version,
        device_serial_number=str(algo.model_version), omit_empty_frames=False,
        transfer_syntax_uid=ExplicitVRLittleEndian, content_label="GRADCAM", content_description="Grad-CAM heatmap",
        **common,
    )
    _pin_times(seg, at)
    # highdicom draws a random Dimension Organization UID; derive it like every other UID (determinism).
    dim_uid = derived_uid("radloop-dimension", str(seg.SOPInstanceUID))
    for kw in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(kw) or []:
            item.DimensionOrganizationUID = dim_uid
    return seg


def _pin_times(ds: Dataset, at: datetime) -> None:
    """highdicom stamps the wall clock into a few attributes; the event's time replaces it (determinism). Dates and
    times are the event's UTC time, so the object says so (Timezone Offset From UTC, SOP Common module): DA/TM are
    local time otherwise (PS3.5 §6.2), and an evening exam's result read as the next day (found by a review)."""
    ds.TimezoneOffsetFromUTC = (at.strftime("%z") or "+0000") if at.tzinfo is not None else "+0000"
    ds.InstanceCreationDate = at.strftime("%Y%m%d")
    ds.InstanceCreationTime = at.strftime("%H%M%S")
    for item in ds.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item:
            item.ContributionDateTime = at.strftime("%Y%m%d%H%M%S")


def to_bytes(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file (deterministic for deterministic inputs)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
