"""End to end: instances stored through the real ingestion service (STOW-RS), read back through the gateway with
dicomweb-client: search, metadata, frames bit-exact, original bytes, rendered size."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from radloop.local.embedded_aws import EmbeddedAws
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix
from tests.streaming_gateway.store import run_gateway
from tests.support.ingestion_service import ingestion_service

FILES = ["693_UNCR.dcm", "emri_small.dcm", "MR_small_RLE.dcm"]


@pytest.fixture(scope="module")
def stored(moto: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    settings = Settings(aws_endpoint_url=moto.endpoint, prefix=unique_prefix("gwi"),
                        var_dir=tmp_path_factory.mktemp("gwivar"), aws_max_attempts=2)

    async def boot() -> None:
        async with AwsClients(settings) as c:
            await bootstrap_topology(c)

    asyncio.run(boot())
    datasets = [pydicom.dcmread(get_testdata_file(n)) for n in FILES] + [_non_finite(), _with_bulk()]
    # Both services start at once (each waits for its own readiness); the gateway reads whatever is stored later.
    ing_cm = ingestion_service(settings, tmp_path_factory.mktemp("gwi-ing"))
    gw_cm = run_gateway(settings, tmp_path_factory.mktemp("gwi-gw"))
    with ThreadPoolExecutor(2) as pool:
        starts = [(cm, pool.submit(cm.__enter__)) for cm in (ing_cm, gw_cm)]
        wait([f for _, f in starts])
    with ExitStack() as stack:
        for cm, f in starts:
            if f.exception() is None:
                stack.push(cm.__exit__)
        ing, gw = (f.result() for _, f in starts)
        stow = DICOMwebClient(url=f"{ing.url}/dicomweb",
                              headers={"Authorization": f"Bearer {mint_token(settings, 'pacs')}"})
        resp = stow.store_instances(datasets=datasets)
        assert "FailedSOPSequence" not in resp
        yield settings, gw.url


def _non_finite() -> pydicom.Dataset:
    """An MR whose FD holds NaN and whose DS holds 1e999 (infinity when read): valid DICOM, no JSON number."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = NON_FINITE_SOP
    ds.DiffusionBValue = float("nan")
    ds.SliceThickness = "1e999"
    return ds


NON_FINITE_SOP = generate_uid()
BULK_SOP = generate_uid()


def _with_bulk() -> pydicom.Dataset:
    """An MR with overlay data (29 KB), a VOI LUT sequence whose LUT Data is 8 KB, and an ICC profile."""
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = BULK_SOP
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new(0x00283006, "OW", bytes(range(256)) * 32)  # LUT Data, 8 KB
    ds.VOILUTSequence = [lut]
    ds.ICCProfile = bytes(range(256)) * 12
    return ds


def test_metadata_is_json_even_with_non_finite_numbers(stored: tuple[Settings, str]) -> None:
    """An FD of NaN and a DS of 1e999 were written as NaN and Infinity, which no JSON parser reads (a browser's
    JSON.parse failed, so the viewer could not load the series' metadata; found by a review): they are null, an empty
    value, in the instance's metadata, its series' and its study's, and in QIDO's includefield=all."""
    settings, url = stored
    h = {"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    found = strict(httpx.get(f"{url}/dicomweb/instances", params={"SOPInstanceUID": NON_FINITE_SOP,
                                                                  "includefield": "all"}, headers=h).text)
    assert len(found) == 1
    study, series = found[0]["0020000D"]["Value"][0], found[0]["0020000E"]["Value"][0]
    for path in (f"{study}/metadata", f"{study}/series/{series}/metadata",
                 f"{study}/series/{series}/instances/{NON_FINITE_SOP}/metadata"):
        r = httpx.get(f"{url}/dicomweb/studies/{path}", headers=h)
        assert r.status_code == 200, r.text
        (meta,) = strict(r.text)
        assert meta["00189087"] == {"vr": "FD", "Value": [None]} and meta["00180050"] == {"vr": "DS", "Value": [None]}
    assert found[0]["00189087"]["Value"] == [None]


