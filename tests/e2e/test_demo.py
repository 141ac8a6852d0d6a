"""End to end: `radloop demo --quick` runs the whole loop on a fresh embedded platform and writes its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from radloop.local.embedded_aws import free_port
from shared.settings import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]


def test_quick_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    env = dict(os.environ, RADLOOP_VAR_DIR=str(tmp_path / "var"), PYTHONPATH=str(ROOT), COLUMNS="120")
    env.pop("AWS_ENDPOINT_URL", None)
    for name in DEFAULT_PORTS:
        env[f"RADLOOP_PORT_{name.upper()}"] = str(free_port())
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "radloop.cli", "demo", "--quick", "--out", str(out)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted((tmp_path / "var" / "run").glob("*.log")))
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}\n{logs}"

    html = (out / "index.html").read_text()
    for section in ("models", "decisions", "latency", "streaming", "storage", "journey", "heatmaps", "environment"):
        assert f"id='{section}'" in html, f"report lacks the {section} section"
    fig = json.loads((out / "report.json").read_text())
    c = fig["counts"]
    # at least one model was trained, registered and approved
    assert any(m["status"] in ("Approved", "approved") for m in fig["models"])
    assert fig["champion"] and fig["champion"]["version"] >= 1
    # triage used an approved version for later instances
    assert any(k.startswith("v") for k in c["scored_by"]), c["scored_by"]
    # the figures are internally consistent
    assert sum(c["sent_by"].values()) == c["radiographs"]
    assert c["indexed_instances"] == c["radiographs"] + c["ct_slices"]
    assert sum(c["scored_by"].values()) == c["scores"]
    assert c["reads"] <= c["radiographs"]
    assert len(fig["models"]) == c["models"]
    assert fig["storage"]["htj2k_bytes"] > 0 and fig["storage"]["instances"] == c["indexed_instances"]
    assert fig["streaming"]["frames"] == c["ct_slices"]
    assert fig["journey"]["trace_id"] and len(fig["journey"]["services"]) >= 2
    # no message sits in any DLQ, and every service was healthy at the end
    assert all(q["dlq"] == 0 for q in fig["final_status"]["queues"].values()), fig["final_status"]["queues"]
    assert fig["final_status"]["healthy"], fig["final_status"]
    # where the time went: every stage timed, and the stages fit inside the wall time
    assert "start the platform" in fig["stages"] and "radiologists read" in fig["stages"]
    assert sum(fig["stages"].values()) <= fig["summary"]["kpis"]["wall time (s)"] + 1
