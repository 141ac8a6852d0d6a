"""PS3.15 Basic Profile completeness, checked against maintained implementations (dicognito, deid).

A corpus holds every attribute of PS3.15 Table E.1-1 (the "Basic Prof." column, edition 2024b; the tag list below is
transcribed from the standard independently of ``shared/dicom/deid_basic_profile.csv``, which is what is under test)
with a unique value generated per VR, at top level, inside an item of a sequence the profile keeps (two levels
deep), inside each profile sequence, and in private blocks. The corpus is de-identified by radloop, by dicognito
(default ``Anonymizer``) and by deid (its shipped default recipe, ``remove_private=True``). Every original value
that either reference removes or replaces is identifying by that reference's judgement, and must not survive
radloop's output: neither at the same place, nor anywhere else in the output (compared by value: strings, dates,
times, UIDs, numbers, bytes). UIDs registered in PS3.6 (SOP classes) identify nothing and are exempt; the command
group rows (0000,xxxx) have no place in a stored data set and are not in the corpus. Neither reference touches curve
or overlay data, so those rows (and private blocks) get a direct check of their own.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from typing import Any

import deid.dicom.header as deid_header
import dicognito.anonymizer as dicognito_anonymizer
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from shared.dicom import deid as radloop_deid

# The references are dev dependencies (pyproject's dev extra): imported plainly, so a missing one fails, never skips.
# dicognito probes keywords pydicom 3 no longer knows ("in" with a retired keyword), which only warns.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Invalid value:UserWarning")]

KEY = "test-deid-profile-key"

#: PS3.15 Table E.1-1 (2024b), "Basic Prof." column: every row's tag (``x`` = any hex digit), in the table's order.
#: The "Private Attributes" row is not a tag; private blocks are added to the corpus separately.
_TABLE_E11 = """
00080050 00184000 00400555 00080022 0008002A 00181400 001811BB 00189424 00080032 00080017 00404035 001021B0 0040A353
00380010 00380020 00081084 00081080 00380021 00001000 00102110 006A0006 006A0005 006A0003 00440004 40000010 00440104
00440105 04000562 0040A078 22000005 300A00C3 300C0127 300A00DD 00101081 0014407E 00181203 0014407C 0016004D 00181007
04000115 04000310 00120060 00120082 00120081 00120020 00120021 00120072 00120071 00120030 00120031 00120010 00120040
00120042 00120051 00120050 00400310 00400280 300A02EB 00209161 3010000F 30100017 30100006 00403001 30100013 0008009C
0008009D 0050001B 0040051A 00400512 00700086 00700084 00080023 0040A730 00080033 00080107 00080106 00180010 00181042
00181043 0018A002 0018A003 00102150 21000040 21000050 0040A307 00380300 50xxxxxx 00080025 00080035 0040A07C FFFCFFFC
0040A121 0040A110 00181205 00181200 0018700C 00181204 00181012 0040A120 00181202 00189701 0018937F 00082111 21000140
0018700A 3010001B 00500020 3010002D 00181000 0016004B 00181002 04000105 FFFAFFFA 04000100 00209164 00380030 00380040
00380032 300A079A 4008011A 40080119 300A0016 300A0013 3010006E 00686226 00420011 00189517 30100037 30100035 30100038
30100036 300A0676 00120087 00120086 00102160 00189804 00404011 00080058 0070031A 00402017 003A032B 0040A023 0040A024
30080054 300A0196 00340002 00340001 3010007F 300A0072 00189074 00209158 00200052 00340007 00189151 00189623 00181008
00181005 00160076 00160075 0016008C 0016008D 00160088 00160087 0016008A 00160089 00160084 00160083 00160086 00160085
0016008E 0016007B 00160081 00160080 00160072 00160071 00160074 00160073 00160082 0016007A 0016008B 00160078 0016007D
0016007C 00160079 00160077 0016007F 0016007E 00160070 00700001 0072000A 0040E004 00404037 00404036 00880200 00084000
00204000 00284000 00402400 003A0314 40080300 00686270 00080015 00080012 00080013 00080014 04000600 00080081 00081040
00081041 00080082 00080080 00189919 00101050 30100085 3010004D 3010004C 00401011 300A0741 300A0742 300A0783 40080112
40080113 40080111 4008010C 40080115 40080200 40080202 40080100 40080101 40080102 4008010B 4008010A 40080108 40080109
00180035 00180027 00083010 00402004 00380011 00380014 00120022 00120073 00120032 00120041 00120043 00120055 00100021
00380061 00380064 00400513 00400562 00402005 22000002 00281214 001021D0 0016004F 00160050 00160051 0016004E 00500021
04000404 0016002B 0018100B 30100043 00020003 00102000 00101090 00101080 04000550 00203403 00203406 00203405 00203401
04000563 30080056 0018937B 003A0310 00081060 00401010 00081000 04000552 04000551 0040A192 0040A032 0040A033 0040A402
0040A193 0040A171 00102180 00081072 00081070 00402010 00402011 00402008 00402009 04000561 21000070 00120023 00101000
00101002 00101001 60xx4000 60xx3000 00080024 00080034 300A0760 00281199 0040A07A 0040A082 00101040 00101010 00100030
00101005 00100032 00380400 00100050 00101060 00100010 00100101 00100102 001021F0 00100040 00102203 00101020 00102155
00102154 00101030 00104000 00100020 300A0794 300A0650 00380500 00401004 300A0792 300A078E 00400243 00400254 00400250
00404051 00400251 00400253 00400244 00404050 00400245 00400241 00404030 00400242 00404028 00081050 00081052 00401102
00401104 00401103 00401101 0040A123 00081048 00081049 00081062 40080114 00402016 00181004 30020123 30020121 001021C0
00400012 300A000E 3010007B 30100081 00700082 00700083 00701101 00701102 30100061 00404052 0044000B 00181030 00081088
00200027 00080019 300A0619 300A0623 300A067D 300A067C 00181078 00181072 00181079 00181073 300C0113 0040100A 00321030
3010005C 04000565 00402001 00401002 00321066 00321067 00741234 300A073A 3010000B 0040A13A 04000402 300A0083 3010006F
30100031 30060024 00404023 00081140 0040A172 00380004 00101100 00081120 00081111 04000403 00081155 00041511 00081110
300A0785 00080092 00080090 00080094 00080096 00102152 300600C2 00400275 00321070 00401400 00321060 00401001 00401005
00189937 00001001 00741236 00321032 00321033 00189185 00102299 00102297 40084000 40080118 40080040 40080042 00080054
300E0004 300E0008 300E0005 3006004D 3006002D 30060028 30060038 300600A6 3006004E 30060026 3006002E 30060088 30060085
300A0615 300A0611 3010005A 300A0006 300A0004 300A0002 300A0003 300A0007 30100054 300A062A 30100056 3010003B 30080162
30080164 30080166 30080168 0038001A 0038001B 0038001C 0038001D 00404034 0038001E 00400006 0040000B 00400007 00400004
00400005 00404008 00400009 00400011 00404010 00400002 00404005 00400003 00400001 00404027 00400010 00404025 00321020
00321021 00321000 00321001 00321010 00321011 0072005E 0072005F 00720061 00720063 00720066 00720068 00720065 0072006A
0072006C 0072006E 0072006B 0072006D 00720071 00720070 00080021 0008103E 0020000E 00080031 00380062 00380060 300A01B2
300A01A6 004006FA 001021A0 01000420 00080018 30100015 0018936A 00640003 00340005 00082112 300A0216 04000564 30080105
00189369 300A022C 300A022E 00380050 0040050A 00400602 00400551 00400610 00400600 00400554 00189516 00080055 00081010
00880140 30060008 30060006 30060002 30060004 30060009 00321040 00321041 00324000 00321050 00321051 00080020 00081030
00200010 00320012 0020000D 00320034 00320035 00080030 00320032 00320033 00440010 00200200 00182042 0040A354 0040DB0D
0040DB0C 0040DB07 0040DB06 40004000 20300020 0040A122 0040A112 00181201 0018700E 00181014 00080201 00880910 00880912
00880906 00880904 00620021 00081195 00185011 30080024 30080025 30080250 300A00B2 300A0608 300A0609 300A0700 30100077
300A000B 3010007A 30080251 300A0736 300A0734 0018100A 0040A124 00181009 30100033 30100034 0040A352 0040A358 0040A030
0040A088 0040A075 0040A073 0040A027 00384000 003A0329 00189371 00189373 00189367
"""
STANDARD_TAGS = tuple(_TABLE_E11.split())

#: Concrete tags standing for the masked rows (the first and last overlay group, a curve data and a curve attribute).
_MASKED_EXAMPLES = {"50xxxxxx": (0x50003000, 0x50020030), "60xx3000": (0x60003000, 0x601E3000), "60xx4000": (0x60024000,)}
_PRIVATE_CREATOR = "RADLOOP QZ TEST"
_REGISTERED_UID_ROOT = "1.2.840.10008."


class _Values:
    """Unique, VR-valid values: every generated value differs from every other and from any dummy radloop writes."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, vr: str) -> Any:
        self.n += 1
        n = self.n
        token = f"Q{n:05d}Z"  # fixed width, so no token is a substring of another
        day = datetime.date(1931, 1, 1) + datetime.timedelta(days=n)
        if vr == "DA":
            return day.strftime("%Y%m%d")
        if vr == "TM":
            return f"{n % 24:02d}{n % 60:02d}{n % 59:02d}.{n:06d}"
        if vr == "DT":
            return (day + datetime.timedelta(days=20000)).strftime("%Y%m%d") + f"{n % 24:02d}{n % 60:02d}01.{n:06d}"
        if vr == "UI":
            return f"1.2.826.0.1.3680043.10.543.{n}"
        if vr == "PN":
            return f"{token}^Given{n}"
        if vr in ("CS", "AE", "SH"):
            return token
        if vr in ("LO", "ST", "LT", "UT", "UC"):
            return f"{token} free text"
        if vr == "UR":
            return f"http://{token.lower()}.invalid/"
        if vr == "AS":
            return f"{n % 1000:03d}Y"
        if vr == "IS":
            return str(100000 + n)
        if vr == "DS":
            return f"{100000 + n}.5"
        if vr in ("US", "SS"):
            return 20000 + n
        if vr in ("UL", "SL", "UV", "SV"):
            return 7000000 + n
        if vr in ("FL", "FD"):
            return 7000000.0 + n
        if vr in ("OB", "OW", "UN", "OF", "OL", "OD", "OV"):
            return token.encode() * 2  # even length, a multiple of 8
        raise AssertionError(f"no generator for VR {vr}")


