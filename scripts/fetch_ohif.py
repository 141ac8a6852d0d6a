"""Fetch the OHIF viewer's published build (``@ohif/app`` on npm ships ``dist/``) into ``ohif/dist``.

``ohif/ohif.lock.json`` pins the package: name, version and the registry's sha512 integrity. ``npm pack`` downloads
the tarball through npm's own cache (so a second setup, or CI with a cached ``~/.npm``, does not download it again);
the tarball is checked against the lock's integrity before anything is extracted. Then:

- ``package/dist/`` becomes ``ohif/dist/`` (members outside ``package/dist/`` and links are skipped);
- ``index.html`` and webpack's public path in each runtime bundle are rebased from ``/`` to ``/ohif/`` (the build
  assumes it is served at the root);
- ``ohif/app-config.js`` (radloop's configuration) replaces the build's ``app-config.js``.

Run by ``make ohif`` (part of ``make setup``) only when the lock, the configuration or this script changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OHIF = ROOT / "ohif"
BASE = "/ohif/"
WEBPACK_PUBLIC_PATH = '__webpack_require__.p = "/"'


def rebase_index(html: str, base: str = BASE) -> str:
    """Point the build's absolute URLs (``/...``) and its PUBLIC_URL at ``base``."""
    out = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{base}"')
    for attr in ("href", "src"):
        out = out.replace(f'{attr}="/', f'{attr}="{base}').replace(f'{attr}="{base}/', f'{attr}="/')
    return out


def main() -> int:
    lock = json.loads((OHIF / "ohif.lock.json").read_text())
    algo, _, want = lock["integrity"].partition("-")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"{lock['name']}@{lock['version']}", "--pack-destination", tmp, "--silent"],
                       check=True, timeout=900)
        tgz = next(Path(tmp).glob("*.tgz"))
        got = base64.b64encode(hashlib.new(algo, tgz.read_bytes()).digest()).decode()
        if got != want:
            print(f"{tgz.name}: {algo} is {got}, but ohif/ohif.lock.json pins {want}", file=sys.stderr)
            return 1
        dist = OHIF / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        with tarfile.open(tgz) as tar:
            for m in tar.getmembers():
                if not m.name.startswith("package/dist/") or not (m.isfile() or m.isdir()) or ".." in m.name:
                    continue
                rel = m.name[len("package/dist/"):]
                target = dist / rel
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                target.write_bytes(src.read())
    index = dist / "index.html"
    index.write_text(rebase_index(index.read_text()))
    # webpack's public path (where chunks, workers and WASM load from) is compiled in as "/" in each runtime.
    for css in dist.glob("*.css"):  # fonts and images referenced as url(/...)
        css.write_text(css.read_text(encoding="utf-8").replace("url(/", f"url({BASE}"), encoding="utf-8")
    for js in dist.glob("*.js"):
        text = js.read_text(encoding="utf-8", errors="surrogateescape")
        if WEBPACK_PUBLIC_PATH in text:
            js.write_text(text.replace(WEBPACK_PUBLIC_PATH, f'__webpack_require__.p = "{BASE}"'),
                          encoding="utf-8", errors="surrogateescape")
    shutil.copyfile(OHIF / "app-config.js", dist / "app-config.js")
    (dist / ".fetch-stamp").write_text(f"{lock['name']}@{lock['version']}\n")
    print(f"OHIF {lock['version']} in {dist}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
