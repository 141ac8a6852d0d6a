"""QIDO-RS through dicomweb-client (a real client) against the gateway process over HTTP."""

from __future__ import annotations

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.streaming_gateway.conftest import Corpus, auth
from tests.streaming_gateway.store import GatewayProcess


@pytest.fixture(scope="module")
def client(corpus: Corpus, gateway: GatewayProcess) -> DICOMwebClient:
    return DICOMwebClient(url=f"{gateway.url}/dicomweb", headers=auth(corpus))


def _uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def _studies(corpus: Corpus, results: list[dict]) -> set[str]:
    """Matched studies among the corpus's three (other tests may add studies to the same deployment)."""
    return _uids(results) & {corpus.ct_study, corpus.mr_study, corpus.cr_study}


def test_study_search_matching(client: DICOMwebClient, corpus: Corpus) -> None:
    everything = _studies(corpus, client.search_for_studies())
    assert {corpus.ct_study, corpus.mr_study, corpus.cr_study} <= everything
    assert _studies(corpus, client.search_for_studies(search_filters={"PatientID": "PID-A"})) == {corpus.ct_study}
    doe = client.search_for_studies(search_filters={"PatientName": "DOE^*"})
    assert _studies(corpus, doe) == {corpus.ct_study, corpus.cr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"PatientName": "?MITH^JOHN"})) == {corpus.mr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"PatientName": "john"})) == set()
    assert _studies(corpus, client.search_for_studies(search_filters={"PatientName": "john"}, fuzzymatching=True)) == {
        corpus.mr_study, corpus.cr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"StudyDate": "20240101-20240131"})) == {corpus.ct_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"StudyDate": "20240201-"})) == {corpus.mr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"StudyDate": "-20231231"})) == {corpus.cr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"StudyDate": "20240301"})) == {corpus.mr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"AccessionNumber": "ACC-3"})) == {corpus.cr_study}
    assert _studies(corpus, client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == {corpus.mr_study}
    both = f"{corpus.ct_study},{corpus.cr_study}"
    assert _studies(corpus, client.search_for_studies(search_filters={"StudyInstanceUID": both})) == {corpus.ct_study,
                                                                                          corpus.cr_study}
    # Combined keys, and a hex tag instead of a keyword.
    assert _studies(corpus, client.search_for_studies(search_filters={"00100020": "PID-A", "StudyDate": "20240101-"})) == {
        corpus.ct_study}
    ct = client.search_for_studies(search_filters={"PatientID": "PID-A"})[0]
    assert ct["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
    assert ct["00201206"]["Value"] == [1] and ct["00201208"]["Value"] == [6]
    assert ct["00080061"]["Value"] == ["CT"]


def test_series_search(client: DICOMwebClient, corpus: Corpus) -> None:
    in_study = client.search_for_series(corpus.ct_study)
    assert _uids(in_study, "0020000E") == {corpus.ct_series}
    assert in_study[0]["00201209"]["Value"] == [6]
    assert _uids(client.search_for_series(search_filters={"Modality": "MR"}), "0020000E") == {corpus.mr_series}
    assert _uids(client.search_for_series(search_filters={"SeriesInstanceUID": corpus.cr_series}), "0020000E") == {
        corpus.cr_series}
    # Study-level keys at the series level (relational), with the study attribute in the result.
    res = client.search_for_series(search_filters={"PatientName": "DOE*", "Modality": "CT"})
    assert _uids(res, "0020000E") == {corpus.ct_series}
    assert res[0]["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"


def test_instance_search(client: DICOMwebClient, corpus: Corpus) -> None:
    res = client.search_for_instances(corpus.ct_study, corpus.ct_series)
    assert [r["00080018"]["Value"][0] for r in res] == corpus.ct_sops  # instance-number order
    assert res[0]["00280010"]["Value"] == [512]
    by_sop = client.search_for_instances(search_filters={"SOPInstanceUID": corpus.ct_sops[2]})
    assert _uids(by_sop, "00080018") == {corpus.ct_sops[2]}
    cr_class = client.search_for_instances(search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"})
    assert _uids(cr_class, "00080018") == {corpus.cr_sop}
    mr = client.search_for_instances(search_filters={"PatientID": "PID-B", "Modality": "MR"})
    assert _uids(mr, "00080018") == {corpus.mr_sop}
    assert mr[0]["00280008"]["Value"] == [10]
    # In a study, by series.
    in_study = client.search_for_instances(corpus.ct_study, search_filters={"SeriesInstanceUID": corpus.ct_series})
    assert len(in_study) == 6


def test_paging_includefield_and_warning(corpus: Corpus, gateway: GatewayProcess,
                                         client: DICOMwebClient) -> None:
    url = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances"
    r = httpx.get(url, params={"limit": 2, "offset": 1}, headers=auth(corpus))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    assert [x["00080018"]["Value"][0] for x in r.json()] == corpus.ct_sops[1:3]
    assert "299" in r.headers["warning"] and "additional results" in r.headers["warning"]
    r = httpx.get(url, params={"limit": 10, "offset": 4}, headers=auth(corpus))
    assert len(r.json()) == 2 and "warning" not in r.headers
    # includefield: a keyword not in the index comes from the stored DICOM JSON; "all" gives everything.
    r = httpx.get(url, params={"includefield": "RescaleIntercept", "limit": 1}, headers=auth(corpus))
    assert r.json()[0]["00281052"]["Value"] == [-1024]
    r = httpx.get(url, params={"includefield": "all", "limit": 1}, headers=auth(corpus))
    assert "00280030" in r.json()[0] and "00100010" in r.json()[0]  # PixelSpacing, PatientName
    res = client.search_for_studies(search_filters={"PatientID": "PID-A"}, limit=1, offset=0, fields=["StudyID"])
    assert len(res) == 1
    # An unknown key is ignored (with a warning); an invalid value is a 400 with the reason.
    r = httpx.get(f"{gateway.url}/dicomweb/studies", params={"NotAKeyword": "x", "PatientID": "PID-A"},
                  headers=auth(corpus))
    assert r.status_code == 200 and len(r.json()) == 1 and "NotAKeyword" in r.headers["warning"]
    for params, word in [({"StudyDate": "2024-01-01"}, "StudyDate"), ({"StudyDate": "20241301"}, "calendar"),
                         ({"limit": "-1"}, "limit"), ({"offset": "x"}, "offset"),
                         ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
                         ({"includefield": "NoSuchThing"}, "includefield"), ({"fuzzymatching": "maybe"}, "fuzzy")]:
        r = httpx.get(f"{gateway.url}/dicomweb/studies", params=params, headers=auth(corpus))
        assert r.status_code == 400, params
        assert word in r.json()["detail"], r.json()
    r = httpx.get(f"{gateway.url}/dicomweb/studies", headers={**auth(corpus), "Accept": "application/dicom+xml"})
    assert r.status_code == 406
    # q=0 refuses what it names (RFC 9110 §12.4.2): nothing else named, nothing acceptable (it was served as */*).
    r = httpx.get(f"{gateway.url}/dicomweb/studies", headers={**auth(corpus), "Accept": "application/dicom+json;q=0"})
    assert r.status_code == 406
    # An ignored key is named in the Warning percent-encoded: any character a client sends (a non-Latin-1 key was
    # a 500, a newline a dropped connection; found by a review).
    for raw, shown in (("%E2%82%AC", "%E2%82%AC"), ("a%0Ab", "a%0Ab"), ("%ff%fe", "%EF%BF%BD%EF%BF%BD"),
                       ('k%22%5C', "k%22%5C")):
        r = httpx.get(f"{gateway.url}/dicomweb/studies?{raw}=1&PatientID=PID-A", headers=auth(corpus))
        assert r.status_code == 200 and len(r.json()) == 1, (raw, r.status_code, r.text[:200])
        assert shown in r.headers["warning"] and r.headers["warning"].isascii(), (raw, r.headers["warning"])


def test_listing_a_study_series_warms_its_metadata_once(corpus: Corpus, gateway: GatewayProcess) -> None:
    """Listing a study's series starts a background load of their metadata (the viewer asks for it next). A burst of
    such searches starts it once, not once per request: the background work one request can cause is bounded, and
    repeated searches do not compete with it (they used to, at 9x their own time in bench/dicomweb.py)."""
    import time

    h = {**auth(corpus), "Accept": "application/dicom+json"}
    stats = lambda: httpx.get(f"{gateway.url}/streaming/stats", headers=auth(corpus)).json()["index"]  # noqa: E731
    study_route = f"{gateway.url}/dicomweb/studies/{corpus.mr_study}/series"
    plain_route = f"{gateway.url}/dicomweb/series"
    assert httpx.get(study_route, headers=h).status_code == 200  # the first listing warms the study's series
    deadline = time.monotonic() + 10
    while stats()["series_warmups"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The same search without the warm-up (the top-level route) costs this many index queries:
    before = stats()["queries"]
    assert httpx.get(plain_route, params={"StudyInstanceUID": corpus.mr_study}, headers=h).status_code == 200
    per_search = stats()["queries"] - before
    warmups, before = stats()["series_warmups"], stats()["queries"]
    for _ in range(10):
        r = httpx.get(study_route, headers=h)
        assert r.status_code == 200 and _uids(r.json(), "0020000E") == {corpus.mr_series}
    time.sleep(0.3)  # any background warm-up the burst started would have queried by now
    assert stats()["series_warmups"] == warmups
    assert stats()["queries"] - before == 10 * per_search


def test_a_study_series_are_listed_with_one_index_read(corpus: Corpus, gateway: GatewayProcess) -> None:
    """The series of one study (what a viewer asks first) come from one index Query: the study item and its series
    items are neighbours in the study's partition. It took two reads before (a BatchGetItem of the study, a Query of
    its series), each a round trip to the index; the search's time is mostly those round trips."""
    h = {**auth(corpus), "Accept": "application/dicom+json"}
    stats = lambda: httpx.get(f"{gateway.url}/streaming/stats", headers=auth(corpus)).json()["index"]  # noqa: E731
    url = f"{gateway.url}/dicomweb/series"
    for study, series, n in ((corpus.ct_study, corpus.ct_series, 6), (corpus.mr_study, corpus.mr_series, 1)):
        before = stats()["queries"]
        r = httpx.get(url, params={"StudyInstanceUID": study, "includefield": "PatientID"}, headers=h)
        assert stats()["queries"] - before == 1
        assert r.status_code == 200 and _uids(r.json(), "0020000E") == {series}
        (only,) = r.json()
        assert only["0020000D"]["Value"] == [study] and only["00201209"]["Value"] == [n]
    assert _uids(httpx.get(url, params={"StudyInstanceUID": corpus.ct_study, "PatientID": "PID-A"}, headers=h).json(),
                 "0020000E") == {corpus.ct_series}  # another study key: the general path, same answer
    ct = httpx.get(url, params={"StudyInstanceUID": corpus.ct_study, "includefield": "PatientID"}, headers=h).json()
    assert ct[0]["00100020"]["Value"] == ["PID-A"]  # the study's attributes come with the series
    assert httpx.get(url, params={"StudyInstanceUID": corpus.ct_study, "PatientID": "PID-B"}, headers=h).json() == []
    before = stats()["queries"]
    assert httpx.get(url, params={"StudyInstanceUID": "1.2.3.999999"}, headers=h).json() == []
    assert stats()["queries"] - before == 1
