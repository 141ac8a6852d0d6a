"""The origin (``scheme://host[:port]``) that URLs handed back to clients name, and which proxies may set it.

The streaming gateway's RetrieveURLs (QIDO-RS results) and ingestion's STOW-RS store responses (RetrieveURL of the
study and of each stored instance) name the origin a client should use next. They used to come straight from
``X-Forwarded-Host``/``-Proto`` or ``Host``, which any client can send: a response could then point a viewer (and the
bearer token it sends along) at another host. Now forwarded headers (``X-Forwarded-Host``, ``X-Forwarded-Proto``,
RFC 7239 ``Forwarded``) count only when the connection comes from an address in ``RADLOOP_TRUSTED_PROXIES``, and
then only the value that proxy added *last* (a proxy appends its own value after whatever the client sent).
Otherwise the origin is ``RADLOOP_PUBLIC_BASE_URL`` when set, else the request's own ``Host``. Every host and scheme is
checked against a strict grammar before it is used.

The peer address must be the connection's own: a service that uses this module runs uvicorn with
``FORWARDED_ALLOW_IPS`` empty (:func:`distrust_uvicorn_proxy_headers`, in its ``__main__``), or uvicorn would replace
the peer with a loopback client's ``X-Forwarded-For`` and so let that client pose as a trusted proxy.

Pure: no AWS. :class:`ForwardingSettings` adds the two settings to a service's settings class.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import field_validator

from shared.settings import Settings

if TYPE_CHECKING:
    from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port: nothing that could end the
# authority ("/", "?", "#", "@", spaces, controls) gets into a URL.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?"
                   r"|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_SCHEMES = ("http", "https")


def parse_networks(spec: str) -> tuple[Network, ...]:
    """Comma-separated IP addresses or CIDRs as networks; ValueError naming a bad entry."""
    nets: list[Network] = []
    for entry in spec.split(","):
        e = entry.strip()
        if not e:
            continue
        try:
            nets.append(ipaddress.ip_network(e, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {e!r} is not an IP address or CIDR") from None
    return tuple(nets)


def is_trusted(peer: str | None, networks: Sequence[Network]) -> bool:
    """Whether the connection's peer address lies in one of ``networks``."""
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in n for n in networks)


def valid_host(host: str) -> bool:
    """Whether ``host`` is a plain ``name[:port]`` or ``[v6][:port]`` (at most 255 characters)."""
    return len(host) <= 255 and _HOST.fullmatch(host) is not None


def _last(values: Sequence[str]) -> str | None:
    # Several header lines, each possibly a comma-separated list: the proxy's own value is the last item.
    for v in reversed(values):
        items = [x.strip() for x in v.split(",") if x.strip()]
        if items:
            return items[-1]
    return None


def _forwarded_pairs(values: Sequence[str]) -> dict[str, str]:
    """The parameters of the last element of RFC 7239 ``Forwarded`` headers (lower-case names, unquoted values)."""
    elements: list[str] = []
    for v in values:
        cur: list[str] = []
        quoted = False
        for ch in v:
            if ch == '"':
                quoted = not quoted
            if ch == "," and not quoted:
                elements.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        elements.append("".join(cur))
    elements = [e for e in elements if e.strip()]
    if not elements:
        return {}
    out: dict[str, str] = {}
    for pair in elements[-1].split(";"):
        k, sep, val = pair.partition("=")
        if sep:
            out[k.strip().lower()] = val.strip().strip('"')
    return out


def external_origin(
    *,
    peer: str | None,
    trusted: Sequence[Network],
    forwarded_host: Sequence[str],
    forwarded_proto: Sequence[str],
    forwarded: Sequence[str],
    public_base_url: str,
    own_scheme: str,
    own_host: str | None,
    server: str,
) -> str:
    """The origin clients reach the service at (``scheme://host[:port]``, plus the path of ``public_base_url``).

    ``forwarded_*``: every value of those request headers; ``own_*``: the request's scheme and ``Host``;
    ``server``: the listening socket (``host:port``), the last resort when ``Host`` is malformed.
    """
    if is_trusted(peer, trusted):
        fw = _forwarded_pairs(forwarded)
        host = _last(forwarded_host) or fw.get("host")
        proto = (_last(forwarded_proto) or fw.get("proto") or "").lower()
        if host and valid_host(host):
            return f"{proto if proto in _SCHEMES else own_scheme_or_http(own_scheme)}://{host}"
        if proto in _SCHEMES and own_host and valid_host(own_host):
            return f"{proto}://{own_host}"
    if public_base_url:
        return public_base_url.rstrip("/")
    host = own_host if own_host and valid_host(own_host) else server
    return f"{own_scheme_or_http(own_scheme)}://{host}"


def own_scheme_or_http(scheme: str) -> str:
    """The request's scheme if it is http or https, else http."""
    s = scheme.lower()
    return s if s in _SCHEMES else "http"


class ForwardingSettings(Settings):
    """The settings of a service that names its own origin in responses (``RADLOOP_<FIELD>``)."""

    #: Peers (IPs or CIDRs, comma-separated) whose X-Forwarded-Host/-Proto and Forwarded headers are believed when
    #: URLs in responses are built: the local entry proxy by default. Name only proxies that set those headers
    #: themselves; an AWS ALB sets X-Forwarded-Proto but passes a client's X-Forwarded-Host through, so behind an
    #: ALB leave this alone and set ``public_base_url``.
    trusted_proxies: str = "127.0.0.1,::1"
    #: The origin clients use (``https://pacs.example.org``), for URLs in responses to requests that do not come
    #: through a trusted proxy. Empty: the request's own Host header (and the connection's scheme, http).
    public_base_url: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: str) -> str:
        parse_networks(v)  # a typo refuses to start instead of silently trusting nobody (or everybody)
        return v

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        if not v:
            return v
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment or "@" in u.netloc:
            raise ValueError(f"RADLOOP_PUBLIC_BASE_URL {v!r} must be http(s)://host[:port][/path]")
        return v.rstrip("/")

    @cached_property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        """:attr:`trusted_proxies` parsed once."""
        return parse_networks(self.trusted_proxies)


def request_origin(request: Request, settings: ForwardingSettings) -> str:
    """:func:`external_origin` of a Starlette/FastAPI request, judged by the connection's peer address."""
    server = request.scope.get("server") or ("127.0.0.1", settings.port)
    return external_origin(
        peer=request.client.host if request.client else None,
        trusted=settings.trusted_proxy_networks,
        forwarded_host=request.headers.getlist("x-forwarded-host"),
        forwarded_proto=request.headers.getlist("x-forwarded-proto"),
        forwarded=request.headers.getlist("forwarded"),
        public_base_url=settings.public_base_url,
        own_scheme=request.url.scheme,
        own_host=request.headers.get("host"),
        server=f"{server[0]}:{server[1]}",
    )


def distrust_uvicorn_proxy_headers() -> None:
    """Make uvicorn keep the connection's own peer address and scheme (call before it starts).

    Its ``FORWARDED_ALLOW_IPS`` default (``127.0.0.1``) would replace them with ``X-Forwarded-For``/``-Proto`` from
    any loopback peer, so a local client could claim a trusted proxy's address. Which proxies to believe is decided
    here (``RADLOOP_TRUSTED_PROXIES``) instead.
    """
    os.environ["FORWARDED_ALLOW_IPS"] = ""
