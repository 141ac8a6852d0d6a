"""QIDO-RS searches: pick the cheapest index access path for a :class:`Query`, match, page and build results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.streaming_gateway.domain import qido
from services.streaming_gateway.domain.errors import NotFound
from services.streaming_gateway.domain.index import IndexReader, study_pk

_SK_HIGH = "\uffff"


@dataclass
class SearchResult:
    """One page of search results and whether more exist."""
    items: list[dict[str, Any]]
    truncated: bool
    warnings: list[str] = field(default_factory=list)
    #: Results already serialised as DICOM JSON objects (used instead of ``items`` when set).
    serialized: list[str] | None = None

    @property
    def count(self) -> int:
        """Number of results in this page."""
        return len(self.serialized) if self.serialized is not None else len(self.items)

    def body(self) -> str:
        """The response body: a JSON array of DICOM JSON objects."""
        if self.serialized is not None:
            return "[" + ",".join(self.serialized) + "]"
        return json.dumps(self.items, separators=(",", ":"))


def _window(q: qido.Query, max_results: int) -> tuple[int, int]:
    limit = max_results if q.limit is None or q.limit == 0 else min(q.limit, max_results)
    return q.offset, limit


async def _page(source: AsyncIterator[Any], q: qido.Query, max_results: int) -> tuple[list[Any], bool]:
    """Skip ``offset`` matches, keep ``limit``, and look one further to know whether results were truncated."""
    offset, limit = _window(q, max_results)
    out: list[Any] = []
    seen = 0
    async for x in source:
        seen += 1
        if seen <= offset:
            continue
        if len(out) == limit:
            return out, True
        out.append(x)
    return out, False


def _date_bounds(q: qido.Query) -> tuple[str, str] | None:
    r = q.date_range()
    if r is None:
        return None
    lo, hi = r
    return (f"{lo or '00000000'}#", f"{hi or '99999999'}#{_SK_HIGH}")


class Searcher:
    """QIDO-RS searches at the study, series and instance level."""
    def __init__(self, index: IndexReader, *, max_results: int) -> None:
        self.index = index
        self.max_results = max_results

    # --- studies -------------------------------------------------------------------------------------------------
    async def _matching_studies(self, q: qido.Query) -> AsyncIterator[dict[str, Any]]:
        uids = q.matchers.get("StudyInstanceUID")
        pid = q.matchers.get("PatientID")
        if uids is not None:
            found = await self.index.studies(list(uids.values))
            found.sort(key=lambda s: s.get("level_sk", ""), reverse=True)
            source: Any = _aiter(found)
        elif pid is not None and pid.kind == "exact" and len(pid.values) == 1:
            source = self.index.patient_items(pid.values[0], "STUDY", sk_between=_date_bounds(q))
        else:
            source = self.index.level_items("STUDY", newest_first=True, sk_between=_date_bounds(q))
        async for st in source:
            if qido.study_matches(q, st):
                yield st

    async def studies(self, q: qido.Query, base_url: str) -> SearchResult:
        """Matching studies, newest first."""
        items, truncated = await _page(self._matching_studies(q), q, self.max_results)
        return SearchResult([qido.sort_json(qido.study_result(st, base_url)) for st in items], truncated)

    # --- series ----------------------------------------------------------------------------------------------------
    def _needs_study_filter(self, q: qido.Query) -> bool:
        """Series matching needs study items first when any study-level key is given (relational query)."""
        return bool(q.at("STUDY"))

    async def _matching_series(self, q: qido.Query) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
        if self._needs_study_filter(q):
            async for st in self._matching_studies(q):
                for se in await self.index.series_of_study(st["study_uid"]):
                    if qido.series_matches(q, se):
                        yield st, se
            return
        studies: dict[str, dict[str, Any] | None] = {}
        batch: list[dict[str, Any]] = []

        async def flush() -> list[tuple[dict[str, Any], dict[str, Any]]]:
            missing = [se["study_uid"] for se in batch if se["study_uid"] not in studies]
            if missing:
                for st in await self.index.studies(missing):
                    studies[st["study_uid"]] = st
            return [(studies.get(se["study_uid"]) or {}, se) for se in batch]

        async for se in self.index.level_items("SERIES"):
            if qido.series_matches(q, se):
                batch.append(se)
                if len(batch) >= 50:
                    for pair in await flush():
                        yield pair
                    batch = []
        for pair in await flush():
            yield pair

    async def series(self, q: qido.Query, base_url: str) -> SearchResult:
        """Matching series with the study attributes asked for."""
        items, truncated = await _page(self._matching_series(q), q, self.max_results)
        return SearchResult([qido.sort_json(qido.series_result(st, se, base_url, q)) for st, se in items], truncated)

    # --- instances ---------------------------------------------------------------------------------------------------
    async def _matching_instances(self, q: qido.Query) -> AsyncIterator[tuple[Any, Any, dict[str, Any]]]:
        study_m = q.matchers.get("StudyInstanceUID")
        series_m = q.matchers.get("SeriesInstanceUID")
        sop_m = q.matchers.get("SOPInstanceUID")
        # One study and one series: the cached series entry (validated by one BatchGetItem).
        if study_m is not None and len(study_m.values) == 1 and series_m is not None and len(series_m.values) == 1:
            try:
                entry = await self.index.series_entry(study_m.values[0], series_m.values[0])
            except NotFound:
                return
            if not qido.study_matches(q, entry.study) or not qido.series_matches(q, entry.series):
                return
            for it in entry.instances:
                if qido.instance_matches(q, it):
                    yield entry.study, entry.series, it
            return
        if sop_m is not None:
            found = [x for lst in await asyncio.gather(*(self.index.instances_by_sop(s) for s in sop_m.values))
                     for x in lst]
            heads = await self.index.get_items(
                [(study_pk(i["study_uid"]), "STUDY") for i in found]
                + [(study_pk(i["study_uid"]), f"SERIES#{i['series_uid']}") for i in found]
            )
            for it in found:
                st = heads.get((study_pk(it["study_uid"]), "STUDY"), {})
                se = heads.get((study_pk(it["study_uid"]), f"SERIES#{it['series_uid']}"), {})
                if qido.study_matches(q, st) and qido.series_matches(q, se) and qido.instance_matches(q, it):
                    yield st, se, it
            return
        async for st in self._matching_studies(q):
            series = {se["series_uid"]: se for se in await self.index.series_of_study(st["study_uid"])}
            want = {k for k, se in series.items() if qido.series_matches(q, se)}
            if not want:
                continue
            only = next(iter(want)) if len(want) == 1 and len(series) > 1 else None
            for it in await self.index.instances_of_study(st["study_uid"], only):
                if it["series_uid"] in want and qido.instance_matches(q, it):
                    yield st, series[it["series_uid"]], it

    async def instances(self, q: qido.Query, base_url: str) -> SearchResult:
        """Matching instances in instance-number order."""
        study_m = q.matchers.get("StudyInstanceUID")
        series_m = q.matchers.get("SeriesInstanceUID")
        if (study_m is not None and len(study_m.values) == 1 and series_m is not None and len(series_m.values) == 1
                and not q.include_all and not (q.include - set(qido.BY_KEYWORD))):
            return await self._series_instances(q, base_url, study_m.values[0], series_m.values[0])
        items, truncated = await _page(self._matching_instances(q), q, self.max_results)
        need_json = q.include_all or bool(q.include - set(qido.BY_KEYWORD))
        if need_json:
            items = await self._with_json(items)
        return SearchResult(
            [qido.sort_json(qido.instance_result(st, se, it, base_url, q)) for st, se, it in items], truncated
        )

    async def _series_instances(self, q: qido.Query, base_url: str, study: str, series: str) -> SearchResult:
        """Instances of one series from its cached entry; each result's JSON is serialised once per entry."""
        try:
            entry = await self.index.series_entry(study, series)
        except NotFound:
            return SearchResult([], False)
        if not qido.study_matches(q, entry.study) or not qido.series_matches(q, entry.series):
            return SearchResult([], False)
        matching = [it for it in entry.instances if qido.instance_matches(q, it)]
        offset, limit = _window(q, self.max_results)
        page = matching[offset : offset + limit]
        signature = ("qido", base_url, frozenset(q.include), frozenset(m.keyword for m in q.at("STUDY")))
        memo: dict[str, str] | None = entry.extra.get(signature)
        if memo is None:
            if len(entry.extra) >= 8:  # a few query shapes per series; drop the oldest
                entry.extra.pop(next(iter(entry.extra)))
            memo = entry.extra[signature] = {}
        out = []
        for it in page:
            text = memo.get(it["sop_uid"])
            if text is None:
                obj = qido.sort_json(qido.instance_result(entry.study, entry.series, it, base_url, q))
                text = memo[it["sop_uid"]] = json.dumps(obj, separators=(",", ":"))
            out.append(text)
        return SearchResult([], offset + limit < len(matching), serialized=out)

    async def _with_json(self, items: list[tuple[Any, Any, dict[str, Any]]]) -> list[tuple[Any, Any, dict[str, Any]]]:
        missing = [(it["pk"], it["sk"]) for _, _, it in items if "dicom_json" not in it]
        if not missing:
            return items
        full = await self.index.get_items(missing)
        return [(st, se, full.get((it["pk"], it["sk"]), it)) for st, se, it in items]


async def _aiter(xs: list[Any]) -> AsyncIterator[Any]:
    for x in xs:
        yield x
