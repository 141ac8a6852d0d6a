"""docs/api.md is generated from the services' OpenAPI schemas; it must not be stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current() -> None:
    r = subprocess.run([sys.executable, "scripts/gen_api_docs.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr or r.stdout


def test_every_route_names_its_roles_and_errors() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import gen_api_docs

    text = gen_api_docs.render()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`/" in line]
    assert len(rows) > 40
    for row in rows:
        method, path, summary, roles, errors = (c.strip() for c in row[2:-2].split(" | "))
        assert summary.strip(), f"{path} has no summary"
        if "healthz" not in path and "readyz" not in path and "/viewer" not in path:
            assert roles.strip() != "public", f"{method} {path} is not protected"
            assert "401" in errors and "403" in errors, f"{method} {path} does not list its auth errors"