def _expand(tag: str) -> tuple[int, ...]:
    return _MASKED_EXAMPLES[tag] if "x" in tag else (int(tag, 16),)


def _code_item(values: _Values) -> Dataset:
    """An item for a profile sequence: a code plus a person name and a UID, all identifying-looking."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = values("SH"), values("SH"), values("LO")
    item.PersonName = values("PN")
    item.ReferencedSOPInstanceUID = values("UI")
    return item


def _fill(ds: Dataset, values: _Values) -> None:
    """Every Basic Profile attribute (groups 0000 and 0002 aside) and a private block into ``ds``."""
    for t in STANDARD_TAGS:
        for tag in _expand(t):
            if tag >> 16 in (0x0000, 0x0002):
                continue  # command and file meta groups: not part of a stored data set (file meta: see below)
            vr = dictionary_VR(tag).split(" or ")[0]
            if vr == "SQ":
                ds.add_new(tag, vr, Sequence([_code_item(values)]))
            else:
                ds.add_new(tag, vr, values(vr))
    block = ds.private_block(0x0009, _PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", values("LO"))
    block.add_new(0x11, "DA", values("DA"))
    block.add_new(0x12, "SQ", Sequence([_code_item(values)]))


def corpus() -> Dataset:
    """The corpus: every attribute at top level, and again two levels deep inside sequences the profile keeps."""
    values = _Values()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = values("UI")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    _fill(ds, values)
    inner = Dataset()
    _fill(inner, values)
    middle = Dataset()
    middle.ReferencedSeriesSequence = Sequence([inner])  # not in the profile: kept, and cleaned inside
    ds.SharedFunctionalGroupsSequence = Sequence([middle])  # likewise
    return ds


Path = tuple[Any, ...]


def _leaves(ds: Dataset, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, element) for every non-sequence element, at every depth; a path alternates tag and item index."""
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _leaves(item, (*prefix, int(elem.tag), i))
        else:
            yield (*prefix, int(elem.tag)), elem


