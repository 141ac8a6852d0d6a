"""The chaos run's fault-injecting hop: an HTTP proxy on loopback in front of the embedded AWS endpoint.

The services of a chaos run (:mod:`radloop.chaos`) are pointed at this hop (``AWS_ENDPOINT_URL``) instead of moto.
It forwards every request unchanged, except during a *fault window*: then a fraction of the calls to the chosen AWS
services is answered by the hop itself, without reaching moto, with the error the real service gives under load:

| service | answers (one of, at random) |
|---|---|
| DynamoDB | 400 ``ThrottlingException``, 400 ``ProvisionedThroughputExceededException``, 500 ``InternalServerError``, 503 |
| EventBridge | 400 ``ThrottlingException``, 500 ``InternalException``, 503 ``ServiceUnavailable`` |
| S3 | 503 ``SlowDown``, 500 ``InternalError`` |

The AWS service of a request is read from its SigV4 credential scope (``Credential=KEY/date/region/SERVICE/...``).
The call never reaches moto, so it had no effect: this exercises the SDK's retries and, when they are used up, the
consumers' redelivery and the HTTP paths' error answers. SQS is never faulted (the issue's faults are DynamoDB,
EventBridge and S3).

Control (loopback only): ``POST /__chaos/faults`` with ``{"seconds": 30, "rate": 0.3, "services": ["dynamodb",
"events", "s3"]}`` opens a window; ``GET /__chaos/stats`` answers the counts of forwarded and faulted calls per
service. ``python -m radloop.chaos_hop --port P --upstream http://127.0.0.1:M``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                "transfer-encoding", "upgrade", "host", "content-length", "expect"}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")
_DDB = "com.amazonaws.dynamodb.v20120810#"

#: (status, content type, body) per service; one is picked at random for each faulted call.
FAULTS: dict[str, list[tuple[int, str, bytes]]] = {
    "dynamodb": [
        (400, "application/x-amz-json-1.0",
         json.dumps({"__type": _DDB + "ThrottlingException", "message": "Rate of requests exceeds the allowed "
                     "throughput."}).encode()),
        (400, "application/x-amz-json-1.0",
         json.dumps({"__type": _DDB + "ProvisionedThroughputExceededException",
                     "message": "The level of configured provisioned throughput for the table was exceeded."}).encode()),
        (500, "application/x-amz-json-1.0",
         json.dumps({"__type": _DDB + "InternalServerError", "message": "Internal server error"}).encode()),
        (503, "application/x-amz-json-1.0",
         json.dumps({"__type": _DDB + "ServiceUnavailable", "message": "Service unavailable"}).encode()),
    ],
    "events": [
        (400, "application/x-amz-json-1.1",
         json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()),
        (500, "application/x-amz-json-1.1",
         json.dumps({"__type": "InternalException", "message": "Internal service error"}).encode()),
        (503, "application/x-amz-json-1.1",
         json.dumps({"__type": "ServiceUnavailable", "message": "Service unavailable"}).encode()),
    ],
    "s3": [
        (503, "application/xml",
         b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request '
         b"rate.</Message></Error>"),
        (500, "application/xml",
         b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>We encountered an '
         b"internal error. Please try again.</Message></Error>"),
    ],
}


def aws_service(headers: Any) -> str:
    """The AWS service a request is signed for (``dynamodb``, ``events``, ``s3``, ``sqs``...), or ``""``."""
    m = _SCOPE.search(headers.get("Authorization", ""))
    return m.group(1) if m else ""


class Hop:
    """The proxy's state: where it forwards to, the open fault window and the counts."""

    def __init__(self, upstream: str, seed: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.rng = random.Random(seed)
        self.until = 0.0
        self.rate = 0.0
        self.services: frozenset[str] = frozenset()
        self.forwarded: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.windows: list[dict[str, Any]] = []
        self.session: aiohttp.ClientSession | None = None

    def faulting(self, service: str) -> bool:
        return service in self.services and time.monotonic() < self.until and self.rng.random() < self.rate

    async def control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            doc = await request.json()
            seconds, rate = float(doc["seconds"]), float(doc["rate"])
            services = [s for s in doc.get("services", ["dynamodb", "events", "s3"]) if s in FAULTS]
            if not 0 < seconds <= 3600 or not 0 < rate <= 1 or not services:
                return web.json_response({"detail": "need 0 < seconds <= 3600, 0 < rate <= 1, known services"},
                                         status=400)
            self.until, self.rate, self.services = time.monotonic() + seconds, rate, frozenset(services)
            self.windows.append({"at": time.time(), "seconds": seconds, "rate": rate, "services": services})
        return web.json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        return {"forwarded": dict(self.forwarded), "faulted": dict(self.faulted), "windows": self.windows,
                "window_open": time.monotonic() < self.until}

    async def forward(self, request: web.Request) -> web.StreamResponse:
        service = aws_service(request.headers)
        body = await request.read()
        if self.faulting(service):
            status, ctype, payload = self.rng.choice(FAULTS[service])
            self.faulted[service] += 1
            return web.Response(status=status, body=payload, headers={"Content-Type": ctype})
        self.forwarded[service or "other"] += 1
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self.session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                        headers=headers, data=body if body else None,
                                        allow_redirects=False) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
            if request.method == "HEAD" or up.status in (204, 304):
                # no body: keep the upstream's Content-Length (a HEAD object's size)
                resp = web.Response(status=up.status, headers=out)
                if "Content-Length" in up.headers and request.method == "HEAD":
                    resp.headers["Content-Length"] = up.headers["Content-Length"]
                return resp
            return web.Response(status=up.status, body=data, headers=out)


HOP: web.AppKey[Hop] = web.AppKey("hop", Hop)


def create_app(upstream: str, seed: int | None = None) -> web.Application:
    hop = Hop(upstream, seed)

    async def on_startup(app: web.Application) -> None:
        hop.session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300),
            connector=aiohttp.TCPConnector(limit=256, force_close=False))

    async def on_cleanup(app: web.Application) -> None:
        if hop.session is not None:
            await hop.session.close()

    app = web.Application(client_max_size=4 << 30)
    app[HOP] = hop
    app.router.add_route("*", "/__chaos/faults", hop.control)
    app.router.add_get("/__chaos/stats", lambda r: asyncio.sleep(0, web.json_response(hop.stats())))
    app.router.add_route("*", "/{tail:.*}", hop.forward)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="fault-injecting HTTP hop in front of the embedded AWS endpoint")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the embedded endpoint, e.g. http://127.0.0.1:4566")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    web.run_app(create_app(a.upstream, a.seed), host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
