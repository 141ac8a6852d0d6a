"""De-identification following the PS3.15 Annex E Basic Application Level Confidentiality Profile.

The actions live in ``deid_basic_profile.csv`` beside this module (tag as 8 hex digits, ``x`` for masked digits,
keyword, action). The table is the complete "Basic Prof." column of PS3.15 Table E.1-1 (edition 2024b, 620 rows,
including the repeating-group rows Curve Data (50xx,xxxx), Overlay Data (60xx,3000) and Overlay Comments
(60xx,4000)), plus two rows older editions listed (Creator Version UID, Modifying Device Manufacturer) that are kept
because dropping a row can only weaken the profile. The table's "Private Attributes" row is not a tag; it is
implemented in code (below). This module only interprets action codes:

- ``D`` replace with a dummy value of the same VR (a sequence is emptied; a UID gets a remapped UID, as ``U``);
- ``Z`` replace with a zero-length value;
- ``X`` remove;
- ``K`` keep (sequences are still cleaned inside);
- ``C`` clean: **removed**, like ``X``. The Basic Profile column itself has no ``C``; it appears only in the option
  columns (Clean Descriptors, Clean Structured Content, Clean Graphics, Retain Longitudinal Temporal Information
  with Modified Dates), which this profile does not implement. Should a row ever carry ``C``, no heuristic here can
  prove that a free-text descriptor, a structured content tree or a graphic holds no identifying information, so
  the conservative clean is removal (never a dummy that would look like real content, never "keep and hope");
- ``U`` replace the UID by a deterministic one (HMAC of the UID under the de-identification key, under 2.25);
- composite codes resolve conservatively: ``X/Z``, ``X/D``, ``X/Z/D`` remove; ``Z/D`` empties; ``X/Z/U*`` remaps
  UIDs inside a sequence (so references stay consistent) and removes anything else.

Actions apply at every nesting level, and masked rows match every group they cover (all 50xx curve groups, all
60xx overlay groups). Private elements (odd groups, creators included) are removed unless their tag is
allow-listed (the table's Private Attributes row, X). Afterwards ``PatientIdentityRemoved`` is YES and
``DeidentificationMethod``/``DeidentificationMethodCodeSequence`` name the profile (DCM 113100).
``tests/shared/test_deid_profile.py`` checks the result against maintained implementations (dicognito, deid) on a
corpus holding every attribute of the table.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

TABLE_PATH = Path(__file__).with_name("deid_basic_profile.csv")
METHOD = "radloop: PS3.15 Basic Application Level Confidentiality Profile"

_DUMMY = {
    "PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
    "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED", "DA": "19000101",
    "TM": "000000", "DT": "19000101000000", "AS": "000Y", "UR": "http://example.invalid",
    "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "UV": 0, "SV": 0,
    # Binary VRs: an all-zero value of one element's width (even length, as the encoding requires).
    "OB": b"\0\0", "OW": b"\0\0", "UN": b"\0\0", "OF": b"\0" * 4, "OL": b"\0" * 4, "OD": b"\0" * 8, "OV": b"\0" * 8,
}


#: Elements kept inside X/Z/U* reference sequences besides UIDs: Referenced Frame / Segment Number.
_REFERENCE_KEEP = frozenset({0x00081160, 0x0062000B})


@dataclass(frozen=True)
class Rule:
    mask: int
    value: int
    keyword: str
    action: str


@lru_cache(maxsize=1)
def load_table(path: Path = TABLE_PATH) -> tuple[dict[int, Rule], tuple[Rule, ...]]:
    """(exact rules by tag, masked rules) from the CSV table."""
    exact: dict[int, Rule] = {}
    masked: list[Rule] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            t = row["tag"].strip()
            mask = int("".join("0" if c == "x" else "F" for c in t), 16)
            value = int(t.replace("x", "0"), 16)
            rule = Rule(mask, value, row["keyword"].strip(), row["action"].strip())
            if mask == 0xFFFFFFFF:
                exact[value] = rule
            else:
                masked.append(rule)
    return exact, tuple(masked)


def remap_uid(uid: str, key: str) -> str:
    """A deterministic replacement UID under 2.25 (the same input UID and key always give the same output)."""
    digest = hmac.new(key.encode(), uid.strip().encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _rule_for(tag: int) -> Rule | None:
    exact, masked = load_table()
    r = exact.get(tag)
    if r is not None:
        return r
    for m in masked:
        if tag & m.mask == m.value:
            return m
    return None


def _resolve(action: str, vr: str) -> str:
    if action in ("X/Z", "X/D", "X/Z/D"):
        return "X"
    if action == "Z/D":
        return "Z"
    if action == "C":
        return "X"  # see the module docstring: the conservative clean is removal
    if action == "D" and vr == "UI":
        return "U"  # a dummy UID must still be a valid, unique UID: the remapped one is
    if action == "X/Z/U*":
        return "U*" if vr in ("SQ", "UI") else "X"
    return action


def _dummy(elem_vr: str) -> object:
    return _DUMMY.get(elem_vr, "ANONYMIZED")


def _clean(ds: Dataset, key: str, private_allowlist: frozenset[int]) -> None:
    for elem in list(ds):
        tag = int(elem.tag)
        if elem.tag.is_private:
            if tag not in private_allowlist:
                del ds[elem.tag]
            continue
        rule = _rule_for(tag)
        action = _resolve(rule.action, elem.VR) if rule else "K"
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = Sequence([]) if elem.VR == "SQ" else None
        elif action == "D":
            if elem.VR == "SQ":
                elem.value = Sequence([])
            else:
                elem.value = _dummy(elem.VR)
        elif action in ("U", "U*"):
            if elem.VR == "UI" and elem.value:
                vals = elem.value if elem.VM > 1 else [elem.value]
                new = [remap_uid(str(v), key) for v in vals]
                elem.value = new if elem.VM > 1 else new[0]
            elif elem.VR == "SQ":
                # U* on a reference sequence: keep only the (remapped) references, drop anything else inside.
                for item in elem.value:
                    _clean(item, key, private_allowlist)
                    for inner in list(item):
                        if inner.VR != "UI" and int(inner.tag) not in _REFERENCE_KEEP:
                            del item[inner.tag]
        elif elem.VR == "SQ":  # K: keep, but clean what is inside
            for item in elem.value:
                _clean(item, key, private_allowlist)


def deidentify(ds: Dataset, *, key: str, private_allowlist: Iterable[int] = ()) -> Dataset:
    """De-identify ``ds`` in place (see the module docstring) and return it."""
    if not key:
        raise ValueError("a de-identification key is required for deterministic UID remapping")
    _clean(ds, key, frozenset(private_allowlist))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def burned_in_annotation_reason(ds: Dataset) -> str | None:
    """A reason to quarantine the instance (BurnedInAnnotation is not NO), or None."""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value == "NO":
        return None
    shown = value or "absent"
    return (f"Quarantined: BurnedInAnnotation is {shown!r}, not 'NO', so the pixels may show identifying text; the "
            "instance was set aside instead of being de-identified and stored.")
