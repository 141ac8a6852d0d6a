"""Errors of :mod:`shared.query`: :class:`~shared.exceptions.DomainError` subclasses with the HTTP status each
deserves. A DIMSE C-FIND SCP maps them to DICOM statuses with :data:`C_FIND_STATUS` (PS3.4 C.4.1.1.4)."""

from __future__ import annotations

from shared.exceptions import DomainError


class QueryError(DomainError):
    """Base error of a query (and of the services that serve queries); ``status`` is the HTTP status."""

    status = 500


class InvalidQuery(QueryError):
    """A query key has an invalid value (400); the message names the key and why."""

    status = 400


class QueryNotFound(QueryError):
    """The study or series a query is fixed to does not exist (404)."""

    status = 404


class QueryTooLarge(QueryError):
    """The query would examine more index items, or take longer, than its budget allows (413); the message says
    how to narrow it."""

    status = 413


class QueryUnavailable(QueryError):
    """The index did not answer in time (503, with when to retry): the dependency is down, not the query too broad."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


#: DICOM statuses for a C-FIND response: A900 "Identifier does not match SOP Class", A700 "Out of resources".
#: (A query fixed to a study or series that does not exist matches nothing; it is not an error.)
C_FIND_STATUS: dict[type[QueryError], int] = {InvalidQuery: 0xA900, QueryTooLarge: 0xA700,
                                                 QueryUnavailable: 0xA700}
