"""Derived objects (the AI SR and SEG, verified-read SRs) are stored like any instance, but they are not images to
read: verification opens no reading case for them, while an image still gets one."""

from __future__ import annotations

from shared.aws import AwsClients
from shared.events import InstanceStored
from shared.publisher import EventPublisher
from shared.settings import Settings


def _stored(sop: str, modality: str) -> InstanceStored:
    return InstanceStored(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                          modality=modality, number_of_frames=0 if modality == "SR" else 1, rows=0 if modality == "SR"
                          else 8, columns=0 if modality == "SR" else 8, original_key="dicom/x.dcm",
                          frames_prefix="frames/x", metadata_key="metadata/x.json", content_sha256="0" * 64,
                          size_bytes=1, htj2k_bytes=0, patient_pseudo_id="p", source="s3")


async def test_verification_opens_no_case_for_derived_objects(clients: AwsClients, adeployment: Settings) -> None:
    from services.verification.service import Verification
    from services.verification.settings import VerificationSettings

    v = Verification(clients, VerificationSettings(**adeployment.model_dump()), EventPublisher(clients, "verification"))
    for sop, modality in (("1.2.3.4.5", "SR"), ("1.2.3.4.6", "SEG")):
        out = await v.on_stored(_stored(sop, modality))
        assert out["case_id"] is None
        assert await v.store.get(sop) is None
    await v.on_stored(_stored("1.2.3.4.7", "DX"))
    assert (await v.store.get("1.2.3.4.7"))["stored"] is True
