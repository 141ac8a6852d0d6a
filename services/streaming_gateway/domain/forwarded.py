"""The origin (``scheme://host[:port]``) that RetrieveURLs name, and which proxies may set it.

RetrieveURLs used to come straight from ``X-Forwarded-Host``/``-Proto``, which any client can send: a search result
could then point a viewer (and the bearer token it sends along) at another host. Now forwarded headers
(``X-Forwarded-Host``, ``X-Forwarded-Proto``, RFC 7239 ``Forwarded``) count only when the connection comes from an
address in ``RADLOOP_TRUSTED_PROXIES``, and then only the value that proxy added *last* (a proxy appends its own value
after whatever the client sent). Otherwise the origin is ``RADLOOP_PUBLIC_BASE_URL`` when set, else the request's own
``Host``. Every host and scheme is checked against a strict grammar before it is used.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

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
    """The origin clients reach the gateway at (``scheme://host[:port]``, plus the path of ``public_base_url``).

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