def _at(ds: Dataset, path: Path) -> Any:
    """The element at ``path`` in ``ds``, or None where it (or a sequence or item on the way) is gone."""
    node: Any = ds
    for step, tag in enumerate(path[::2]):
        if tag not in node:
            return None
        elem = node[tag]
        if step == len(path) // 2:
            return elem
        index = path[2 * step + 1]
        if elem.VR != "SQ" or len(elem.value) <= index:
            return None
        node = elem.value[index]
    return None


def _norm(value: Any) -> tuple[Any, ...]:
    """A value as comparable atoms (a multi-valued element gives one atom per value)."""
    if value is None:
        return ()
    if isinstance(value, (list, MultiValue)):
        return tuple(a for v in value for a in _norm(v))
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value),)
    if isinstance(value, (int, float)):
        return (float(value),)
    return (str(value).strip(),) if str(value).strip() else ()


def _identifying(atoms: tuple[Any, ...]) -> bool:
    """False for values that identify nothing: empty, or UIDs registered in PS3.6 (SOP classes, transfer syntaxes),
    which deid's "contains:UID" rule removes along with the instance UIDs."""
    return any(not (isinstance(a, str) and a.startswith(_REGISTERED_UID_ROOT)) for a in atoms)


def _changed(original: Dataset, output: Dataset) -> dict[Path, tuple[Any, ...]]:
    """The identifying original values (by path) that ``output`` removed or replaced."""
    changed = {}
    for path, elem in _leaves(original):
        before = _norm(elem.value)
        if not _identifying(before):
            continue
        after = _at(output, path)
        if after is None or _norm(after.value) != before:
            changed[path] = before
    for path, elem in _leaves(original.file_meta):
        if not _identifying(_norm(elem.value)):
            continue
        after = _at(output.file_meta, path) if hasattr(output, "file_meta") else None
        if after is None or _norm(after.value) != _norm(elem.value):
            changed[("meta", *path)] = _norm(elem.value)
    return changed


