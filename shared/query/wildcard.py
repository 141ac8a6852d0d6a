"""DICOM wildcard matching (PS3.4 C.2.2.2.4: ``*`` any run of characters, ``?`` exactly one) without regular expressions.

A pattern such as ``*A*A*A*A*A*A*A*A!`` compiled to the regex ``.*A.*A…!`` backtracks through every way of placing
the ``A``\\ s before failing: 60 s of event-loop CPU against one 64-character name. Here the pattern is split at its
``*``\\ s into segments of fixed length (literals and ``?``). The first segment must match at the start, the last at
the end, and each middle segment is placed at its leftmost possible position after the previous one; leftmost
placement is optimal (anything a later placement could match, the leftmost one can too), so nothing is ever retried.
Each segment is located with ``str.find`` on its longest literal run, so a match costs at most
O(len(text) × len(pattern)) character comparisons and usually one C-level scan of the text.
"""

from __future__ import annotations

from dataclasses import dataclass


def fold(text: str) -> str:
    """Lower case, one character for one character (so ``?`` still counts characters of the original)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    # A few characters lower-case to two ("İ" → "i̇"); keep those unchanged rather than shift every position.
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


@dataclass(frozen=True)
class _Segment:
    """A run of the pattern between two ``*``: literals and ``?``, of fixed length ``size``."""

    size: int
    #: (offset, literal) runs of the segment, longest first (the first is the one searched for).
    runs: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, text: str) -> _Segment:
        runs: list[tuple[int, str]] = []
        start = 0
        for piece in text.split("?"):
            if piece:
                runs.append((start, piece))
            start += len(piece) + 1
        runs.sort(key=lambda r: -len(r[1]))
        return cls(len(text), tuple(runs))

    def at(self, text: str, pos: int) -> bool:
        """Whether the segment matches ``text`` at ``pos`` (the caller checks that it fits)."""
        return all(text.startswith(lit, pos + off) for off, lit in self.runs)

    def find(self, text: str, start: int, end: int) -> int:
        """The leftmost position ``p`` in ``start..end-size`` where the segment matches, or -1."""
        last = end - self.size
        if last < start:
            return -1
        if not self.runs:  # only ``?``: any position fits
            return start
        off, lit = self.runs[0]
        stop = last + off + len(lit)
        i = text.find(lit, start + off, stop)
        while i >= 0:
            if self.at(text, i - off):
                return i - off
            i = text.find(lit, i + 1, stop)
        return -1


class Wildcard:
    """A compiled wildcard pattern; :meth:`fullmatch` tells whether a whole value matches."""

    def __init__(self, pattern: str, *, case_insensitive: bool = False, prefix: bool = False) -> None:
        if prefix and not pattern.endswith("*"):
            pattern += "*"  # fuzzy and time matching: the value may go on after the pattern
        self.pattern = pattern
        self.case_insensitive = case_insensitive
        parts = (fold(pattern) if case_insensitive else pattern).split("*")
        self._head = _Segment.of(parts[0])
        self._star = len(parts) > 1
        self._tail = _Segment.of(parts[-1]) if self._star else None
        self._middle = tuple(_Segment.of(p) for p in parts[1:-1] if p)

    def __repr__(self) -> str:
        return f"Wildcard({self.pattern!r}, case_insensitive={self.case_insensitive})"

    def fullmatch(self, value: str) -> bool:
        """Whether the whole of ``value`` matches the pattern."""
        text = fold(value) if self.case_insensitive else value
        n = len(text)
        head, tail = self._head, self._tail
        if tail is None:
            return n == head.size and head.at(text, 0)
        if n < head.size + tail.size or not head.at(text, 0) or not tail.at(text, n - tail.size):
            return False
        pos, end = head.size, n - tail.size
        for seg in self._middle:
            found = seg.find(text, pos, end)
            if found < 0:
                return False
            pos = found + seg.size
        return True
