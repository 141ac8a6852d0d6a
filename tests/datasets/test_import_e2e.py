"""``radloop import-dataset`` end to end: each published layout imported into real services.

One platform per module: the moto server, ingestion and verification as real processes, the entry proxy in front of
them (as ``radloop up`` runs them). The command runs in-process (typer's runner) against the proxy with a locally
minted admin token. For each dataset: every image is stored by ingestion (its original object is in the images
bucket), every label is the case's final label with resolution ``imported``, labeller ``dataset:<source>`` and the
source on its rows, and exactly one ``ImageVerified`` per image reaches the bus. ChestX-ray14 also checks
``--limit``, the resume journal and a rerun without a journal (the server answers "already stored" / "unchanged").
No patient id or age of the datasets appears in the command's output or in the services' logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from radloop.cli import app
from radloop.datasets.wrap import uid_for
from radloop.local.embedded_aws import EmbeddedAws, free_port
from shared.auth import mint_token
from shared.aws import AwsClients, boto3_client
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from shared.storage import original_key
from tests.conftest import unique_prefix
from tests.datasets.layouts import CHEXPERT_ROWS, NIH_ROWS, RSNA_ROWS, make_chestxray14, make_chexpert, make_rsna
from tests.mlops.support import ServiceProcess, wait_until
from tests.support.triage_verification_procs import capture_queue, captured

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Platform:
    settings: Settings
    entry: str
    env: dict[str, str]
    capture: str
    logs: list[Path]

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, 'admin', subject='test-admin')}"}


@pytest.fixture(scope="module")
def platform(moto: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    var = tmp_path_factory.mktemp("var")
    s = Settings(aws_endpoint_url=moto.endpoint, prefix=unique_prefix("ds"), var_dir=var, aws_max_attempts=2)

    async def boot() -> str:
        async with AwsClients(s) as c:
            await bootstrap_topology(c)
            return await capture_queue(c, ["ImageVerified"])

    capture = asyncio.run(boot())
    procs = {name: ServiceProcess(name, s, var / f"{name}.log", port=free_port(),
                                  env_extra={"RADLOOP_INGEST_WORKERS": "1", "RADLOOP_DIMSE_PORT": "0"})
             for name in ("ingestion", "verification")}
    entry_port = free_port()
    proxy = None
    try:
        with ThreadPoolExecutor(len(procs)) as pool:  # the services start at the same time
            list(pool.map(lambda p: p.start(90), procs.values()))
        penv = dict(os.environ, PYTHONPATH=str(ROOT), RADLOOP_PORT=str(entry_port),
                    **{f"RADLOOP_PORT_{n.upper()}": str(p.port) for n, p in procs.items()})
        with (var / "entry.log").open("ab") as log:
            proxy = subprocess.Popen([sys.executable, "-m", "radloop.local.proxy"], env=penv, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT)
        entry = f"http://127.0.0.1:{entry_port}"
        wait_until(lambda: _up(entry), 30, "the entry proxy")
        env = {"RADLOOP_ENVIRONMENT": "local", "RADLOOP_PREFIX": s.prefix, "RADLOOP_VAR_DIR": str(var),
               "AWS_ENDPOINT_URL": moto.endpoint, "RADLOOP_URL": entry, "RADLOOP_TOKEN": ""}
        yield Platform(s, entry, env, capture, [p.log_path for p in procs.values()])
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


def import_dataset(p: Platform, *args: str, code: int = 0) -> tuple[dict[str, Any], str]:
    """Run ``radloop import-dataset ARGS --json`` in-process; check the exit code; return (summary, all output)."""
    r = CliRunner().invoke(app, ["import-dataset", *args, "--json", "--label-wait", "30"], env=p.env,
                           catch_exceptions=False)
    assert r.exit_code == code, f"exit {r.exit_code}:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout), r.stdout + r.stderr


def verified(p: Platform) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with AwsClients(p.settings) as c:
            return [e["detail"] for e in await captured(c, p.capture, wait_s=1.0)]

    return asyncio.run(go())


def check_cases(p: Platform, expected: dict[str, str], source: str) -> None:
    """Each SOP UID: stored (original object in the images bucket), final label = expected, imported from source."""
    s3, ddb = boto3_client(p.settings, "s3"), boto3_client(p.settings, "dynamodb")
    bucket = p.settings.topology.bucket("images")
    with httpx.Client(base_url=p.entry, headers=p.admin(), timeout=10) as http:
        for sop, label in expected.items():
            r = http.get(f"/verification/cases/{sop}")
            assert r.status_code == 200, r.text
            case = r.json()
            s3.head_object(Bucket=bucket, Key=original_key(case["study_uid"], case["series_uid"], sop))
            assert case["final_label"]["label"] == label and case["final_label"]["resolution"] == "imported"
            reads = [h for h in case["history"] if h["type"] == "read"]
            assert [h["reader"] for h in reads] == [f"dataset:{source}"]
            rows = ddb.query(TableName=p.settings.topology.table("labels"), KeyConditionExpression="case_id = :c",
                             ExpressionAttributeValues={":c": {"S": sop}})["Items"]
            assert {r["label_sk"]["S"].split("#")[0]: r["source"]["S"] for r in rows} == {"read": source,
                                                                                         "label": source}
    events = [e for e in verified(p) if e["sop_uid"] in expected]
    assert sorted(e["sop_uid"] for e in events) == sorted(expected), "exactly one ImageVerified per image"
    for e in events:
        assert (e["label"], e["resolution"], e["reader"]) == (expected[e["sop_uid"]], "imported", f"dataset:{source}")


def no_phi(p: Platform, output: str, values: list[str]) -> None:
    text = output + "".join(f.read_text(errors="replace") for f in p.logs if f.exists())
    leaked = [v for v in values if v in text]
    assert not leaked, f"dataset identifiers in the output or the service logs: {leaked}"


def test_rsna_pneumonia_dicom_imported_as_is(platform: Platform, tmp_path: Path) -> None:
    expected = make_rsna(tmp_path)
    out, text = import_dataset(platform, str(tmp_path), "--format", "rsna-pneumonia")
    assert (out["candidates"], out["stored"], out["labelled"], out["rejected"]) == (4, 4, 4, 0)
    assert out["labels"] == {"normal": 2, "pneumonia": 2} and out["excluded_by_policy"] == {"image file missing": 1}
    check_cases(platform, expected, "rsna-pneumonia")
    no_phi(platform, text, [r[0] for r in RSNA_ROWS])


def test_chestxray14_limit_resume_and_idempotent_rerun(platform: Platform, tmp_path: Path) -> None:
    data = tmp_path / "nih"
    data.mkdir()
    by_key = make_chestxray14(data)
    expected = {uid_for("chestxray14", "image", k): v for k, v in by_key.items()}
    journal = tmp_path / "journal.jsonl"

    out, text1 = import_dataset(platform, str(data), "--format", "chestxray14", "--limit", "2", "--journal",
                                str(journal))
    assert (out["attempted"], out["labelled"], out["already_imported"]) == (2, 2, 0)
    out, text2 = import_dataset(platform, str(data), "--format", "chestxray14", "--journal", str(journal))
    assert (out["attempted"], out["stored"], out["labelled"], out["already_imported"]) == (4, 4, 4, 2)
    assert out["labels"] == {"normal": 2, "pneumonia": 2}  # the first two (patient 1, other findings) were done
    check_cases(platform, expected, "chestxray14")
    out, _ = import_dataset(platform, str(data), "--format", "chestxray14", "--journal", str(journal))
    assert (out["attempted"], out["already_imported"]) == (0, 6)
    # Without the journal: the same bytes are "already stored", the same labels "unchanged"; no new ImageVerified.
    out, text3 = import_dataset(platform, str(data), "--format", "chestxray14", "--journal",
                                str(tmp_path / "fresh.jsonl"))
    assert (out["attempted"], out["stored"], out["unchanged"], out["labelled"]) == (6, 6, 6, 0)
    assert not [e for e in verified(platform) if e["sop_uid"] in expected]
    no_phi(platform, text1 + text2 + text3, [n for n, *_ in NIH_ROWS] + [f"{r[3]:08d}" for r in NIH_ROWS])


def test_chexpert_uncertain_ones_and_default_journal(platform: Platform, tmp_path: Path) -> None:
    by_key = make_chexpert(tmp_path)
    out, text = import_dataset(platform, str(tmp_path), "--format", "chexpert", "--uncertain", "ones")
    uncertain = "train/patient00002/study2/view1_frontal.jpg"
    expected_keys = {k: v for k, v in by_key.items() if v is not None} | {uncertain: "pneumonia"}
    assert (out["stored"], out["labelled"], out["rejected"]) == (7, 7, 0)
    assert out["excluded_by_policy"] == {"lateral view (--views frontal)": 1}
    check_cases(platform, {uid_for("chexpert", "image", k): v for k, v in expected_keys.items()}, "chexpert")
    # the default journal lives under RADLOOP_VAR_DIR/imports/ and makes a rerun a no-op
    assert list((Path(platform.env["RADLOOP_VAR_DIR"]) / "imports").glob("chexpert-*.jsonl"))
    out, _ = import_dataset(platform, str(tmp_path), "--format", "chexpert", "--uncertain", "ones")
    assert (out["attempted"], out["already_imported"]) == (0, 7)
    no_phi(platform, text, sorted({r[1] for r in CHEXPERT_ROWS}))
