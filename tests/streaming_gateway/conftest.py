"""Fixtures of the gateway tests: one bootstrapped deployment with a small stored corpus, and the gateway running
as a real process over HTTP (``python -m services.streaming_gateway``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid

from radloop.local.embedded_aws import EmbeddedAws
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix
from tests.streaming_gateway.store import GatewayProcess, load_testdata, make_dicom, run_gateway, store_instance


@dataclass
class Corpus:
    settings: Settings
    ct_study: str
    ct_series: str
    ct_sops: list[str]
    ct_pixels: list[np.ndarray]
    mr_study: str
    mr_series: str
    mr_sop: str
    mr_frames: np.ndarray
    cr_study: str
    cr_series: str
    cr_sop: str
    cr_pixels: np.ndarray
    offsets: dict[str, list[list[int]]] = field(default_factory=dict)
    originals: dict[str, bytes] = field(default_factory=dict)

    def token(self, role: str = "viewer", subject: str | None = None) -> str:
        return mint_token(self.settings, role, subject=subject)


async def _build(settings: Settings) -> Corpus:
    ct = load_testdata("693_UNCR.dcm")
    mr = load_testdata("emri_small.dcm")
    ct_study, ct_series = generate_uid(), generate_uid()
    mr_study, mr_series, mr_sop = generate_uid(), generate_uid(), generate_uid()
    cr_study, cr_series, cr_sop = generate_uid(), generate_uid(), generate_uid()
    base = ct.pixel_array.astype(np.int16)
    ct_sops, ct_pixels = [], []
    originals: dict[str, bytes] = {}
    offsets: dict[str, list[list[int]]] = {}
    async with AwsClients(settings) as clients:
        await bootstrap_topology(clients)
        for k in range(6):
            sop = generate_uid()
            px = (base + np.int16(k * 7)).astype(np.int16)
            data = make_dicom(ct, study=ct_study, series=ct_series, sop=sop, patient_name="DOE^JANE",
                              patient_id="PID-A", study_date="20240115", accession="ACC-1", modality="CT",
                              instance_number=k + 1, pixels=px)
            r = await store_instance(clients, data)
            ct_sops.append(sop)
            ct_pixels.append(px)
            originals[sop] = data
            offsets[sop] = r["offsets"]
        data = make_dicom(mr, study=mr_study, series=mr_series, sop=mr_sop, patient_name="SMITH^JOHN",
                          patient_id="PID-B", study_date="20240301", accession="ACC-2", modality="MR",
                          instance_number=1)
        r = await store_instance(clients, data)
        originals[mr_sop] = data
        offsets[mr_sop] = r["offsets"]
        # A MONOCHROME1 radiograph-like image with a VOI window: a horizontal ramp.
        cr_px = np.tile(np.linspace(0, 4000, 200, dtype=np.float64), (160, 1)).astype(np.uint16)
        data = make_dicom(ct, study=cr_study, series=cr_series, sop=cr_sop, patient_name="DOE^JOHN",
                          patient_id="PID-C", study_date="20231220", accession="ACC-3", modality="CR",
                          instance_number=1, pixels=cr_px,
                          extra={"PhotometricInterpretation": "MONOCHROME1", "PixelRepresentation": 0,
                                 "BitsStored": 12, "HighBit": 11, "WindowCenter": 2000, "WindowWidth": 4000,
                                 "RescaleSlope": 1, "RescaleIntercept": 0,
                                 "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"})
        r = await store_instance(clients, data)
        originals[cr_sop] = data
        offsets[cr_sop] = r["offsets"]
    return Corpus(settings, ct_study, ct_series, ct_sops, ct_pixels, mr_study, mr_series, mr_sop,
                  mr.pixel_array, cr_study, cr_series, cr_sop, cr_px, offsets, originals)


@pytest.fixture(scope="session")
def corpus(moto: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    settings = Settings(aws_endpoint_url=moto.endpoint, prefix=unique_prefix("gw"),
                        var_dir=tmp_path_factory.mktemp("gwvar"), aws_max_attempts=2)
    return asyncio.run(_build(settings))


@pytest.fixture(scope="session")
def gateway(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    viewer = tmp_path_factory.mktemp("viewer-dist")  # stands in for the built viewer (viewer/dist)
    (viewer / "index.html").write_text("<!doctype html><title>radloop viewer</title>")
    (viewer / "assets").mkdir()
    (viewer / "assets" / "app.js").write_text("console.log('radloop');")
    with run_gateway(corpus.settings, tmp_path_factory.mktemp("gw1"), RADLOOP_AUDIT_COALESCE_S="1",
                     RADLOOP_VIEWER_DIST=str(viewer)) as gp:
        yield gp


def auth(corpus: Corpus, role: str = "viewer", subject: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {corpus.token(role, subject)}"}


def audit_records(settings: Settings) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        from shared.audit import AuditLog

        async with AwsClients(settings) as c:
            return await AuditLog(c, "test").recent(limit=1000)

    return asyncio.run(go())


__all__ = ["Corpus", "auth", "audit_records", "Path"]
