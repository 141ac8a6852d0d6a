"""Query and matching over the instance index: one implementation for QIDO-RS (the streaming gateway) and DIMSE
C-FIND (a Q/R SCP), with the same matching rules (PS3.4 C.2.2.2) against the same ``instances`` table.

Pure, except :mod:`shared.query.reader` (the DynamoDB reads; import it explicitly). The public API:

- :func:`parse_query` ``(level, params, *, fixed=None, max_offset=None) -> Query`` parses ``(key, value)`` pairs at
  ``level`` (``"STUDY" | "SERIES" | "INSTANCE"``). Keys are DICOM keywords or 8-digit hex tags; an empty value asks
  for the attribute to be returned (universal matching); ``limit``, ``offset``, ``includefield`` and
  ``fuzzymatching`` are the QIDO control keys. ``fixed`` holds UIDs from a URL path. A C-FIND SCP passes the
  identifier's elements as pairs (multiple values joined by ``\\``). Unknown keys land in ``Query.ignored``; an
  invalid value raises :class:`InvalidQuery`.
- :class:`IndexReader` ``(ddb_factory, table, *, series_cache_bytes)`` (in :mod:`shared.query.reader`) reads the
  index with an aiobotocore DynamoDB client.
- :class:`Searcher` ``(reader, *, max_results, max_examined=50_000, deadline_s=10.0)``;
  ``await searcher.search(query, base_url="") -> SearchResult``. ``result.datasets()`` is the list of matches as DICOM
  JSON objects (tag -> ``{"vr", "Value"}``; ``pydicom.Dataset.from_json`` makes datasets of them), ``result.truncated``
  whether more matched than ``max_results``/``limit``. A search that would examine more than ``max_examined`` items
  or run past ``deadline_s`` raises :class:`QueryTooLarge`.
- :func:`study_matches`, :func:`series_matches`, :func:`instance_matches` test one index item; :data:`BY_KEYWORD`
  maps the keywords the index holds to their tag, VR, item field and level.
- Errors: :class:`QueryError` (base), :class:`InvalidQuery` (400), :class:`QueryTooLarge` (413),
  :class:`QueryNotFound` (404); :data:`C_FIND_STATUS` maps them to DICOM statuses.

Example::

    from shared.query import Searcher, parse_query
    from shared.query.reader import IndexReader

    reader = IndexReader(clients.dynamodb, topology.table("instances"), series_cache_bytes=64 << 20)
    searcher = Searcher(reader, max_results=1000)
    q = parse_query("STUDY", [("PatientID", "PAT-1"), ("StudyDate", "20240101-"), ("PatientName", "")])
    for ds in (await searcher.search(q)).datasets():
        print(ds["0020000D"]["Value"][0])
"""

from shared.query.errors import C_FIND_STATUS, InvalidQuery, QueryError, QueryNotFound, QueryTooLarge
from shared.query.matching import (
    BY_KEYWORD,
    BY_TAG,
    LEVELS,
    MATCHABLE,
    Attr,
    Matcher,
    Query,
    instance_matches,
    parse_query,
    resolve_key,
    series_matches,
    study_matches,
    tag_of,
)
from shared.query.search import Budget, IndexReads, Searcher, SearchResult

__all__ = [
    "BY_KEYWORD", "BY_TAG", "C_FIND_STATUS", "LEVELS", "MATCHABLE", "Attr", "Budget", "IndexReads", "InvalidQuery",
    "Matcher", "Query", "QueryError", "QueryNotFound", "QueryTooLarge", "SearchResult", "Searcher",
    "instance_matches", "parse_query", "resolve_key", "series_matches", "study_matches", "tag_of",
]
