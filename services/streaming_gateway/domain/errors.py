"""Errors of the streaming gateway, each mapped to one HTTP status by the API layer."""

from __future__ import annotations

from shared.exceptions import RadloopError


class GatewayError(RadloopError):
    """Base error; ``status`` is the HTTP status the API answers with, the message is the reason."""

    status = 500


class BadRequest(GatewayError):
    """The request names an invalid value (400)."""

    status = 400


class NotFound(GatewayError):
    """The study, series, instance or frame does not exist (404)."""

    status = 404


class NotAcceptable(GatewayError):
    """No representation matches the Accept header or the transfer syntax (406)."""

    status = 406


class RangeNotSatisfiable(GatewayError):
    """The Range header lies outside the representation (416)."""

    status = 416

    def __init__(self, message: str, length: int) -> None:
        super().__init__(message)
        self.length = length


class Unavailable(GatewayError):
    """A dependency (storage, index, audit log) is unavailable (503)."""

    status = 503
