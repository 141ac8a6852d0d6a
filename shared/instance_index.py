"""The instance index's contract: the keys of study, series and instance items in the ``instances`` table and the
record ingestion writes (docs/ingestion.md, "Instance index"). Every reader (the streaming gateway) and writer
(:mod:`shared.index_writer`) takes the keys from here. Pure: no AWS SDK, so domain code may import it.

Layout: study items (``sk=STUDY``), series items (``sk=SERIES#{series}``) and instance items
(``sk=INSTANCE#{series}#{sop}``) share the partition ``STUDY#{study}``. Global indexes (``shared.topology``):
``by_level_shard`` (study and series items, ``level_pk``/``level_sk``, see :data:`LEVEL_SHARDS`), ``by_patient``
(``patient_id``), ``by_accession`` (study items, ``accession_key``), ``by_modality`` (series items,
``modality_key``) and ``by_sop`` (instance items).

An instance item's frame-offset table (``frame_offsets``, JSON: per frame, the byte offsets of its resolution
levels) is inline for instances of up to about 1,000 frames; a larger one is an S3 object named by
``frame_offsets_key`` (see :func:`fit_instance`). Read it with :func:`shared.index_writer.load_frame_offsets`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared.uids import validate_uid

LEVEL_STUDY, LEVEL_SERIES = "STUDY", "SERIES"
#: Sort key of a study item, and sort-key prefixes of series and instance items (every reader and writer uses these).
STUDY_SK = "STUDY"
SERIES_PREFIX = "SERIES#"
INSTANCE_PREFIX = "INSTANCE#"


#: Study and series items are spread over this many partition keys of the ``by_level_shard`` index
#: (``level_pk = "{level}#{shard}"``, the shard a hash of the study UID): a single key for every study of the archive
#: was a hot partition that every stored instance rewrote. A listing reads the shards and merges them by ``level_sk``.
LEVEL_SHARDS = 8


def level_shard(study: str) -> int:
    """The ``by_level_shard`` shard of a study (and of its series): stable across processes (CRC-32)."""
    return zlib.crc32(study.encode()) % LEVEL_SHARDS


def level_pk(level: str, study: str) -> str:
    """``by_level_shard`` partition key of a study item (``level="STUDY"``) or series item (``"SERIES"``)."""
    return f"{level}#{level_shard(study)}"


def level_pks(level: str) -> list[str]:
    """Every ``by_level_shard`` partition key of a level (a listing queries them all)."""
    return [f"{level}#{n}" for n in range(LEVEL_SHARDS)]


def study_index_keys(study: str, accession_number: str | None) -> dict[str, Any]:
    """The index key attributes of a study item: its level shard and, when it has one, its accession number
    (``by_accession``; an empty string cannot be an index key, so the attribute is then absent)."""
    return {"level_pk": level_pk(LEVEL_STUDY, study), "accession_key": accession_number or None}


def series_index_keys(study: str, modality: str | None) -> dict[str, Any]:
    """The index key attributes of a series item: its level shard and its modality (``by_modality``)."""
    return {"level_pk": level_pk(LEVEL_SERIES, study), "modality_key": modality or None}


def index_keys_of(item: dict[str, Any]) -> dict[str, Any] | None:
    """The index key attributes a study or series item must carry, derived from the item's own attributes exactly as
    :mod:`shared.index_writer` writes them today (a None value: the attribute must be absent); None for any other
    item. ``radloop index backfill`` uses it to bring items written before a key existed up to date."""
    sk = str(item.get("sk") or "")
    study = str(item.get("study_uid") or "")
    if not study:
        return None
    if sk == STUDY_SK:
        keys = study_index_keys(study, item.get("accession_number"))
        keys["level_sk"] = item.get("level_sk") or f"{item.get('study_date') or '00000000'}#{study}"
        return keys
    if sk.startswith(SERIES_PREFIX):
        keys = series_index_keys(study, item.get("modality"))
        keys["level_sk"] = item.get("level_sk") or f"{study}#{sk[len(SERIES_PREFIX):]}"
        return keys
    return None


def study_pk(study: str) -> str:
    """Partition key of a study and everything in it."""
    return f"STUDY#{validate_uid(study, what='StudyInstanceUID')}"


def series_sk(series: str) -> str:
    """Sort key of a series item."""
    return f"{SERIES_PREFIX}{validate_uid(series, what='SeriesInstanceUID')}"


def instance_sk(series: str, sop: str) -> str:
    """Sort key of an instance item."""
    return f"{instances_prefix(series)}{validate_uid(sop, what='SOPInstanceUID')}"


def instances_prefix(series: str | None = None) -> str:
    """Sort-key prefix of the instance items of a study (no series) or of one of its series."""
    return f"{INSTANCE_PREFIX}{validate_uid(series, what='SeriesInstanceUID')}#" if series else INSTANCE_PREFIX


@dataclass
class IndexRecord:
    """Everything ingestion writes for one instance. ``study``/``series``/``instance`` hold plain Python values
    (str, int, list of str); :func:`encode_item` turns them into DynamoDB attribute values."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    patient_id: str
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)