def test_read_back_what_ingestion_stored(stored: tuple[Settings, str]) -> None:
    settings, url = stored
    client = DICOMwebClient(url=f"{url}/dicomweb",
                            headers={"Authorization": f"Bearer {mint_token(settings, 'viewer')}"})
    for name in FILES:
        path = Path(get_testdata_file(name))  # type: ignore[arg-type]
        ds = pydicom.dcmread(path)
        study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        found = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
        assert [f["00080018"]["Value"][0] for f in found] == [sop], name
        assert any(s["0020000D"]["Value"][0] == study
                   for s in client.search_for_studies(search_filters={"PatientID": str(ds.PatientID)}))
        assert client.search_for_series(study)[0]["0020000E"]["Value"] == [series]
        meta = client.retrieve_instance_metadata(study, series, sop)
        assert meta["00080018"]["Value"] == [sop] and "7FE00010" not in meta
        n = int(ds.get("NumberOfFrames", 1) or 1)
        expected = ds.pixel_array if n > 1 else ds.pixel_array[None]
        frames = client.retrieve_instance_frames(study, series, sop, frame_numbers=list(range(1, n + 1)))
        dtype = expected.dtype.newbyteorder("<")
        for k, raw in enumerate(frames):
            assert np.array_equal(np.frombuffer(raw, dtype).reshape(expected.shape[1:]), expected[k]), (name, k)
        original = client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
        assert original.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        buf = io.BytesIO()
        original.save_as(buf, enforce_file_format=True)
        jpg = client.retrieve_instance_rendered(study, series, sop)
        assert Image.open(io.BytesIO(jpg)).size == (int(ds.Columns), int(ds.Rows))
    # Each matching type on what ingestion indexed.
    ct, emri, rle = (pydicom.dcmread(get_testdata_file(n)) for n in FILES)

    def studies(**filters: str) -> set[str]:
        fuzzy = filters.pop("fuzzy", None) == "yes"
        return {s["0020000D"]["Value"][0] for s in client.search_for_studies(search_filters=filters,
                                                                               fuzzymatching=fuzzy or None)}

    mine = {str(d.StudyInstanceUID) for d in (ct, emri, rle)}
    assert studies(PatientName="CQ500*") & mine == {str(ct.StudyInstanceUID)}
    assert studies(PatientName="mr1", fuzzy="yes") & mine == {str(rle.StudyInstanceUID)}
    assert studies(StudyDate="20040101-20041231") & mine == {str(rle.StudyInstanceUID)}
    assert studies(StudyDate="-20001231") & mine == {str(emri.StudyInstanceUID)}
    assert studies(ModalitiesInStudy="CT") & mine == {str(ct.StudyInstanceUID)}
    assert studies(StudyInstanceUID=f"{ct.StudyInstanceUID},{rle.StudyInstanceUID}") == {
        str(ct.StudyInstanceUID), str(rle.StudyInstanceUID)}
    mr_series = {s["0020000E"]["Value"][0] for s in client.search_for_series(search_filters={"Modality": "MR"})}
    assert {str(emri.SeriesInstanceUID), str(rle.SeriesInstanceUID)} <= mr_series
    assert str(ct.SeriesInstanceUID) not in mr_series
    by_class = client.search_for_instances(search_filters={"SOPClassUID": str(ct.SOPClassUID),
                                                           "PatientID": str(ct.PatientID)})
    assert [i["00080018"]["Value"][0] for i in by_class] == [str(ct.SOPInstanceUID)]
    # The RLE original, transcoded to Explicit VR Little Endian from the stored frames.
    rle = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    out = client.retrieve_instance(str(rle.StudyInstanceUID), str(rle.SeriesInstanceUID), str(rle.SOPInstanceUID),
                                   media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(out.pixel_array, rle.pixel_array)


def test_metadata_carries_overlays_luts_and_icc_profiles(stored: tuple[Settings, str]) -> None:
    """PS3.18 §10.4.3.3.2, found by a review (session 22): binary values over 1 KB were dropped from the metadata
    with nothing in their place, so a viewer got a LUT descriptor without its LUT and no overlays. They are
    InlineBinary now (up to 64 KiB each), and dicomweb-client reads them back equal to what was stored."""
    import base64

    settings, url = stored
    h = {"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}
    (found,) = httpx.get(f"{url}/dicomweb/instances", params={"SOPInstanceUID": BULK_SOP}, headers=h).json()
    study, series = found["0020000D"]["Value"][0], found["0020000E"]["Value"][0]
    source = _with_bulk()
    (meta,) = httpx.get(f"{url}/dicomweb/studies/{study}/series/{series}/instances/{BULK_SOP}/metadata",
                        headers=h).json()
    assert base64.b64decode(meta["60003000"]["InlineBinary"]) == source[0x60003000].value
    assert base64.b64decode(meta["00282000"]["InlineBinary"]) == source.ICCProfile
    assert "7FE00010" not in meta  # pixel data stays out: frames serve it
    client = DICOMwebClient(url=f"{url}/dicomweb", headers=h)
    ds = pydicom.Dataset.from_json(client.retrieve_instance_metadata(study, series, BULK_SOP))
    assert ds[0x60003000].value == source[0x60003000].value and ds.ICCProfile == source.ICCProfile
    assert ds.VOILUTSequence[0].LUTData == source.VOILUTSequence[0].LUTData
