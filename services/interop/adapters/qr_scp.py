"""The DIMSE Query/Retrieve SCP (pynetdicom): C-FIND, C-MOVE and C-GET from the instance index, never from files.

C-FIND turns the request identifier into the same :class:`shared.query.Query` that QIDO-RS parses from a URL and runs
the same :class:`shared.query.Searcher` on the index, so both match identically (single values, UID lists,
``*``/``?`` wildcards, date ranges, case-insensitive person names). Levels: PATIENT (Patient Root; the distinct
patients of the matching studies), STUDY, SERIES and IMAGE. Each response carries the keys that were asked for,
filled from the index (or, at the IMAGE level, from the instance's stored DICOM JSON for other keys).

C-GET and C-MOVE find the matching instances the same way (unique keys of the level and above) and send the stored
originals as C-STORE sub-operations: back on the same association (C-GET), or to the AE title named in the request,
looked up in ``qr_move_destinations`` (C-MOVE; an unknown AE title is refused with 0xA801).

Security, as the ingestion SCP: calling AE titles from ``qr_allowed_calling_aes``; our called AE title is required;
at most ``qr_max_associations`` at once; optional TLS (with client certificates when a CA file is set). Every query
and every retrieval writes one audit record (action ``dicom.find``/``dicom.get``/``dicom.move``, the calling AE as
subject with role ``dimse``, its address, the level and the number of matches or sub-operations; for a retrieval the
studies (UIDs) and the number of series, and for C-MOVE the destination; identifiers only, never the query's values).
The record is durable before any match or instance is sent, or the operation fails (0xA700 / 0xA702, "audit log
unavailable") and sends nothing.

pynetdicom serves each association on its own thread; index and S3 calls run on the service's event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName
from pynetdicom import AE, build_context, evt
from pynetdicom import sop_class as sc

from services.interop.adapters.archive import Archive
from services.interop.settings import InteropSettings
from shared.auth import Principal
from shared.dicom import tls as dicom_tls
from shared.dicom.sop_classes import STORAGE_SOP_CLASSES
from shared.query import C_FIND_STATUS, MATCHABLE, QueryError, Searcher, parse_query
from shared.query.reader import IndexReader
from shared.service import Runtime

log = logging.getLogger(__name__)

FIND_MODELS = (sc.PatientRootQueryRetrieveInformationModelFind, sc.StudyRootQueryRetrieveInformationModelFind)
MOVE_MODELS = (sc.PatientRootQueryRetrieveInformationModelMove, sc.StudyRootQueryRetrieveInformationModelMove)
GET_MODELS = (sc.PatientRootQueryRetrieveInformationModelGet, sc.StudyRootQueryRetrieveInformationModelGet)
#: Storage SOP classes offered for C-GET sub-operations: every class the archive stores (one list with ingestion).
GET_STORAGE_CLASSES = STORAGE_SOP_CLASSES
STUDY_ROOT_MODELS = {str(sc.StudyRootQueryRetrieveInformationModelFind), str(sc.StudyRootQueryRetrieveInformationModelGet),
                     str(sc.StudyRootQueryRetrieveInformationModelMove)}
#: DICOM Q/R level -> shared.query level.
LEVELS = {"STUDY": "STUDY", "SERIES": "SERIES", "IMAGE": "INSTANCE"}
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
#: The Error Comment (at most 64 characters) when the audit record of a query or retrieval cannot be written.
AUDIT_UNAVAILABLE = "Audit log unavailable; no patient data returned. Retry later."
#: Study UIDs a retrieval's audit record names at most (it always says how many studies and series there were).
AUDIT_MAX_STUDIES = 20
#: The unique keys of each level and above, which is all a C-GET/C-MOVE identifier needs.
UNIQUE = {"PATIENT": ("PatientID",), "STUDY": ("PatientID", "StudyInstanceUID"),
          "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
          "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
#: What a sub-operation that could not be attempted yields in place of its dataset (see ``_sub_operations``).
_FAILED_SUB_OPERATION = "failed"
#: At most this many instances per retrieval (0xA702 above it: narrow the request).
MAX_RETRIEVE = 5000
_SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
_MATCHABLE_ANY = set().union(*MATCHABLE.values())


class QueryRetrieveError(Exception):
    """A request this SCP refuses, with the DIMSE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def identifier_params(ds: Dataset) -> tuple[str, list[tuple[str, str]], list[str]]:
    """(level, QIDO-style (keyword, value) pairs, the keywords asked for) from a C-FIND/C-GET/C-MOVE identifier.

    A key that the index cannot match (not in :data:`shared.query.MATCHABLE`) becomes an ``includefield``, so an
    IMAGE-level answer fills it from the instance's DICOM JSON."""
    level = str(ds.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in ("PATIENT", *LEVELS):
        raise QueryRetrieveError(0xA900, f"QueryRetrieveLevel {level!r} must be PATIENT, STUDY, SERIES or IMAGE")
    params: list[tuple[str, str]] = []
    asked: list[str] = []
    for elem in ds:
        kw = elem.keyword
        if not kw or kw in _SKIP or elem.VR == "SQ":
            continue
        asked.append(kw)
        value = elem.value
        if kw not in _MATCHABLE_ANY:
            params.append(("includefield", kw))
        elif value is None or value == "":
            params.append((kw, ""))
        elif elem.VM > 1:
            params.append((kw, "\\".join(str(v) for v in value)))
        else:
            params.append((kw, str(value)))
    return level, params, asked


def unmatched_keys(ds: Dataset) -> list[str]:
    """Keys given a value that the index cannot match on (they are returned, filled from the stored data, but do
    not narrow the search): the pending status is then 0xFF01 (PS3.4 C.4.1.1.4; it was 0xFF00, as if they had been
    matched: found by a review, session 22)."""
    return [e.keyword for e in ds if e.keyword and e.keyword not in _SKIP and e.VR != "SQ"
            and e.keyword not in _MATCHABLE_ANY and e.value not in (None, "", b"")]


def _query(level: str, params: list[tuple[str, str]]) -> Any:
    try:
        return parse_query(LEVELS.get(level, "STUDY"), params)
    except QueryError as exc:
        raise QueryRetrieveError(C_FIND_STATUS.get(type(exc), 0xA900), str(exc)) from None


def _response(asked: list[str], level: str, found: Dataset, ae_title: str) -> Dataset:
    """The keys asked for, with the values found (empty when the archive has none), plus the level."""
    out = Dataset()
    out.QueryRetrieveLevel = level
    for kw in asked:
        if kw in found:
            out[kw] = found[kw]
        else:
            setattr(out, kw, None)
    out.RetrieveAETitle = ae_title
    # PS3.4 C.4.1.1.3.2: values outside the default repertoire need Specific Character Set; the index holds text as
    # Unicode, so such an answer is sent as UTF-8 (names were sent as Latin-1 bytes, or as "?", with none).
    if any(isinstance(e.value, str | PersonName) and not str(e.value).isascii() for e in out):
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def _check_model_level(event: Any, level: str) -> None:
    """The Study Root information model has no PATIENT level (PS3.4 C.6.2)."""
    model = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
    if level == "PATIENT" and model in STUDY_ROOT_MODELS:
        raise QueryRetrieveError(0xA900, "the Study Root information model has no PATIENT level; use the Patient Root "
                                 "model or query at STUDY level")


def _from_json(obj: dict[str, Any]) -> Dataset:
    # Bulk data never appears in search results; refuse to resolve any URI rather than fetch something.
    return Dataset.from_json(obj, bulk_data_uri_handler=lambda *_: b"")


def _first(obj: dict[str, Any], tag: str) -> str:
    values = (obj.get(tag) or {}).get("Value") or [""]
    return str(values[0])


class QueryRetrieveSCP:
    def __init__(self, rt: Runtime[InteropSettings], loop: asyncio.AbstractEventLoop) -> None:
        self.rt = rt
        self.settings = settings = rt.settings
        self.loop = loop
        self.index = IndexReader(rt.clients.dynamodb, settings.topology.table("instances"),
                                 series_cache_bytes=32 << 20)
        self.searcher = Searcher(self.index, max_results=settings.qr_max_results)
        #: Retrievals name unique keys; they may match more instances than a C-FIND may answer with, up to a bound.
        self.retriever = Searcher(self.index, max_results=MAX_RETRIEVE)
        #: Stored originals, through the image store (radloop's images bucket or HealthImaging's kept objects).
        self.archive = Archive(rt.clients)
        self.server: Any = None
        self.stats = {"find": 0, "get": 0, "move": 0, "sent": 0, "refused": 0}

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def _ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.qr_ae_title)
        ae.require_calling_aet = [] if "*" in s.qr_allowed_calling_aes else list(s.qr_allowed_calling_aes)
        ae.require_called_aet = True
        ae.maximum_associations = s.qr_max_associations
        ae.network_timeout = ae.acse_timeout = 30
        ae.dimse_timeout = 120
        for model in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
            ae.add_supported_context(model)
        for cls in GET_STORAGE_CLASSES:  # C-GET: the requestor takes the SCP role for storage
            ae.add_supported_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian], scu_role=False,
                                     scp_role=True)
        ae.add_supported_context(sc.Verification)
        return ae

    def _ssl(self) -> ssl.SSLContext | None:
        """The SCP's TLS context by the rules ingestion's SCP follows (shared.dicom_tls): with a CA file, clients
        must present a certificate it signed."""
        s = self.settings
        return dicom_tls.server_context(s.qr_tls_cert_file, s.qr_tls_key_file, s.qr_tls_ca_file,
                                        require_client_cert=bool(s.qr_tls_ca_file))

    def start(self) -> None:
        handlers = [(evt.EVT_C_FIND, self._on_find), (evt.EVT_C_GET, self._on_get), (evt.EVT_C_MOVE, self._on_move),
                    (evt.EVT_C_ECHO, lambda _e: 0x0000), (evt.EVT_REJECTED, self._on_rejected)]
        self.server = self._ae().start_server((self.settings.qr_host, self.settings.qr_port), block=False,
                                              evt_handlers=handlers, ssl_context=self._ssl())

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def _audit(self, event: Any, action: str, level: str, count: int, outcome: str = "success",
               extra: dict[str, Any] | None = None) -> bool:
        """Write the operation's audit record; False (logged) when it could not be written. A success record must
        be durable before any match or instance is sent: the caller then refuses (found by a review: C-FIND and
        C-GET answered with patients' names and images while the audit table was unavailable)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        peer = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        resource = {"level": level, "called_ae": self.settings.qr_ae_title, "peer": peer, **(extra or {})}
        try:
            self._run(self.rt.audit.record(Principal(subject=f"ae:{calling}", roles=("dimse",)), action, resource,
                                           outcome=outcome, count=count))
        except Exception:
            log.exception("audit record for a DIMSE operation failed", extra={"action": action})
            return False
        return True

    def _on_rejected(self, event: Any) -> None:
        self.stats["refused"] += 1

    # -- C-FIND -----------------------------------------------------------------------------------------------------
    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        self.stats["find"] += 1
        try:
            level, params, asked = identifier_params(event.identifier)
            _check_model_level(event, level)
            found, truncated = self._run(self._find(level, params))
        except QueryRetrieveError as exc:
            self._audit(event, "dicom.find", "?", 0, outcome="refused")
            yield _failure(exc.status, str(exc)), None
            return
        except Exception:
            log.exception("C-FIND failed")
            self._audit(event, "dicom.find", "?", 0, outcome="error")
            yield _failure(0xC001, "The index could not be searched."), None
            return
        if not self._audit(event, "dicom.find", level, len(found)):
            yield _failure(0xA700, AUDIT_UNAVAILABLE), None
            return
        pending = 0xFF01 if unmatched_keys(event.identifier) else 0xFF00
        for ds in found:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield pending, _response(asked, level, ds, self.settings.qr_ae_title)
        if truncated:
            # Never a cut answer as if it were complete (it ended in Success: found by a review, session 22).
            yield _failure(0xA700, f"More than {self.settings.qr_max_results} matches; narrow the query."), None

    async def _search(self, level: str, params: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], bool]:
        try:
            res = await self.searcher.search(_query(level, params))
        except QueryError as exc:
            raise QueryRetrieveError(C_FIND_STATUS.get(type(exc), 0xC001), str(exc)) from None
        if res.truncated:
            log.warning("C-FIND results cut at the limit", extra={"limit": self.settings.qr_max_results})
        return res.datasets(), res.truncated

    async def _find(self, level: str, params: list[tuple[str, str]]) -> tuple[list[Dataset], bool]:
        """The matches, and whether there were more than ``qr_max_results``."""
        if level == "PATIENT":
            # Patients are the distinct patients of the matching studies (the index has no patient items).
            study_params = [(k, v) for k, v in params if k in MATCHABLE["STUDY"]] + [(k, "") for k in PATIENT_KEYS]
            seen: dict[str, Dataset] = {}
            found, truncated = await self._search("STUDY", study_params)
            for obj in found:
                ds = _from_json(obj)
                seen.setdefault(str(ds.get("PatientID", "")), ds)
            return list(seen.values()), truncated
        found, truncated = await self._search(level, params)
        return [_from_json(o) for o in found], truncated

    # -- C-GET / C-MOVE ----------------------------------------------------------------------------------------------
    def _matches(self, event: Any) -> list[dict[str, Any]]:
        level, params, _ = identifier_params(event.identifier)
        _check_model_level(event, level)
        keys = [(k, v) for k, v in params if k in UNIQUE[level] and v]
        # PS3.4 C.4.2.2.1 / C.4.3.2.1: the retrieve level's own unique key, matched by single value or UID list. A
        # wildcard, or a study-level retrieval by PatientID alone, pulled the whole archive (found by a review).
        own = UNIQUE[level][-1]
        if own not in {k for k, _ in keys}:
            raise QueryRetrieveError(0xA900, f"a {level} level retrieval needs a value for {own}")
        wild = [k for k, v in keys if "*" in v or "?" in v]
        if wild:
            raise QueryRetrieveError(0xA900, f"{wild[0]} has a wildcard; retrieve by exact values or UID lists")
        return self._run(self._instances(keys))  # type: ignore[no-any-return]

    async def _instances(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The index items (with ``original_key``/``transfer_syntax_uid``) of the instances the unique keys match."""
        try:
            res = await self.retriever.search(_query("IMAGE", keys))
        except QueryError as exc:
            raise QueryRetrieveError(C_FIND_STATUS.get(type(exc), 0xC001), str(exc)) from None
        if res.truncated:
            raise QueryRetrieveError(0xA702, f"more than {MAX_RETRIEVE} instances match; narrow the request")
        found = res.datasets()
        wanted: dict[tuple[str, str], set[str]] = {}
        for obj in found:
            wanted.setdefault((_first(obj, "0020000D"), _first(obj, "0020000E")), set()).add(_first(obj, "00080018"))
        items: list[dict[str, Any]] = []
        for (study, series), sops in wanted.items():
            items += [it for it in await self.index.instances_of_study(study, series) if it.get("sop_uid") in sops]
        return items

    def _load(self, it: dict[str, Any]) -> Dataset:
        data = self._run(self.archive.original(it["study_uid"], it["series_uid"], it["sop_uid"]))
        return pydicom.dcmread(io.BytesIO(data))

    def _sub_operations(self, event: Any, items: list[dict[str, Any]]) -> Iterator[Any]:
        for it in items:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            try:
                ds = self._load(it)
            except Exception:
                log.exception("a stored original could not be read for a retrieval")
                # Pending with something that is not a dataset: pynetdicom counts one failed sub-operation and goes on
                # (a failure status here ended the whole retrieval, every remaining instance counted as failed:
                # found by a review, session 22). The final status is then 0xB000 with the failure counted.
                yield 0xFF00, _FAILED_SUB_OPERATION
                continue
            self.stats["sent"] += 1
            yield 0xFF00, ds

    def _on_get(self, event: Any) -> Iterator[Any]:
        self.stats["get"] += 1
        try:
            items = self._matches(event)
        except QueryRetrieveError as exc:
            self._audit(event, "dicom.get", "?", 0, outcome="refused")
            yield 1  # pynetdicom answers success at once for 0 sub-operations; a failure needs one to replace
            yield _failure(exc.status, str(exc)), None
            return
        level = str(event.identifier.QueryRetrieveLevel)
        if not self._audit(event, "dicom.get", level, len(items), extra=_retrieved(items)):
            yield 1
            yield _failure(0xA702, AUDIT_UNAVAILABLE), None
            return
        yield len(items)
        yield from self._sub_operations(event, items)

    def _on_move(self, event: Any) -> Iterator[Any]:
        self.stats["move"] += 1
        dest_ae = str(event.move_destination.decode() if isinstance(event.move_destination, bytes)
                      else event.move_destination).strip()
        dest = self.settings.qr_move_destinations.get(dest_ae)
        if dest is None:
            self._audit(event, "dicom.move", "?", 0, outcome="unknown-destination")
            yield None, None  # pynetdicom answers 0xA801: move destination unknown
            return
        try:
            items = self._matches(event)
        except QueryRetrieveError as exc:
            self._audit(event, "dicom.move", "?", 0, outcome="refused")
            yield dest.host, dest.port, {"contexts": [build_context(sc.Verification)]}
            yield 1
            yield _failure(exc.status, str(exc)), None
            return
        classes = sorted({str(it.get("sop_class_uid", "")) for it in items if it.get("sop_class_uid")})
        syntaxes = sorted({str(it.get("transfer_syntax_uid") or ExplicitVRLittleEndian) for it in items}
                          | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        contexts = [build_context(c, syntaxes) for c in classes[:128]] or [build_context(sc.Verification)]
        kwargs: dict[str, Any] = {"contexts": contexts}
        if dest.tls:
            kwargs["tls_args"] = (dicom_tls.client_context(), dest.host)
        level = str(event.identifier.QueryRetrieveLevel)
        where = {"destination_ae": dest_ae, "destination": f"{dest.host}:{dest.port}"}
        if not self._audit(event, "dicom.move", level, len(items), extra={**_retrieved(items), **where}):
            yield dest.host, dest.port, {"contexts": [build_context(sc.Verification)]}
            yield 1
            yield _failure(0xA702, AUDIT_UNAVAILABLE), None
            return
        yield dest.host, dest.port, kwargs
        yield len(items)
        yield from self._sub_operations(event, items)


def _retrieved(items: list[dict[str, Any]]) -> dict[str, Any]:
    """What a retrieval's audit record names: its studies (at most :data:`AUDIT_MAX_STUDIES` UIDs) and how many
    series; identifiers only."""
    studies = sorted({str(it.get("study_uid", "")) for it in items})
    series = {(str(it.get("study_uid", "")), str(it.get("series_uid", ""))) for it in items}
    return {"study_uids": " ".join(studies[:AUDIT_MAX_STUDIES]), "studies": len(studies), "series": len(series)}


def _failure(status: int, comment: str) -> Dataset:
    """A failure status with its reason (Error Comment, PS3.7 C.4): pynetdicom sends a status given as a dataset as
    it is; a comment put in the identifier was dropped on a failure (C-FIND) or sent as an empty Failed SOP Instance
    UID List (C-GET, C-MOVE), so the SCU never saw the reason (found by a review)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds
