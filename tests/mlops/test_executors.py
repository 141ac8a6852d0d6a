"""The local executor adapter's re-attachment rules, with real processes and status files (no AWS)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.pipeline_orchestrator.adapters.executors import DefinitionSource, LocalExecutor, process_alive
from services.pipeline_orchestrator.settings import OrchestratorSettings

pytestmark = pytest.mark.integration  # real child processes


def _executor(tmp_path: Path) -> LocalExecutor:
    s = OrchestratorSettings(var_dir=tmp_path, pipeline_definition=tmp_path / "definition.json")
    return LocalExecutor(s, DefinitionSource(s))


def _run(tmp_path: Path, run_id: str, pid: int, status: dict | None) -> dict:
    d = tmp_path / run_id
    d.mkdir()
    if status is not None:
        (d / "status.json").write_text(json.dumps(status))
    (d / "executor.log").write_text("step Train: loading shards\nKilled\n")
    return {"run_id": run_id, "pid": pid, "status_file": str(d / "status.json"), "log_file": str(d / "executor.log")}


def _wait_until_exec(proc: subprocess.Popen, run_id: str) -> None:
    """Until the child has exec'd, /proc/<pid>/cmdline is still the parent's (pytest's): poll, bounded, for the new
    program, so a test does not race the fork. (A loaded CI machine lost that race once.)"""
    deadline = time.monotonic() + 10
    while not process_alive(proc.pid, run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_alive(proc.pid, run_id), "the child never showed its command line"


def test_process_alive_checks_the_run_id_so_a_reused_pid_is_not_mistaken(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(30)", "run-x"])
    try:
        _wait_until_exec(proc, "run-x")
        assert not process_alive(proc.pid, "run-y")  # same pid, another command line
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid, "run-x")


def test_a_vanished_executor_without_a_final_status_is_failed_with_the_reason(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    ex = _executor(tmp_path)
    run = _run(tmp_path, "run-20260101-000000-aaaaaa", proc.pid,
               {"execution_id": "x", "status": "Executing", "steps": [{"name": "Train", "status": "Executing"}]})
    doc = asyncio.run(ex.poll(run))
    assert doc["status"] == "Failed"
    assert f"the local executor (pid {proc.pid}) is no longer running" in doc["failure_reason"]
    assert "Killed" in doc["failure_reason"]  # the log tail
    assert doc["steps"] == [{"name": "Train", "status": "Executing"}]


def test_a_final_status_file_is_used_even_when_the_process_is_gone(tmp_path: Path):
    final = {"execution_id": "x", "status": "Succeeded", "steps": [], "outputs": {"model_package_arn": "arn:x"}}
    run = _run(tmp_path, "run-20260101-000000-bbbbbb", 0, final)
    assert asyncio.run(_executor(tmp_path).poll(run)) == final


def test_a_live_executor_is_re_attached_through_its_status_file(tmp_path: Path):
    run_id = "run-20260101-000000-cccccc"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", run_id])
    try:
        _wait_until_exec(proc, run_id)
        status = {"execution_id": run_id, "status": "Executing", "steps": [{"name": "Preprocess"}]}
        run = _run(tmp_path, run_id, proc.pid, status)
        assert asyncio.run(_executor(tmp_path).poll(run)) == status
    finally:
        proc.kill()
        proc.wait()
