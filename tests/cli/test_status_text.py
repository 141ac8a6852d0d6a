"""``radloop status`` (text) says what ``--json`` says about the embedded AWS endpoint's data (``aws_state``).

The embedded endpoint keeps everything in memory; after a restart every stored image, case and model is gone, and
``--json`` says so in ``aws_state.message``. The table output left it out, so an operator reading the text saw only
"down" services (or nothing wrong at all) and not why.

Real pieces: the session moto server with a bootstrapped deployment, a local platform's ``state.json`` as
``radloop up`` writes it, and the real CLI. No service runs (their ports are free ones nothing listens on), so every
service reads "down"; that is not what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from radloop.cli import app
from radloop.local.embedded_aws import free_port
from shared.bootstrap import read_boot_id_sync
from shared.settings import DEFAULT_PORTS, Settings


def _status(settings: Settings, var: Path, boot_id: str | None, losses: list[dict[str, Any]]) -> tuple[int, str]:
    (var / "run").mkdir(parents=True, exist_ok=True)
    (var / "run" / "state.json").write_text(json.dumps({
        "endpoint": settings.aws_endpoint_url, "prefix": settings.prefix, "boot_id": boot_id,
        "ports": {name: free_port() for name in DEFAULT_PORTS if name != "aws"}, "pids": {}, "aws_data_lost": losses,
    }))
    env = {"RADLOOP_VAR_DIR": str(var), "RADLOOP_PREFIX": settings.prefix, "AWS_ENDPOINT_URL": "",
           "RADLOOP_AWS_ENDPOINT_URL": "", "RADLOOP_ENVIRONMENT": "local", "COLUMNS": "200"}
    r = CliRunner().invoke(app, ["status"], env=env)
    return r.exit_code, r.output


def test_text_status_prints_the_endpoint_data_message(deployment: Settings, tmp_path: Path) -> None:
    current = read_boot_id_sync(deployment)
    assert current
    # The endpoint still holds what was bootstrapped: said plainly (the services are down here, hence exit 1).
    code, out = _status(deployment, tmp_path / "intact", current, [])
    assert code == 1
    assert "the endpoint holds the data bootstrapped at start" in out, out
    assert "STORED DATA IS GONE" not in out
    # The boot marker differs from the one recorded at start: the endpoint restarted and its data is gone.
    code, out = _status(deployment, tmp_path / "restarted", "an-earlier-boot", [{"at": 1.0, "how": "marker gone"}])
    assert code == 1
    assert "STORED DATA IS GONE" in out, out
    assert "restarted since radloop started" in out, out
    assert "1 loss recorded since start" in out, out
