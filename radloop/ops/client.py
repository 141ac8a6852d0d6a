"""The HTTP client of the operator's commands: where to talk (``--url``), with which token, and what a failure says.

Exit codes (every command): 0 success; 1 the deployment or the connection failed (unreachable, 401/403, 5xx);
2 the request itself was wrong (a malformed URL, an unknown model version or run, a refused decision: 4xx).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console

from shared.settings import DEFAULT_PORTS, Settings

console = Console()
err = Console(stderr=True)

#: The local platform's entry point (``radloop up``), unless ``--url`` or ``RADLOOP_URL`` says otherwise.
LOCAL_URL = f"http://127.0.0.1:{DEFAULT_PORTS['entry']}"

UrlOpt = Annotated[str | None, typer.Option(
    "--url", envvar="RADLOOP_URL", show_default=False,
    help=f"Entry point of a deployment (default: the local platform's, as `radloop up` recorded it, else "
         f"RADLOOP_PORT_ENTRY, else {LOCAL_URL}).")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", envvar="RADLOOP_TOKEN", show_default=False,
    help="Bearer token (default: RADLOOP_TOKEN, else a token minted locally when environment=local).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for each HTTP request.")]


class OpsError(Exception):
    """A failure the operator can act on: ``str(exc)`` is the sentence printed, ``code`` the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(exc: OpsError) -> typer.Exit:
    """Print the sentence of ``exc`` on stderr and return the Exit to raise."""
    err.print(f"[red]error:[/] {exc}")
    return typer.Exit(exc.code)


def local_settings() -> Settings | None:
    """The settings from the environment, or None when they do not load (no RADLOOP_ENVIRONMENT, say)."""
    try:
        return Settings()  # type: ignore[call-arg]
    except ValueError:
        return None


def settings_problem() -> str:
    """Why the settings do not load, in a sentence per setting ("" when they do)."""
    try:
        Settings()  # type: ignore[call-arg]
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):
            return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or 'settings'}: {e.get('msg')}"
                             for e in errors())[:600]
        return str(exc)[:600]
    return ""


def local_url() -> str:
    """The local platform's entry point: the port the running ``radloop up`` recorded (``var/run/state.json``), else
    ``RADLOOP_PORT_ENTRY`` (what ``radloop up`` would take), else 8080. The commands used 8080 whatever the platform
    was started on, and so could act on another deployment that held it (found by a review)."""
    s = local_settings()
    if s is not None:
        try:
            from radloop.local.platform import read_state
        except ImportError:  # the CLI alone (no `local` extra): no local platform to find
            read_state = None  # type: ignore[assignment]
        port = ((read_state(s.var_dir) or {}).get("ports") or {}).get("entry") if read_state else None
        if isinstance(port, int) and 0 < port < 65536:
            return f"http://127.0.0.1:{port}"
    raw = os.environ.get("RADLOOP_PORT_ENTRY", "")
    if raw.isascii() and raw.isdigit() and 0 < int(raw) < 65536:
        return f"http://127.0.0.1:{int(raw)}"
    return LOCAL_URL


def resolve_url(url: str | None) -> str:
    """The base URL to talk to, checked: scheme http(s) and a host, no trailing slash."""
    base = (url or local_url()).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OpsError(f"--url {base!r} is not an http:// or https:// URL with a host "
                       "(for example http://127.0.0.1:8080)", 2)
    return base


def resolve_token(token: str | None, role: str = "admin") -> str:
    """``--token`` / RADLOOP_TOKEN, else a token minted with the local development key (environment=local only)."""
    if token:
        return token
    s = local_settings()
    if s is None or s.environment != "local":
        raise OpsError("no token: pass --token or set RADLOOP_TOKEN (tokens are minted automatically only when "
                       "RADLOOP_ENVIRONMENT=local)", 2)
    try:
        from shared.auth import mint_token
    except ImportError as exc:  # `pip install radloop` alone: the CLI talks to deployments with their tokens
        raise OpsError(f"cannot mint a local token on this install ({exc}): pass --token or set RADLOOP_TOKEN, or "
                       "install radloop with its service extra (`pip install radloop[service]`)", 2) from None
    return mint_token(s, role, subject="radloop-cli", ttl_s=600)


def response_detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300].strip() or r.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        d = body["detail"]
        if isinstance(d, list):  # FastAPI's validation errors: field and message of each
            return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:])}: {e.get('msg')}" for e in d
                             if isinstance(e, dict)) or json.dumps(d)
        return str(d)
    return json.dumps(body)[:300]


