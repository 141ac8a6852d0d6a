"""Searches (QIDO-RS, C-FIND) over the instance index: pick the cheapest index access path for a :class:`Query`,
match, page and build results.

Every search has a :class:`Budget`: at most ``max_examined`` index items looked at and ``deadline_s`` seconds. A
query without UIDs may walk every study of the archive, and ``offset`` is applied by walking the matches; when the
budget runs out before the page is complete the search stops with :class:`QueryTooLarge` (413) and a reason that
says how to narrow it. A partial page is never sent as if it were complete: a worklist that silently misses a study is
worse than an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from shared.query import matching as qido
from shared.query.errors import QueryNotFound, QueryTooLarge, QueryUnavailable

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

    def datasets(self) -> list[dict[str, Any]]:
        """The results as DICOM JSON objects (``{"0020000D": {"vr": "UI", "Value": [...]}, ...}``)."""
        if self.serialized is not None:
            return [json.loads(t) for t in self.serialized]
        return list(self.items)

    def body(self) -> str:
        """The response body: a JSON array of DICOM JSON objects."""
        if self.serialized is not None:
            return "[" + ",".join(self.serialized) + "]"
        return json.dumps(self.items, separators=(",", ":"))


class Budget:
    """How much one search may do: index items examined and wall-clock seconds (both checked in :meth:`spend`)."""

    def __init__(self, max_examined: int, deadline_s: float) -> None:
        self.max_examined = max_examined
        self.deadline_s = deadline_s
        self.examined = 0
        self._deadline = time.monotonic() + deadline_s

    def spend(self, items: int = 1) -> None:
        """Count ``items`` index items as examined; :class:`QueryTooLarge` once either limit is passed."""
        self.examined += items
        if self.examined > self.max_examined:
            raise QueryTooLarge(
                f"the search would examine more than {self.max_examined} index items (RADLOOP_QIDO_MAX_EXAMINED); "
                "narrow it with PatientID, StudyInstanceUID, a StudyDate range or a smaller offset"
            )
        if time.monotonic() > self._deadline:
            self.timed_out()

    def timed_out(self) -> NoReturn:
        """Raise the deadline's :class:`QueryTooLarge`, or :class:`QueryUnavailable` when the index gave nothing at all
        in that time (it is unreachable or overloaded: the search is not too broad, and narrowing it would not help)."""
        if self.examined == 0:
            raise QueryUnavailable(f"the index did not answer within {self.deadline_s:g} s; retry later")
        raise QueryTooLarge(
            f"the search did not complete within {self.deadline_s:g} s (RADLOOP_QIDO_DEADLINE_S); narrow it with "
            "PatientID, StudyInstanceUID, a StudyDate range or a smaller offset"
        )


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


class IndexReads(Protocol):
    """The index reads a search needs (implemented by :class:`shared.query.reader.IndexReader`)."""

    async def studies(self, uids: list[str]) -> list[dict[str, Any]]: ...

    def level_items(self, level: str, *, newest_first: bool = False, sk_between: tuple[str, str] | None = None,
                    page: int | None = None) -> AsyncIterator[dict[str, Any]]: ...

    def patient_items(self, patient_id: str, level: str, *,
                      sk_between: tuple[str, str] | None = None) -> AsyncIterator[dict[str, Any]]: ...

    def accession_items(self, accession: str) -> AsyncIterator[dict[str, Any]]: ...

    def modality_items(self, modality: str) -> AsyncIterator[dict[str, Any]]: ...

    async def series_of_study(self, study: str) -> list[dict[str, Any]]: ...

    async def study_and_series(self, study: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]: ...

    async def instances_of_study(self, study: str, series: str | None = None) -> list[dict[str, Any]]: ...

    async def instances_by_sop(self, sop: str) -> list[dict[str, Any]]: ...

    async def heads(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
        ...

    async def series_entry(self, study: str, series: str) -> Any: ...

    async def get_items(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]: ...


class Searcher:
    """QIDO-RS searches at the study, series and instance level, each within a :class:`Budget`."""
    def __init__(self, index: IndexReads, *, max_results: int, max_examined: int = 50_000,
                 deadline_s: float = 10.0) -> None:
        self.index = index
        self.max_results = max_results
        self.max_examined = max_examined
        self.deadline_s = deadline_s

    def budget(self) -> Budget:
        """A fresh budget for one search."""
        return Budget(self.max_examined, self.deadline_s)

    async def _bounded(self, search: Any, b: Budget) -> Any:
        # The budget's clock is checked per item; this also ends a search stuck awaiting slow index pages.
        try:
            async with asyncio.timeout(self.deadline_s):
                return await search
        except TimeoutError:
            b.timed_out()

    async def search(self, q: qido.Query, base_url: str = "") -> SearchResult:
        """Run ``q`` at its own level (``q.level``); ``base_url`` prefixes the RetrieveURL of each result."""
        if q.level == "STUDY":
            return await self.studies(q, base_url)
        if q.level == "SERIES":
            return await self.series(q, base_url)
        return await self.instances(q, base_url)

    def _wanted(self, q: qido.Query) -> int | None:
        """How many matches a search reads at most (offset, page and one more); None when keys other than the
        access path's filter items, so the page size cannot be predicted."""
        offset, limit = _window(q, self.max_results)
        keys = {m.keyword for m in q.matchers.values()} - {"StudyDate"}
        return offset + limit + 1 if not keys else None

    # --- studies -------------------------------------------------------------------------------------------------
    async def _matching_studies(self, q: qido.Query, b: Budget) -> AsyncIterator[dict[str, Any]]:
        # The access path, most selective first; every path but the last is an index of exactly the matching key.
        uids = q.matchers.get("StudyInstanceUID")
        pid = _single(q, "PatientID")
        accession = _single(q, "AccessionNumber")
        if uids is not None:
            found = await self.index.studies(list(uids.values))
            found.sort(key=lambda s: s.get("level_sk", ""), reverse=True)
            source: Any = _aiter(found)
        elif pid is not None:
            source = self.index.patient_items(pid, "STUDY", sk_between=_date_bounds(q))
        elif accession is not None:
            source = self.index.accession_items(accession)
        else:  # newest first, within the StudyDate range if there is one; other keys are matched item by item
            source = self.index.level_items("STUDY", newest_first=True, sk_between=_date_bounds(q),
                                            page=self._wanted(q))
        async for st in source:
            b.spend()
            if qido.study_matches(q, st):
                yield st

    async def studies(self, q: qido.Query, base_url: str) -> SearchResult:
        """Matching studies, newest first."""
        b = self.budget()
        items, truncated = await self._bounded(_page(self._matching_studies(q, b), q, self.max_results), b)
        return SearchResult([qido.sort_json(qido.study_result(st, base_url)) for st in items], truncated)

    # --- series ----------------------------------------------------------------------------------------------------
    def _needs_study_filter(self, q: qido.Query) -> bool:
        """Series matching needs study items first when any study-level key is given (relational query)."""
        return bool(q.at("STUDY"))

    async def _matching_series(self, q: qido.Query, b: Budget) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
        if self._needs_study_filter(q):
            # (The series of one study, what a viewer lists first: its study and series items in one index read.)
            async for st, series in self._studies_with_series(q, b):
                b.spend(len(series))
                for se in series:
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

        modality = _single(q, "Modality")
        source = (self.index.modality_items(modality) if modality is not None
                  else self.index.level_items("SERIES", page=self._wanted(q)))
        async for se in source:
            b.spend()
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
        b = self.budget()
        items, truncated = await self._bounded(_page(self._matching_series(q, b), q, self.max_results), b)
        return SearchResult([qido.sort_json(qido.series_result(st, se, base_url, q)) for st, se in items], truncated)

    # --- instances ---------------------------------------------------------------------------------------------------
    async def _matching_instances(self, q: qido.Query, b: Budget) -> AsyncIterator[tuple[Any, Any, dict[str, Any]]]:
        study_m = q.matchers.get("StudyInstanceUID")
        series_m = q.matchers.get("SeriesInstanceUID")
        sop_m = q.matchers.get("SOPInstanceUID")
        # One study and one series: the cached series entry (validated by one BatchGetItem).
        if study_m is not None and len(study_m.values) == 1 and series_m is not None and len(series_m.values) == 1:
            try:
                entry = await self.index.series_entry(study_m.values[0], series_m.values[0])
            except QueryNotFound:
                return
            if not qido.study_matches(q, entry.study) or not qido.series_matches(q, entry.series):
                return
            b.spend(len(entry.instances))
            for it in entry.instances:
                if qido.instance_matches(q, it):
                    yield entry.study, entry.series, it
            return
        if sop_m is not None:
            found = [x for lst in await asyncio.gather(*(self.index.instances_by_sop(s) for s in sop_m.values))
                     for x in lst]
            b.spend(len(found))
            heads = await self.index.heads([(i["study_uid"], i["series_uid"]) for i in found])
            for it in found:
                st, se = heads.get((it["study_uid"], it["series_uid"]), ({}, {}))
                if qido.study_matches(q, st) and qido.series_matches(q, se) and qido.instance_matches(q, it):
                    yield st, se, it
            return
        async for st, series_items in self._studies_with_series(q, b):
            series = {se["series_uid"]: se for se in series_items}
            b.spend(len(series))
            want = {k for k, se in series.items() if qido.series_matches(q, se)}
            if not want:
                continue
            only = next(iter(want)) if len(want) == 1 and len(series) > 1 else None
            instances = await self.index.instances_of_study(st["study_uid"], only)
            b.spend(len(instances))
            for it in instances:
                if it["series_uid"] in want and qido.instance_matches(q, it):
                    yield st, series[it["series_uid"]], it

    async def _studies_with_series(
        self, q: qido.Query, b: Budget
    ) -> AsyncIterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Matching studies with their series items; one study by UID alone takes one index read."""
        study_m = q.matchers.get("StudyInstanceUID")
        if (study_m is not None and len(study_m.values) == 1
                and {m.keyword for m in q.at("STUDY")} == {"StudyInstanceUID"}):
            st, series = await self.index.study_and_series(str(study_m.values[0]))
            b.spend(1)
            if st is not None and qido.study_matches(q, st):
                yield st, series
            return
        async for st in self._matching_studies(q, b):
            yield st, await self.index.series_of_study(st["study_uid"])

    async def instances(self, q: qido.Query, base_url: str) -> SearchResult:
        """Matching instances in instance-number order."""
        study_m = q.matchers.get("StudyInstanceUID")
        series_m = q.matchers.get("SeriesInstanceUID")
        if (study_m is not None and len(study_m.values) == 1 and series_m is not None and len(series_m.values) == 1
                and not q.include_all and not (q.include - set(qido.BY_KEYWORD))):
            return await self._series_instances(q, base_url, study_m.values[0], series_m.values[0])
        b = self.budget()
        items, truncated = await self._bounded(_page(self._matching_instances(q, b), q, self.max_results), b)
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
        except QueryNotFound:
            return SearchResult([], False)
        if not qido.study_matches(q, entry.study) or not qido.series_matches(q, entry.series):
            return SearchResult([], False)
        self.budget().spend(len(entry.instances))
        matching = [it for it in entry.instances if qido.instance_matches(q, it)]
        offset, limit = _window(q, self.max_results)
        page = matching[offset : offset + limit]
        signature = ("qido", base_url, frozenset(q.include), frozenset(m.keyword for m in q.at("STUDY")),
                     q.study_in_path)
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


def _single(q: qido.Query, keyword: str) -> str | None:
    """The value of a key matched by exactly one literal value (an index can look it up), else None."""
    m = q.matchers.get(keyword)
    if m is not None and m.kind == "exact" and len(m.values) == 1:
        return str(m.values[0])
    return None


async def _aiter(xs: list[Any]) -> AsyncIterator[Any]:
    for x in xs:
        yield x
