"""Numbers that arrive in a URL or a header (frame lists, ``resolution``, ``limit``, ``offset``, ``Range``,
``viewport``, ``quality``, QIDO integer keys), parsed by one rule: ASCII digits only.

``str.isdigit()`` accepts "²" and ``int()`` accepts "٣", "+3", " 3 " and "1_000"; a number that one check accepts and
the next rejects was a 500. Here a value either matches ``[0-9]{1,MAX_DIGITS}`` (with an optional ``-`` where a sign
is allowed) or is refused with :class:`BadRequest` naming it. The digit cap keeps ``int()`` cheap (CPython refuses
strings longer than 4,300 digits with a ValueError, and converting a long one is quadratic before that).
"""

from __future__ import annotations

import re

from services.streaming_gateway.domain.errors import BadRequest

#: More digits than any count, offset or byte position the gateway handles (2**63 has 19). The
#: patterns below spell it out.
MAX_DIGITS = 18
# ``[0-9]`` (not ``\d``): only the ten ASCII digits, whatever the locale or the Unicode category of the input.
_UINT = re.compile(r"[0-9]{1,18}")
_INT = re.compile(r"-?[0-9]{1,18}")
_DECIMAL = re.compile(r"[-+]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})")


def _shown(raw: str) -> str:
    # The reason names the value, but never echoes a long hostile string whole.
    return repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "…"


def is_uint(raw: str) -> bool:
    """Whether ``raw`` is 1 to :data:`MAX_DIGITS` ASCII digits (no sign, no space)."""
    return _UINT.fullmatch(raw) is not None


def parse_uint(raw: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A non-negative integer of ASCII digits in ``minimum..maximum``, or :class:`BadRequest` naming ``what``."""
    if not is_uint(raw):
        raise BadRequest(f"{what} value {_shown(raw)} is not a non-negative integer written with the digits 0-9")
    n = int(raw)
    if n < minimum:
        raise BadRequest(f"{what} value {_shown(raw)} is below the minimum {minimum}")
    if maximum is not None and n > maximum:
        raise BadRequest(f"{what} value {_shown(raw)} is above the maximum {maximum}")
    return n


def parse_int(raw: str, what: str) -> int:
    """An integer of ASCII digits with an optional leading ``-``, or :class:`BadRequest` naming ``what``."""
    if _INT.fullmatch(raw) is None:
        raise BadRequest(f"{what} value {_shown(raw)} is not an integer written with the digits 0-9")
    return int(raw)


def parse_decimal(raw: str, what: str) -> float:
    """A decimal number (ASCII digits, optional sign and fraction; no exponent, inf or nan)."""
    if _DECIMAL.fullmatch(raw) is None:
        raise BadRequest(f"{what} value {_shown(raw)} is not a decimal number written with the digits 0-9")
    return float(raw)