#: DynamoDB refuses items over 400 KB (names and values, UTF-8). Instance items are kept under this budget, leaving
#: room for the attributes the writer adds (keys, ``stored_at``) and for later additions.
ITEM_BUDGET_BYTES = 350_000
#: A frame-offset table (JSON) larger than this is stored in S3 (``frame_offsets_key``) instead of in the item: about
#: 1,000 frames. Readers that project ``frame_offsets`` for every instance of a series then stay cheap, and a cine of
#: thousands of frames never pushes the item past DynamoDB's limit.
INLINE_OFFSETS_MAX_BYTES = 16_384
#: The attribute naming the S3 object (images bucket) that holds the frame-offset table when it is not inline.
FRAME_OFFSETS_KEY = "frame_offsets_key"


def offsets_object_key(frames_prefix: str) -> str:
    """Key of the S3 object holding an instance's frame-offset table (JSON), beside its frames."""
    return f"{frames_prefix}/offsets.json"


def item_bytes(values: dict[str, Any]) -> int:
    """An upper estimate of the size DynamoDB counts for an item of plain values (UTF-8 names and values)."""
    total = 0
    for k, v in values.items():
        total += len(k.encode()) + (len(v.encode()) if isinstance(v, str) else len(str(v).encode()) + 8)
    return total


def fit_instance(instance: dict[str, Any]) -> bytes | None:
    """Make an instance item's values fit DynamoDB's item limit, in place; return the JSON frame-offset table to
    store at ``offsets_object_key(frames_prefix)`` when it leaves the item (else None).

    In order: a large offset table (or any offset table, when the item is over budget) moves to S3 and the item
    gets ``frame_offsets_key`` instead; then, if the item is still over budget, the DICOM JSON is dropped (it is in
    S3 at ``metadata_key`` anyway). Sizes are UTF-8 bytes, so non-ASCII metadata is counted as DynamoDB counts it.
    """
    moved: bytes | None = None
    offsets = instance.get("frame_offsets")
    if isinstance(offsets, str) and (len(offsets.encode()) > INLINE_OFFSETS_MAX_BYTES
                                     or item_bytes(instance) > ITEM_BUDGET_BYTES):
        moved = offsets.encode()
        del instance["frame_offsets"]
        instance[FRAME_OFFSETS_KEY] = offsets_object_key(str(instance["frames_prefix"]))
    if item_bytes(instance) > ITEM_BUDGET_BYTES:
        instance.pop("dicom_json", None)
    return moved


def inline_frame_offsets(item: dict[str, Any]) -> list[list[int]] | None:
    """The frame-offset table of a decoded instance item when it is inline; None when it is in S3
    (``item[FRAME_OFFSETS_KEY]``; :func:`shared.index_writer.load_frame_offsets` reads either) or absent."""
    raw = item.get("frame_offsets")
    if raw is None:
        return None
    return json.loads(raw) if isinstance(raw, str) else list(raw)


WriteOutcome = Literal["created", "exists"]


class IndexConflictError(Exception):
    """The SOP instance is already indexed with a different content hash."""

    def __init__(self, sop_uid: str, existing_sha256: str) -> None:
        super().__init__(f"SOP instance {sop_uid} is already stored with different content (sha256 {existing_sha256})")
        self.sop_uid = sop_uid
        self.existing_sha256 = existing_sha256


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