def _all_atoms(ds: Dataset) -> tuple[set[Any], str]:
    """Every value atom anywhere in ``ds`` (file meta included), and all its text joined for substring checks."""
    atoms: set[Any] = set()
    for _, elem in [*_leaves(ds), *_leaves(getattr(ds, "file_meta", Dataset()))]:
        atoms.update(_norm(elem.value))
    text = "\n".join(a.decode("latin-1") if isinstance(a, bytes) else str(a) for a in atoms)
    return atoms, text


def _radloop(ds: Dataset) -> Dataset:
    return radloop_deid.deidentify(copy.deepcopy(ds), key=KEY)


def _dicognito(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    dicognito_anonymizer.Anonymizer(seed="radloop-test").anonymize(out)
    return out


def _deid(ds: Dataset) -> Dataset:
    # deid hashes the data set it parses, which only a FileDataset allows.
    out = FileDataset("corpus.dcm", copy.deepcopy(ds), file_meta=copy.deepcopy(ds.file_meta), preamble=b"\0" * 128)
    (result,) = deid_header.replace_identifiers([out], remove_private=True)
    return result


def _survivors(original: Dataset, reference: Dataset, ours: Dataset) -> list[str]:
    atoms, text = _all_atoms(ours)
    problems = []
    for path, before in _changed(original, reference).items():
        where = "/".join(f"{p:08X}" if isinstance(p, int) and p > 9999 else str(p) for p in path)
        if path[0] != "meta":
            mine = _at(ours, path)
            if mine is not None and _norm(mine.value) == before:
                problems.append(f"{where}: kept as is")
                continue
        for atom in before:
            token = atom if isinstance(atom, str) else None
            if atom in atoms or (token and token[:7].startswith("Q") and token[:7] in text):
                problems.append(f"{where}: {atom!r} found elsewhere in the output")
                break
    return problems


@pytest.fixture(scope="module")
def original() -> Dataset:
    return corpus()


@pytest.fixture(scope="module")
def ours(original: Dataset) -> Dataset:
    return _radloop(original)


def test_corpus_holds_every_profile_attribute(original: Dataset) -> None:
    top = {int(e.tag) for e in original}
    missing = [t for t in STANDARD_TAGS for tag in _expand(t) if tag >> 16 not in (0, 2) and tag not in top]
    assert not missing
    assert len(STANDARD_TAGS) == 620


def test_table_has_every_standard_row() -> None:
    """Every row of Table E.1-1 has a rule (masked rows: every group they cover), and no rule is a plain keep."""
    missing = [t for t in STANDARD_TAGS for tag in _expand(t) if radloop_deid._rule_for(tag) is None]
    assert not missing, f"{len(missing)} rows of Table E.1-1 are missing from the table, e.g. {missing[:10]}"
    kept = [t for t in STANDARD_TAGS for tag in _expand(t) if getattr(radloop_deid._rule_for(tag), "action", "") == "K"]
    assert not kept


@pytest.mark.parametrize("reference", [_dicognito, _deid], ids=["dicognito", "deid"])
def test_nothing_a_reference_removes_survives_radloop(original: Dataset, ours: Dataset, reference: Any) -> None:
    ref = reference(original)
    assert len(_changed(original, ref)) > 100  # the reference did real work on this corpus
    problems = _survivors(original, ref, ours)
    assert not problems, f"{len(problems)} identifying values survive radloop, e.g.: " + "; ".join(problems[:15])


def test_overlay_curve_and_private_elements_are_removed(ours: Dataset) -> None:
    """The repeating-group rows match every group (first and last overlay group), at top level and nested."""
    inner = ours.SharedFunctionalGroupsSequence[0].ReferencedSeriesSequence[0]
    for ds in (ours, inner):
        for tag in (0x60003000, 0x601E3000, 0x60024000, 0x50003000, 0x50020030):
            assert tag not in ds, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) survived"
    assert not [e for e in ours.iterall() if e.tag.is_private]


def test_clean_action_removes() -> None:
    """"C" (clean) is removal, whatever the VR (module docstring of shared.dicom.deid), never a dummy."""
    assert {radloop_deid._resolve("C", vr) for vr in ("LO", "LT", "UT", "SQ", "OW", "PN")} == {"X"}
