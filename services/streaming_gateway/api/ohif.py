"""The OHIF viewer at /ohif (static, same origin as /dicomweb) and the CORS allow-list for viewers elsewhere.

OHIF is a single-page application: its routes (``/ohif/viewer?StudyInstanceUIDs=...``) are not files, so a path
that names no file under the build answers the build's ``index.html``, which then routes in the browser. The build
holds code only (no PHI); every data request it makes goes to /dicomweb with the bearer token. Without a build
(``make ohif`` not run, or an image built without it) every /ohif path answers 503 with a sentence saying so.

CORS is off unless ``cors_allow_origins`` lists origins (an OHIF deployed on another origin): then preflights from
those origins are answered for the DICOMweb read methods with the Authorization header allowed, and nothing else is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


class SinglePageApp(StaticFiles):
    """Static files with the SPA fallback: a missing file that is not an asset answers ``index.html``."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not (Path(str(self.directory)) / "index.html").is_file():
            return JSONResponse({"detail": "The OHIF viewer is not installed here: run `make ohif`."}, status_code=503)
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            # Assets (a name with an extension) stay 404, so a missing bundle is an error, not an HTML page.
            if exc.status_code != 404 or "." in Path(path).name:
                raise
            return await super().get_response("index.html", scope)


def mount_ohif(app: FastAPI, dist: Path) -> None:
    """Serve the OHIF build at /ohif (check_dir=False: ``make ohif`` may fetch it after the gateway started)."""
    app.mount("/ohif", SinglePageApp(directory=dist, html=True, check_dir=False), name="ohif")


def add_cors(app: FastAPI, origins: list[str]) -> None:
    """Allow the listed origins (exact matches, never ``*``, never credentials) to read the DICOMweb API."""
    if not origins:
        return
    for o in origins:  # a typo refuses to start instead of silently allowing nobody (or everybody)
        u = urlsplit(o)
        if u.scheme not in ("http", "https") or not u.netloc or u.path or u.query or u.fragment or "*" in o:
            raise ValueError(f"RADLOOP_CORS_ALLOW_ORIGINS entry {o!r} must be an exact origin: http(s)://host[:port]")
    kw: dict[str, Any] = {
        "allow_origins": origins,
        "allow_methods": ["GET", "HEAD", "OPTIONS"],
        "allow_headers": ["Authorization", "Accept", "Content-Type", "Range"],
        "expose_headers": ["Content-Type", "Content-Length", "Content-Range", "Warning", "ETag"],
        "allow_credentials": False,  # bearer tokens in headers, never cookies
        "max_age": 600,
    }
    app.add_middleware(CORSMiddleware, **kw)