class Api:
    """A deployment's entry point with a bearer token; every method returns parsed JSON or raises :class:`OpsError`."""

    def __init__(self, url: str | None, token: str | None, *, timeout_s: float = 30.0, role: str = "admin") -> None:
        self.base = resolve_url(url)
        self.token = resolve_token(token, role)
        self.http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {self.token}"})

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send one request; transport errors and non-2xx answers become :class:`OpsError`."""
        url = self.base + path
        try:
            r = self.http.request(method, url, **kw)
        except httpx.TimeoutException:
            raise OpsError(f"{method} {url} timed out; is the deployment overloaded or the URL wrong?") from None
        except httpx.HTTPError as exc:
            raise OpsError(f"cannot reach {self.base} ({type(exc).__name__}: {exc}); is radloop running there "
                           "(`radloop up`), and is --url right?") from None
        if r.status_code < 400:
            return r
        detail = response_detail(r)
        if r.status_code == 401:
            raise OpsError(f"{self.base} refused the token (401: {detail}); check --token/RADLOOP_TOKEN and that "
                           "the deployment's issuer, audience and JWKS match your identity provider "
                           "(docs/troubleshooting.md)")
        if r.status_code == 403:
            raise OpsError(f"the token's roles do not allow {method} {path} (403: {detail})")
        if r.status_code >= 500:
            raise OpsError(f"{method} {path} failed on the server ({r.status_code}: {detail})")
        raise OpsError(f"{method} {path}: {detail} ({r.status_code})", 2)

    def get(self, path: str, **kw: Any) -> Any:
        return self._json(self.request("GET", path, **kw), "GET", path)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        r = self.request("POST", path, json=body, **kw)
        return self._json(r, "POST", path) if r.content else None

    def _json(self, r: httpx.Response, method: str, path: str) -> Any:
        """The answer's JSON; a sentence, not a traceback, when a 2xx is not JSON (a --url that is not radloop's
        entry point; found by a review)."""
        try:
            return r.json()
        except ValueError:
            raise OpsError(f"{method} {self.base}{path} answered {r.status_code} with no JSON "
                           f"({r.headers.get('content-type') or 'no content type'}); is --url radloop's entry point?"
                           ) from None


def print_json(data: Any) -> None:
    """JSON on stdout and nothing else, so ``--json`` output pipes into jq."""
    print(json.dumps(data, indent=2, default=str))


def run(action: Callable[[], None]) -> None:
    """Run a command body, turning :class:`OpsError` into its sentence and exit code."""
    try:
        action()
    except OpsError as exc:
        raise fail(exc) from None



def show_get(url: str | None, token: str | None, path: str, as_json: bool, render: Callable[[Any], None]) -> None:
    """GET ``path`` from the deployment and print it as JSON (``--json``) or with ``render``; errors as ``run`` does."""

    def go() -> None:
        with Api(url, token) as api:
            data = api.get(path)
        if as_json:
            print_json(data)
        else:
            render(data)

    run(go)


T = TypeVar("T")
EndpointOpt = Annotated[str | None, typer.Option(
    "--url", envvar="AWS_ENDPOINT_URL", show_default=False,
    help="The AWS endpoint (default: AWS_ENDPOINT_URL, else the embedded one `radloop up` started, else AWS).")]


def with_clients(endpoint: str | None, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(AwsClients)`` against the deployment's AWS (``what`` names the service in errors): the commands that
    talk to AWS directly, like ``radloop status``: the embedded endpoint locally, AWS otherwise."""
    from shared.aws import AwsClients

    s = local_settings()
    if s is None:
        raise OpsError(f"the settings do not load ({settings_problem()}): set RADLOOP_ENVIRONMENT (and "
                       "RADLOOP_PREFIX for a deployment, and in AWS the auth settings: docs/config.md)", 2)
    if not endpoint:
        try:
            from radloop.local.platform import read_state

            endpoint = s.aws_endpoint_url or str((read_state(s.var_dir) or {}).get("endpoint") or "")
        except ImportError:  # the CLI without the `local` extra talks to AWS
            endpoint = s.aws_endpoint_url
    settings = s.model_copy(update={"aws_endpoint_url": endpoint or ""})

    async def go() -> T:
        async with AwsClients(settings) as clients:
            return await fn(clients)

    try:
        return asyncio.run(go())
    except ValueError as exc:  # e.g. an unknown queue name
        raise OpsError(str(exc), 2) from None
    except OpsError:
        raise
    except Exception as exc:  # botocore: endpoint down, a table or queue missing (the endpoint restarted), credentials
        raise OpsError(f"{what} at {endpoint or 'AWS'} failed: {type(exc).__name__}: {exc} (is the platform up? "
                       "see docs/troubleshooting.md)") from None
