"""The operator's commands (``radloop models|runs|worklist|send|config|dlq|status --url``) against a real local
platform: the moto server, the services each command needs as real processes, and the entry proxy in front of them.

One platform per module (ingestion with its DIMSE SCP, verification, registry, orchestrator; no triage or gateway):
every command runs at least once with ``--json`` parsed, and the failures an operator meets (a malformed URL, an
unreachable deployment, a 401, an unknown version or run) end with a sentence and exit code 1 or 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from radloop.cli import app
from radloop.dlq import REASON_ATTR
from radloop.local.embedded_aws import EmbeddedAws, free_port
from radloop.ops.config import REDACTED
from radloop.smoke import generate_instance
from shared import topology
from shared.aws import AwsClients, boto3_client
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix
from tests.mlops.support import ServiceProcess, publish, wait_until
from tests.mlops.test_registry import produce_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingestion", "verification", "registry", "pipeline_orchestrator")


@dataclass
class Platform:
    settings: Settings
    entry: str
    dimse_port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def platform(moto: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    var = tmp_path_factory.mktemp("var")
    s = Settings(aws_endpoint_url=moto.endpoint, prefix=unique_prefix("cli"), var_dir=var, aws_max_attempts=2)

    async def boot() -> None:
        async with AwsClients(s) as c:
            await bootstrap_topology(c)

    asyncio.run(boot())
    dimse_port = free_port()
    procs = {name: ServiceProcess(name, s, var / f"{name}.log", port=free_port(),
                                  env_extra={"RADLOOP_DIMSE_PORT": str(dimse_port), "RADLOOP_INGEST_WORKERS": "1",
                                             "RADLOOP_CARD_BOOTSTRAP_RESAMPLES": "200"})
             for name in SERVICES}
    entry_port = free_port()
    penv = dict(os.environ, PYTHONPATH=str(ROOT), RADLOOP_PORT=str(entry_port),
                **{f"RADLOOP_PORT_{n.upper()}": str(p.port) for n, p in procs.items()})
    proxy = None
    try:
        with ThreadPoolExecutor(len(procs)) as pool:  # the services start at the same time
            list(pool.map(lambda p: p.start(90), procs.values()))
        log = (var / "entry.log").open("ab")
        proxy = subprocess.Popen([sys.executable, "-m", "radloop.local.proxy"], env=penv, cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)
        log.close()
        entry = f"http://127.0.0.1:{entry_port}"
        wait_until(lambda: _up(entry), 30, "the entry proxy")
        env = {"RADLOOP_ENVIRONMENT": "local", "RADLOOP_PREFIX": s.prefix, "RADLOOP_VAR_DIR": str(var),
               "AWS_ENDPOINT_URL": moto.endpoint, "RADLOOP_URL": entry, "RADLOOP_PORT_DIMSE": str(dimse_port),
               "RADLOOP_TOKEN": ""}
        yield Platform(s, entry, dimse_port, env)
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
        for p in procs.values():
            p.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def cli(p: Platform, *args: str, code: int | None = 0, **env: str) -> Any:
    """Run ``radloop ARGS`` in-process; check the exit code; return parsed JSON (with --json) or the output."""
    r = CliRunner().invoke(app, list(args), env={**p.env, **env}, catch_exceptions=False)
    out = r.stdout
    if code is not None:
        assert r.exit_code == code, f"radloop {' '.join(args)} exited {r.exit_code}:\n{out}\n{r.stderr}"
    if "--json" in args and r.exit_code in (0, 1) and out.strip().startswith(("{", "[")):
        return json.loads(out)
    return r


def test_send_via_stow_dimse_and_s3_then_worklist(platform: Platform, tmp_path: Path) -> None:
    files = []
    for i in range(4):
        f = tmp_path / f"cr{i}.dcm"
        f.write_bytes(generate_instance(32)[0])
        files.append(f)
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"not a DICOM file")

    # STOW-RS: two instances stored, the text file refused with the ingestion service's reason; exit 1.
    out = cli(platform, "send", str(files[0]), str(files[1]), str(junk), "--json", code=1)
    assert out["via"] == "stow" and out["stored"] == 2 and out["rejected"] == 1
    (reason, n), = out["rejected_by_reason"].items()
    assert n == 1 and reason.startswith(("0x", "HTTP 4")), reason
    # Sending one again is fine (the same SOP instance, same content).
    assert cli(platform, "send", str(files[0]), "--json")["stored"] == 1

    out = cli(platform, "send", "--via", "dimse", str(files[2]), "--json")
    assert out["stored"] == 1 and out["rejected"] == 0
    # Two files of one name in two folders are two objects (the second overwrote the first before: a review).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.dcm").write_bytes(files[3].read_bytes())
    (tmp_path / "b" / "same.dcm").write_bytes(generate_instance(32)[0])
    s3 = boto3_client(platform.settings, "s3")
    bucket = platform.settings.topology.bucket("ingestion")
    out = cli(platform, "send", "--via", "s3", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert out["uploaded"] == 2

    # A table for people: the summary names the outcome.
    r = cli(platform, "send", str(files[1]))
    assert "stored" in r.stdout

    # Each stored instance becomes a verification case (InstanceStored): the worklist counts all five.
    def five() -> Any:
        w = cli(platform, "worklist", "--json")
        return w if w["total"] >= 5 else None

    w = wait_until(five, 60, "five cases on the worklist")
    assert w["total"] == 5 and w["complete"] is True
    assert sum(r["count"] for r in w["by_priority"].values()) == 5
    assert all(r["oldest_waiting_s"] is not None and r["oldest_waiting_s"] >= 0 for r in w["by_priority"].values())
    assert w["by_status"] == {"unread": 5}
    assert s3.list_objects_v2(Bucket=bucket, Prefix="imports/").get("KeyCount", 0) == 0  # both ingested
    r = cli(platform, "worklist")
    assert "oldest waiting" in r.stdout
    cli(platform, "worklist", "--status", "bogus", code=2)


def test_models_list_show_approve_rollback_reject(platform: Platform) -> None:
    s = platform.settings
    first = produce_run(s, auc=0.90, sensitivity=0.85)
    publish(s, [first], "radloop.pipeline_orchestrator")
    wait_until(lambda: cli(platform, "models", "list", "--json")["champion"] == 1, 40, "v1 to become champion")
    second = produce_run(s, auc=0.88, sensitivity=0.9)
    publish(s, [second], "radloop.pipeline_orchestrator")
    wait_until(lambda: len(cli(platform, "models", "list", "--json")["models"]) == 2, 40, "v2 to be registered")

    listed = cli(platform, "models", "list", "--json")
    assert listed["champion"] == 1
    assert {m["version"]: m["status"] for m in listed["models"]}[2] == "pending"
    shown = cli(platform, "models", "show", "2", "--json")
    assert shown["version"] == 2 and shown["run_id"] == second.run_id and shown["champion"] is False

    approved = cli(platform, "models", "approve", "2", "--reason", "reviewed the failure cases", "--json")
    assert approved["status"] == "approved" and approved["champion"] is True
    back = cli(platform, "models", "rollback", "1", "-r", "v2 misses small opacities", "--json")
    assert back["version"] == 1 and back["champion"] is True
    rejected = cli(platform, "models", "reject", "2", "-r", "withdrawn after review", "--json")
    assert rejected["status"] == "rejected"
    assert cli(platform, "models", "list", "--json")["champion"] == 1

    r = cli(platform, "models", "approve", "2", "-r", "try again", code=2)  # a rejected version: 409
    assert "rejected" in r.stderr and "409" in r.stderr
    r = cli(platform, "models", "show", "99", code=2)
    assert "404" in r.stderr
    r = cli(platform, "models", "approve", "1", "-r", "x", code=2)  # checked before any request
    assert "3 characters" in r.stderr
    text = cli(platform, "models", "list", COLUMNS="200").stdout
    assert "champion" in text and "specificity" in text
    # the registry's epoch seconds, as a time a person reads (UTC)
    assert re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ", text), text


def test_runs_list_show_trigger_logs(platform: Platform) -> None:
    d = cli(platform, "runs", "list", "--json")
    assert isinstance(d["runs"], list) and d["policy"]["min_new_labels"] >= 1
    # Nothing labelled yet: the orchestrator refuses (409) with its sentence; the CLI exits 2 and says it.
    r = cli(platform, "runs", "trigger", "--reason", "cli test", code=2)
    assert "labels" in r.stderr
    cli(platform, "runs", "trigger", "--param", "nokey", code=2)
    missing = "run-20260101-000000-abcdef"
    r = cli(platform, "runs", "show", missing, code=2)
    assert "does not exist" in r.stderr
    t0 = time.monotonic()
    r = cli(platform, "runs", "logs", missing, "--follow", "--timeout", "2", code=2)
    assert "does not exist" in r.stderr and time.monotonic() - t0 < 10
    assert "training runs" in cli(platform, "runs", "list").stdout


def test_dlq_list_show_redrive(platform: Platform) -> None:
    s = platform.settings
    sqs = boto3_client(s, "sqs")
    q = s.topology.queues["triage"]
    dlq_url = sqs.get_queue_url(QueueName=q.dlq_name)["QueueUrl"]
    body = json.dumps({"detail-type": "InstanceStored", "detail": {"event_id": "ev-cli-1"}})
    sqs.send_message(QueueUrl=dlq_url, MessageBody=body,
                     MessageAttributes={REASON_ATTR: {"DataType": "String", "StringValue": "handler raised ValueError"}})

    rows = cli(platform, "dlq", "list", "--json")
    assert {r["service"]: r["dlq_depth"] for r in rows}["triage"] == 1
    shown = cli(platform, "dlq", "show", "--queue", "triage", "--json")
    assert [(m["detail_type"], m["event_id"], m["reason"]) for m in shown] == [
        ("InstanceStored", "ev-cli-1", "handler raised ValueError")]
    assert "handler raised" in cli(platform, "dlq", "show").stdout  # show leaves the message where it is
    cli(platform, "dlq", "redrive", "--queue", "triage", "--message-id", "no-such-id", code=2)
    moved = cli(platform, "dlq", "redrive", "--queue", "triage", "--message-id", shown[0]["message_id"], "--json")
    assert moved["redriven"] == 1
    rows = {r["service"]: r for r in cli(platform, "dlq", "list", "--queue", "triage", "--json")}
    assert rows["triage"]["dlq_depth"] == 0
    # Back on triage's own queue (triage is not running here, so it waits there with the stored instances' events).
    src = sqs.get_queue_url(QueueName=q.name)["QueueUrl"]
    bodies = []
    for _ in range(20):  # bounded: the queue holds a handful of messages
        msgs = sqs.receive_message(QueueUrl=src, MaxNumberOfMessages=10, VisibilityTimeout=30).get("Messages", [])
        if not msgs:
            break
        bodies += [m["Body"] for m in msgs]
    assert body in bodies
    r = cli(platform, "dlq", "show", "--queue", "nope", code=2)
    assert "unknown queue" in r.stderr


def test_config_redacts_secrets(platform: Platform) -> None:
    eff = cli(platform, "config", "--json", RADLOOP_AUTH_SIGNING_KEY="s3cret-signing-key-for-the-test")
    assert set(eff) == set(topology.SERVICES)
    for values in eff.values():
        assert values["auth_signing_key"] == REDACTED and values["pseudonym_key"] == REDACTED
        assert values["prefix"] == platform.settings.prefix
    assert eff["ingestion"]["deid_key"] == REDACTED
    r = cli(platform, "config", "ingestion", RADLOOP_AUTH_SIGNING_KEY="s3cret-signing-key-for-the-test")
    assert "s3cret" not in r.stdout and "dimse_ae_title" in r.stdout
    assert list(cli(platform, "config", "registry", "--json")) == ["registry"]
    assert "unknown service" in cli(platform, "config", "nope", code=2).stderr
    # A secret inside a structured setting: an interop destination's authorization (printed in clear before: a
    # review), in the table and in --json.
    dests = json.dumps([{"name": "pacs", "kind": "stow", "url": "https://pacs.example/dicomweb",
                         "authorization": "Bearer SUPERSECRET123"}])
    eff = cli(platform, "config", "interop", "--json", RADLOOP_INTEROP_DESTINATIONS=dests)
    assert eff["interop"]["interop_destinations"][0]["authorization"] == REDACTED
    assert eff["interop"]["interop_destinations"][0]["url"] == "https://pacs.example/dicomweb"
    assert "SUPERSECRET" not in cli(platform, "config", "interop", RADLOOP_INTEROP_DESTINATIONS=dests).stdout
    # --aws-endpoint (not --url, which names a deployment's entry point everywhere else)
    eff = cli(platform, "config", "registry", "--json", "--aws-endpoint", "http://127.0.0.1:4599")
    assert eff["registry"]["aws_endpoint_url"] == "http://127.0.0.1:4599"


def test_status_url_and_clear_errors(platform: Platform) -> None:
    # The gateway is not part of this platform, so status --url reports it and exits 1; the others answer.
    st = cli(platform, "status", "--url", platform.entry, "--json", code=1)
    assert st["services"]["registry"]["healthy"] and st["services"]["entry"]["healthy"]
    assert not st["services"]["streaming_gateway"]["healthy"]
    # Ingestion (routed by POST /dicomweb) is probed too: it refuses a body that is not multipart itself (it was not
    # probed, and a dead ingestion looked healthy: a review).
    assert st["services"]["ingestion"]["healthy"] and st["services"]["ingestion"]["status"] in (403, 415), st

    r = cli(platform, "models", "list", "--url", "ftp://127.0.0.1", code=2)
    assert "is not an http:// or https:// URL" in r.stderr
    r = cli(platform, "models", "list", "--url", f"http://127.0.0.1:{free_port()}", code=1)
    assert "cannot reach" in r.stderr
    r = cli(platform, "runs", "list", "--token", "not-a-jwt", code=1)
    assert "401" in r.stderr and "refused the token" in r.stderr
    r = cli(platform, "worklist", code=2, RADLOOP_ENVIRONMENT="")  # no token and no local settings to mint one
    assert "RADLOOP_TOKEN" in r.stderr
    # A deployment whose ingestion is down answers STOW with 502: send says so (it blamed the token's roles, from a
    # read it made with the pacs token to find a sentence: a review).
    import http.server
    import threading

    class Down(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"detail": "service unavailable"}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        f = Path(platform.settings.var_dir) / "one.dcm"
        f.write_bytes(generate_instance(32)[0])
        r = cli(platform, "send", str(f), "--url", f"http://127.0.0.1:{server.server_address[1]}", code=1)
        assert "answered 502" in r.stderr and "service unavailable" in r.stderr and "role" not in r.stderr, r.stderr
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("args", [[], ["models"], ["models", "approve"], ["runs"], ["runs", "logs"], ["dlq"],
                                  ["dlq", "redrive"], ["send"], ["worklist"], ["config"], ["status"]])
def test_every_command_has_help_json_and_url(args: list[str]) -> None:
    r = CliRunner().invoke(app, [*args, "--help"], env={"RADLOOP_ENVIRONMENT": "local"})
    assert r.exit_code == 0, r.stdout
    if args and args[-1] not in ("models", "runs", "dlq"):
        # config reads this shell's settings: it names an AWS endpoint, not a deployment's entry point
        assert "--json" in r.stdout and ("--aws-endpoint" if args == ["config"] else "--url") in r.stdout, r.stdout
