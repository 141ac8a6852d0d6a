"""Errors of the streaming gateway: :class:`~shared.exceptions.DomainError` subclasses, each with its HTTP status
(mapped to ``{"detail": reason}`` by the shared app)."""

from __future__ import annotations

from shared.query.errors import InvalidQuery, QueryError, QueryNotFound, QueryTooLarge

#: Base error; ``status`` is the HTTP status the API answers with, the message is the reason. The query errors of
#: :mod:`shared.query` (QIDO parsing and search) are the gateway's own: the same classes under the gateway's names.
GatewayError = QueryError
#: The request names an invalid value (400).
BadRequest = InvalidQuery
#: The study, series, instance or frame does not exist (404).
NotFound = QueryNotFound
#: The request asks for more work or bytes than a setting allows (413, Content Too Large); the reason names the
#: limit and how to ask for less. PS3.18 lists 413 for a search too broad for the origin server to complete.
TooLarge = QueryTooLarge


class NotAcceptable(GatewayError):
    """No representation matches the Accept header or the transfer syntax (406)."""

    status = 406


class RangeNotSatisfiable(GatewayError):
    """The Range header lies outside the representation (416)."""

    status = 416

    def __init__(self, message: str, length: int) -> None:
        # RFC 9110 §15.5.17: a 416 names the representation's length.
        super().__init__(message, headers={"Content-Range": f"bytes */{length}"})
        self.length = length


class Unavailable(GatewayError):
    """A dependency (storage, index, audit log) is unavailable (503)."""

    status = 503
