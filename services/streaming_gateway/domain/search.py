"""QIDO-RS searches: :mod:`shared.query.search` (budgets, access paths, paging), shared with C-FIND; re-exported
here under the gateway's name."""

from shared.query.search import Budget, IndexReads, Searcher, SearchResult

__all__ = ["Budget", "IndexReads", "SearchResult", "Searcher"]
