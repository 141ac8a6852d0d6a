"""Query parsing, matching and DICOM JSON results over instance-index items: QIDO-RS (PS3.18 §10.6) and the same
rules for DIMSE C-FIND (PS3.4 C.2.2.2).

Matching follows PS3.4 C.2.2.2: single value, list of UIDs, wildcard (``*`` and ``?``), range (dates) and universal
(an empty value only asks for the attribute to be returned). PatientName matching is case-insensitive; with
``fuzzymatching=true`` it also matches when any name component starts with the value (``jane`` finds ``DOE^JANE``).
Unknown query keys are ignored as the standard asks, and reported in a ``Warning`` header; invalid values raise
:class:`~shared.query.errors.InvalidQuery` with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from shared.exceptions import InvalidUIDError
from shared.query.errors import InvalidQuery
from shared.query.wildcard import Wildcard
from shared.uids import validate_uid


@dataclass(frozen=True)
class Attr:
    """A DICOM attribute the index holds: keyword, tag, VR, item field and level."""
    keyword: str
    tag: str
    vr: str
    field: str
    level: str  # STUDY | SERIES | INSTANCE


_ATTRS = [
    Attr("StudyDate", "00080020", "DA", "study_date", "STUDY"),
    Attr("StudyTime", "00080030", "TM", "study_time", "STUDY"),
    Attr("AccessionNumber", "00080050", "SH", "accession_number", "STUDY"),
    Attr("ModalitiesInStudy", "00080061", "CS", "modalities", "STUDY"),
    Attr("ReferringPhysicianName", "00080090", "PN", "referring_physician", "STUDY"),
    Attr("StudyDescription", "00081030", "LO", "study_description", "STUDY"),
    Attr("PatientName", "00100010", "PN", "patient_name", "STUDY"),
    Attr("PatientID", "00100020", "LO", "patient_id", "STUDY"),
    Attr("PatientBirthDate", "00100030", "DA", "patient_birth_date", "STUDY"),
    Attr("PatientSex", "00100040", "CS", "patient_sex", "STUDY"),
    Attr("StudyInstanceUID", "0020000D", "UI", "study_uid", "STUDY"),
    Attr("StudyID", "00200010", "SH", "study_id", "STUDY"),
    Attr("NumberOfStudyRelatedSeries", "00201206", "IS", "num_series", "STUDY"),
    Attr("NumberOfStudyRelatedInstances", "00201208", "IS", "num_instances", "STUDY"),
    Attr("Modality", "00080060", "CS", "modality", "SERIES"),
    Attr("SeriesDescription", "0008103E", "LO", "series_description", "SERIES"),
    Attr("BodyPartExamined", "00180015", "CS", "body_part", "SERIES"),
    Attr("SeriesInstanceUID", "0020000E", "UI", "series_uid", "SERIES"),
    Attr("SeriesNumber", "00200011", "IS", "series_number", "SERIES"),
    Attr("NumberOfSeriesRelatedInstances", "00201209", "IS", "num_instances", "SERIES"),
    Attr("SOPClassUID", "00080016", "UI", "sop_class_uid", "INSTANCE"),
    Attr("SOPInstanceUID", "00080018", "UI", "sop_uid", "INSTANCE"),
    Attr("InstanceNumber", "00200013", "IS", "instance_number", "INSTANCE"),
    Attr("SamplesPerPixel", "00280002", "US", "samples_per_pixel", "INSTANCE"),
    Attr("PhotometricInterpretation", "00280004", "CS", "photometric", "INSTANCE"),
    Attr("NumberOfFrames", "00280008", "IS", "number_of_frames", "INSTANCE"),
    Attr("Rows", "00280010", "US", "rows", "INSTANCE"),
    Attr("Columns", "00280011", "US", "columns", "INSTANCE"),
    Attr("BitsAllocated", "00280100", "US", "bits_allocated", "INSTANCE"),
]
BY_KEYWORD = {a.keyword: a for a in _ATTRS}
BY_TAG = {a.tag: a for a in _ATTRS}
LEVELS = ("STUDY", "SERIES", "INSTANCE")
#: Keys that match at each query level (the level's own and those above it).
MATCHABLE = {
    "STUDY": {"StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "StudyDescription", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
              "StudyID"},
    "SERIES": {"Modality", "SeriesDescription", "BodyPartExamined", "SeriesInstanceUID", "SeriesNumber"},
    "INSTANCE": {"SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
                 "PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated"},
}
#: Query parameters that control the search, not match attributes (``accept`` and ``charset``: PS3.18 §8.3.3).
CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching", "token", "access_token", "orderby", "accept",
                "charset"}
# ASCII digits only: int() also takes "٣", "+3", " 3 " and "1_000"; at most 18 digits keeps int() cheap.
_UINT = re.compile(r"[0-9]{1,18}")
_INT = re.compile(r"-?[0-9]{1,18}")
_DATE = re.compile(r"[0-9]{8}")  # ASCII digits only (\d would also match "٣")
_NAME_PARTS = re.compile(r"[\^ =,]+")
_MAX_VALUE_LEN = 256


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "…"


def _parse_uint(raw: str, what: str, *, maximum: int | None = None) -> int:
    """A non-negative integer of ASCII digits up to ``maximum``, or :class:`InvalidQuery` naming ``what``."""
    if _UINT.fullmatch(raw) is None:
        raise InvalidQuery(f"{what} value {_shown(raw)} is not a non-negative integer written with the digits 0-9")
    n = int(raw)
    if maximum is not None and n > maximum:
        raise InvalidQuery(f"{what} value {_shown(raw)} is above the maximum {maximum}")
    return n


def _parse_int(raw: str, what: str) -> int:
    """An integer of ASCII digits with an optional leading ``-``, or :class:`InvalidQuery` naming ``what``."""
    if _INT.fullmatch(raw) is None:
        raise InvalidQuery(f"{what} value {_shown(raw)} is not an integer written with the digits 0-9")
    return int(raw)


def resolve_key(key: str) -> str | None:
    """A query key (keyword or 8-digit hex tag) as a keyword, or None if it names no DICOM attribute."""
    k = key.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", k):
        kw = keyword_for_tag(int(k, 16))
        return kw or k.upper()
    if tag_for_keyword(k) is not None:
        return k
    return None


def tag_of(keyword: str) -> str:
    """The 8-digit hex tag of a keyword."""
    a = BY_KEYWORD.get(keyword)
    if a:
        return a.tag
    t = tag_for_keyword(keyword)
    return f"{t:08X}" if t is not None else keyword.upper()


@dataclass
class Matcher:
    """One matching key: a keyword and its predicate over an index value."""

    keyword: str
    kind: str  # uids | range | wildcard | exact | number | list
    values: tuple[Any, ...] = ()
    pattern: Wildcard | None = None
    fuzzy: bool = False

    def matches(self, value: Any) -> bool:
        """Whether an index value satisfies this key."""
        if self.kind == "list":  # a multi-valued index attribute (ModalitiesInStudy)
            vals = value if isinstance(value, list) else ([value] if value else [])
            return any(v in self.values for v in vals)
        if value is None or value == "":
            return False
        if self.kind in ("uids", "exact"):
            return str(value) in self.values
        if self.kind == "number":
            return isinstance(value, int) and value in self.values
        if self.kind == "range":
            lo, hi = self.values
            v = str(value)
            return (lo is None or v >= lo) and (hi is None or v <= hi)
        assert self.pattern is not None
        text = str(value)
        if BY_KEYWORD[self.keyword].vr == "PN":
            text = text.rstrip("^") or text  # stored with trailing empty components: the same name
        if self.pattern.fullmatch(text):
            return True
        if self.fuzzy:  # the pattern ends with "*": a prefix of any name component
            return any(self.pattern.fullmatch(p) for p in _NAME_PARTS.split(text) if p)
        return False


@dataclass
class Query:
    """A parsed QIDO-RS query: matchers, fields to include, paging."""
    level: str
    matchers: dict[str, Matcher] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    ignored: list[str] = field(default_factory=list)
    #: Whether the study's UID came from the resource path (``/studies/{study}/...``). A search of all series or all
    #: instances returns every study attribute (PS3.18 §10.6.3.3.2 and .3.3; they came only when matched or asked
    #: for: found by a review, session 22).
    study_in_path: bool = False

    def at(self, level: str) -> list[Matcher]:
        """The matchers of one level."""
        return [m for k, m in self.matchers.items() if BY_KEYWORD[k].level == level]

    def date_range(self) -> tuple[str | None, str | None] | None:
        """The StudyDate range (start, end), if the query has one."""
        m = self.matchers.get("StudyDate")
        if m is None:
            return None
        if m.kind == "range":
            return m.values[0], m.values[1]
        return None


def _wildcard(value: str, *, case_insensitive: bool, prefix: bool = False) -> Wildcard:
    # Linear-time matching (shared/query/wildcard.py); a regex of ".*" runs backtracked for minutes on hostile patterns.
    return Wildcard(value, case_insensitive=case_insensitive, prefix=prefix)


def _parse_date(value: str, what: str) -> str:
    if not _DATE.fullmatch(value):
        raise InvalidQuery(f"{what} value {value!r} is not a date; expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise InvalidQuery(f"{what} value {value!r} is not a valid calendar date") from None
    return value


def _split(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _matcher(keyword: str, value: str, fuzzy: bool) -> Matcher:
    attr = BY_KEYWORD[keyword]
    if len(value) > _MAX_VALUE_LEN:
        raise InvalidQuery(f"the value of {keyword} is {len(value)} characters long; at most {_MAX_VALUE_LEN} are allowed")
    if attr.vr == "UI":
        uids = []
        for v in _split(value):
            try:
                uids.append(validate_uid(v, what=keyword))
            except InvalidUIDError as exc:
                raise InvalidQuery(str(exc)) from None
        return Matcher(keyword, "uids", tuple(uids))
    if attr.vr == "DA":
        if "-" in value:
            lo, _, hi = value.partition("-")
            if not lo and not hi:
                raise InvalidQuery(f"{keyword} range {value!r} has neither a start nor an end date")
            lo_v = _parse_date(lo, keyword) if lo else None
            hi_v = _parse_date(hi, keyword) if hi else None
            if lo_v and hi_v and lo_v > hi_v:
                raise InvalidQuery(f"{keyword} range {value!r} starts after it ends")
            return Matcher(keyword, "range", (lo_v, hi_v))
        d = _parse_date(value, keyword)
        return Matcher(keyword, "range", (d, d))
    if attr.vr in ("IS", "US"):
        try:
            nums = tuple(_parse_int(v, keyword) for v in _split(value))
        except InvalidQuery:
            raise InvalidQuery(f"{keyword} value {value!r} is not an integer (or a comma-separated list of integers)") from None
        return Matcher(keyword, "number", nums)
    if attr.vr == "TM":
        if "-" in value:
            lo, _, hi = value.partition("-")
            for part in (lo, hi):
                if part and not re.fullmatch(r"[0-9]{2,6}(\.[0-9]{1,6})?", part):
                    raise InvalidQuery(f"{keyword} value {value!r} is not a time or time range (HHMMSS-HHMMSS)")
            return Matcher(keyword, "range", (lo or None, (hi + "~") if hi else None))
        if not re.fullmatch(r"[0-9]{2,6}(\.[0-9]{1,6})?", value):
            raise InvalidQuery(f"{keyword} value {value!r} is not a time (HHMMSS)")
        return Matcher(keyword, "wildcard", pattern=_wildcard(value, case_insensitive=False, prefix=True))
    if keyword == "ModalitiesInStudy":
        return Matcher(keyword, "list", tuple(v.upper() for v in _split(value)))
    if attr.vr == "CS" and ("," in value or "\\" in value):
        return Matcher(keyword, "exact", tuple(_split(value)))
    if attr.vr == "PN":
        # Trailing empty components may be left out (PS3.5 §6.2): DOE^JOHN^^^ is DOE^JOHN (it matched nothing).
        value = value.rstrip("^") or value
        return Matcher(keyword, "wildcard", pattern=_wildcard(value, case_insensitive=True, prefix=fuzzy), fuzzy=fuzzy)
    if "*" in value or "?" in value:
        return Matcher(keyword, "wildcard", pattern=_wildcard(value, case_insensitive=False))
    return Matcher(keyword, "exact", (value,))


def _non_negative(name: str, raw: str, maximum: int | None = None) -> int:
    # ASCII digits only: int() also takes "٣", "+3" and "1_000"; more than 18 digits is refused before int() runs.
    return _parse_uint(raw, name, maximum=maximum)


def parse_query(
    level: str, params: Iterable[tuple[str, str]], *, fixed: Mapping[str, str] | None = None,
    max_offset: int | None = None,
) -> Query:
    """Parse QIDO query parameters for a search at ``level``; ``fixed`` are UIDs from the path.

    ``offset`` above ``max_offset`` is refused (400): the matches before it are walked one by one.
    """
    pairs = list(params)
    q = Query(level=level)
    for k, v in pairs:
        if k == "fuzzymatching":
            if v.lower() not in ("true", "false"):
                raise InvalidQuery(f"fuzzymatching value {v!r} is not a boolean; expected true or false")
            q.fuzzy = v.lower() == "true"
    allowed: set[str] = set()
    for lv in LEVELS[: LEVELS.index(level) + 1]:
        allowed |= MATCHABLE[lv]
    for k, v in pairs:
        if k in CONTROL_KEYS:
            if k == "limit":
                q.limit = _non_negative("limit", v)
            elif k == "offset":
                q.offset = _non_negative("offset", v, max_offset)
            elif k == "includefield":
                for f in _split(v):
                    if f.lower() == "all":
                        q.include_all = True
                        continue
                    kw = resolve_key(f)
                    if kw is None:
                        raise InvalidQuery(
                            f"includefield value {f!r} is neither a DICOM keyword nor an 8-digit hexadecimal tag"
                        )
                    q.include.add(kw)
            continue
        kw = resolve_key(k)
        if kw is None or kw not in allowed:
            q.ignored.append(k)
            continue
        # Universal matching: return the attribute. A value of only "*" is the same (PS3.4 C.2.2.2.4), so it also
        # matches an empty value, which a pattern never did (found by a review, session 22).
        if v == "" or v.strip("*") == "":
            q.include.add(kw)
            continue
        q.matchers[kw] = _matcher(kw, v, q.fuzzy)
    for kw, v in (fixed or {}).items():
        q.matchers[kw] = Matcher(kw, "uids", (v,))
    q.study_in_path = "StudyInstanceUID" in (fixed or {})
    return q


def study_matches(q: Query, st: Mapping[str, Any]) -> bool:
    """Whether a study item satisfies the study-level keys."""
    return all(m.matches(st.get(BY_KEYWORD[m.keyword].field)) for m in q.at("STUDY"))


def series_matches(q: Query, se: Mapping[str, Any]) -> bool:
    """Whether a series item satisfies the series-level keys."""
    return all(m.matches(se.get(BY_KEYWORD[m.keyword].field)) for m in q.at("SERIES"))


def instance_matches(q: Query, it: Mapping[str, Any]) -> bool:
    """Whether an instance item satisfies the instance-level keys."""
    return all(m.matches(it.get(BY_KEYWORD[m.keyword].field)) for m in q.at("INSTANCE"))


# --- results -------------------------------------------------------------------------------------------------------
def _element(attr: Attr, value: Any) -> dict[str, Any] | None:
    if value is None or value == "" or value == []:
        return {"vr": attr.vr}
    if attr.vr == "PN":
        return {"vr": "PN", "Value": [{"Alphabetic": str(value)}]}
    if attr.vr in ("IS", "US"):
        return {"vr": attr.vr, "Value": [int(value)]}
    if isinstance(value, list):
        return {"vr": attr.vr, "Value": [str(v) for v in value]}
    return {"vr": attr.vr, "Value": [str(value)]}


_DEFAULT = {
    "STUDY": [a for a in _ATTRS if a.level == "STUDY"],
    "SERIES": [a for a in _ATTRS if a.level == "SERIES"],
    "INSTANCE": [a for a in _ATTRS if a.level == "INSTANCE"],
}


def _fill(out: dict[str, Any], level: str, item: Mapping[str, Any]) -> None:
    for a in _DEFAULT[level]:
        out[a.tag] = _element(a, item.get(a.field))


def study_result(st: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """The DICOM JSON of a study result."""
    out: dict[str, Any] = {}
    _fill(out, "STUDY", st)
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{st['study_uid']}"]}
    return out


def series_result(st: Mapping[str, Any] | None, se: Mapping[str, Any], base_url: str, q: Query) -> dict[str, Any]:
    """The DICOM JSON of a series result."""
    out: dict[str, Any] = {}
    if st is not None:
        _study_fields_for(out, st, q)
    out["0020000D"] = {"vr": "UI", "Value": [se["study_uid"]]}
    _fill(out, "SERIES", se)
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{se['study_uid']}/series/{se['series_uid']}"]}
    return out


def _study_fields_for(out: dict[str, Any], st: Mapping[str, Any], q: Query) -> None:
    # A search of all series or all instances carries every study attribute; one under /studies/{study} only those
    # matched on or asked for (all with includefield=all).
    every = q.include_all or not q.study_in_path
    for a in _DEFAULT["STUDY"]:
        if every or a.keyword in q.include or a.keyword in q.matchers:
            out[a.tag] = _element(a, st.get(a.field))


def instance_result(
    st: Mapping[str, Any] | None, se: Mapping[str, Any] | None, it: Mapping[str, Any], base_url: str, q: Query
) -> dict[str, Any]:
    """The DICOM JSON of an instance result (with stored DICOM JSON attributes when included)."""
    out: dict[str, Any] = {}
    extra = q.include - set(BY_KEYWORD)
    if (q.include_all or extra) and it.get("dicom_json"):
        full = json.loads(it["dicom_json"])
        if q.include_all:
            out.update(full)
        else:
            for kw in extra:
                t = tag_of(kw)
                if t in full:
                    out[t] = full[t]
    if st is not None:
        _study_fields_for(out, st, q)
    if se is not None:
        for a in _DEFAULT["SERIES"]:
            if a.keyword != "NumberOfSeriesRelatedInstances" or q.include_all or a.keyword in q.include:
                out[a.tag] = _element(a, se.get(a.field))
    out["0020000D"] = {"vr": "UI", "Value": [it["study_uid"]]}
    out["0020000E"] = {"vr": "UI", "Value": [it["series_uid"]]}
    _fill(out, "INSTANCE", it)
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    out["00081190"] = {
        "vr": "UR",
        "Value": [f"{base_url}/studies/{it['study_uid']}/series/{it['series_uid']}/instances/{it['sop_uid']}"],
    }
    return out


def vr_of(keyword: str) -> str:
    """The VR of a keyword from the data dictionary (UN if unknown)."""
    try:
        return str(dictionary_VR(keyword))
    except KeyError:
        return "UN"


def sort_json(obj: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON objects list attributes in tag order."""
    return {k: obj[k] for k in sorted(obj)}
