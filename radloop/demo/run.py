"""``radloop demo``: the whole triage-and-learning loop on one machine, on generated data, with a report.

Stages (each shown with a progress bar):

1. start the platform (embedded AWS endpoint and every service);
2. a simulated PACS generates a synthetic cohort of chest radiographs over several patients (plus one CT series) and
   sends it in waves the three real ways: most by STOW-RS, some by DIMSE C-STORE, some through the S3 drop folder;
3. simulated radiologists read the AI-ordered worklist in rounds through the verification API, with radiologist tokens;
   their reads come from the generator's ground truth with a configurable error rate;
4. with no further command the orchestrator retrains as labels accumulate, the registry approves or holds, and triage
   switches to the new champion for the next wave;
5. the CT series is streamed through the gateway as a viewer would;
6. the report is written to ``demo-report/`` (HTML and JSON of the same figures).

The stages live in their own modules: :mod:`.config` (what is generated, what is recorded), :mod:`.cohort` (planning
and rendering), :mod:`.sending` (the PACS), :mod:`.reading` (the radiologists), :mod:`.learning` (watching the loop),
:mod:`.figures` and :mod:`.report` (the report). This module starts and stops the platform and runs the stages in
order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from radloop.demo.api import PlatformApi
from radloop.demo.cohort import Cohort
from radloop.demo.config import DemoConfig, DemoState
from radloop.demo.figures import collect_figures
from radloop.demo.learning import wait_for_training
from radloop.demo.reading import Radiologists
from radloop.demo.report import write_report
from radloop.demo.sending import Sender
from radloop.local.platform import LocalPlatform
from radloop.status import collect_status
from shared.approval import POLICY_FILE_ENV
from shared.settings import Settings

__all__ = ["Demo", "DemoConfig", "DemoState"]


class Demo:
    """The whole demo: the platform, the stages in order, the report, and everything it started stopped by PID."""

    def __init__(self, config: DemoConfig, console: Console | None = None, work_dir: Path | None = None) -> None:
        self.cfg = config
        self.console = console or Console()
        self.settings = Settings()
        self.work = work_dir or (self.settings.var_dir / "demo")
        self.state = DemoState()
        self.platform: LocalPlatform | None = None
        self.api = PlatformApi(self.settings)
        self.cohort = Cohort(self.cfg, self.state, self.work, self.console)
        self._lock = threading.Lock()  # the figures that the sender and reader threads append to
        self._definition_proc: subprocess.Popen[bytes] | None = None
        self._definition_log: IO[bytes] | None = None

    @property
    def base(self) -> str:
        """The entry proxy's URL (once the platform is up)."""
        assert self.platform is not None
        return self.platform.entry_url

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.state.stages[name] = round(self.state.stages.get(name, 0.0) + time.perf_counter() - t0, 1)

    # -- the platform ------------------------------------------------------------------------------------------------
    @property
    def approval_policy_path(self) -> Path:
        """Where the demo writes the approval policy its services read (the shipped one, unchanged; see
        :meth:`DemoConfig.approval_policy`), as a record of exactly what was applied."""
        return self.work / "approval-policy.json"

    def platform_env(self) -> dict[str, str]:
        """The environment of the services the demo starts; writes the demo's approval policy document it names."""
        c = self.cfg
        return {
            "RADLOOP_TRIGGER_MIN_NEW_LABELS": str(c.trigger_min_new_labels),
            "RADLOOP_TRIGGER_MIN_PER_CLASS": str(c.trigger_min_per_class),
            "RADLOOP_TRIGGER_COOLDOWN_S": "0",
            "RADLOOP_TRAIN_EPOCHS": str(c.train_epochs),
            "RADLOOP_TRAIN_IMAGE_SIZE": str(c.train_image_size),
            "RADLOOP_TRAIN_BATCH_SIZE": str(c.train_batch_size),
            "RADLOOP_TRAIN_ARCH": c.train_arch,
            # the shipped approval policy (a copy in the demo's work directory): the pipeline's quality gate, the
            # orchestrator and the registry all read that one file (shared/approval.py)
            POLICY_FILE_ENV: str(c.approval_policy().write(self.approval_policy_path).resolve()),
            "RADLOOP_POLL_INTERVAL_S": "1",
            # training gets two threads (1.5x faster when the round is over and it has the machine to itself) and
            # triage one; OpenMP threads yield instead of spinning while they wait, as they would on a busy machine
            "RADLOOP_TORCH_THREADS": str(c.train_threads),
            "RADLOOP_TRIAGE_TORCH_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "RADLOOP_VERIFICATION_READ_MODE": "double" if c.double_read else "single",
            # generated by the demo in the background (see start_definition) instead of at the first trigger
            "RADLOOP_PIPELINE_DEFINITION": str(self.definition_path.resolve()),
        }

    def start_platform(self) -> None:
        """Start the embedded AWS endpoint and every service, configured for the demo, and wait until all are ready."""
        self.platform = LocalPlatform(settings=self.settings, extra_env=self.platform_env())
        with self.console.status("starting the platform") as st:
            self.platform.start(progress=lambda m: st.update(m))
            st.update("waiting for every service to be ready")
            self.platform.wait_healthy(180)
        self.api.base = self.platform.entry_url
        self.console.print(f"[green]platform up[/] at {self.platform.entry_url} (AWS {self.platform.endpoint})")

    @property
    def definition_path(self) -> Path:
        """Where the pipeline definition is built; the orchestrator reads it (``RADLOOP_PIPELINE_DEFINITION``)."""
        return self.work / "pipeline-definition.json"

    def start_definition(self) -> None:
        """Build the SageMaker pipeline definition in the background (the SDK takes about a minute to do it)."""
        assert self.platform is not None
        env = self.platform.child_env()
        tmp = self.definition_path.with_suffix(".tmp")
        self._definition_log = open(self.work / "pipeline-definition.log", "wb")  # noqa: SIM115
        self._definition_proc = subprocess.Popen(
            [sys.executable, "-m", "training.pipeline", "definition", "--out", str(tmp)], env=env,
            stdout=self._definition_log, stderr=subprocess.STDOUT)

    def finish_definition(self) -> None:
        """Wait for the background definition build and move its output into place (a no-op once done)."""
        proc = self._definition_proc
        if proc is None or self.definition_path.exists():
            return
        with self.console.status("finishing the pipeline definition (SageMaker SDK)"):
            rc = proc.wait(600)
        if self._definition_log is not None:
            self._definition_log.close()
        if rc != 0:
            raise RuntimeError(f"`python -m training.pipeline definition` failed (status {rc}); see "
                               f"{self.work / 'pipeline-definition.log'}")
        self.definition_path.with_suffix(".tmp").replace(self.definition_path)


    def final_status(self) -> dict[str, Any]:
        """Health of every service and DLQ depths at the end (what `radloop status` shows)."""
        assert self.platform is not None
        st = collect_status(self.settings.model_copy(update={"aws_endpoint_url": self.platform.endpoint}))
        for name, svc in st["services"].items():
            if not svc["healthy"]:
                self.state.errors.append(f"{name} unhealthy at the end: {svc['detail']}")
        dead = {q: d["dlq"] for q, d in st["queues"].items() if d["dlq"]}
        if dead:
            self.state.errors.append(f"messages in DLQs: {dead}")
        return st

    # -- the whole thing ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run every stage and write the report; 0 when a model was approved and used for triage, else 1."""
        started = time.time()
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.cohort.start()
            with self._stage("start the platform"):
                self.start_platform()
            assert self.platform is not None
            sender = Sender(self.cfg, self.state, self.api, self.cohort, self.platform, self.console, self._lock)
            readers = Radiologists(self.cfg, self.state, self.api, self.console, self._lock)
            self.start_definition()
            send = "render and send the waves (STOW-RS, C-STORE, S3) until on the worklist"
            n_waves = len(self.state.waves)
            with self._stage(send):
                sender.send_wave(0)
            for w in range(n_waves):
                with self._stage("wait for the pipeline definition (SageMaker SDK)"):
                    self.finish_definition()
                runs_before = len(self.api.runs())
                with self._stage("radiologists read"):
                    done = readers.read_round(w)
                self.state.rounds.append({"round": w + 1, "reads": done})
                if w + 1 < n_waves:
                    with self._stage(send):  # the PACS does not wait for the model: the next wave arrives meanwhile
                        sender.send_wave(w + 1)
                with self._stage("retrain, evaluate and decide (no command sent)"):
                    wait_for_training(self.cfg, self.state, self.api, self.console, w, runs_before)
                if w + 1 < n_waves:
                    with self._stage("champion scores the new wave"):
                        sender.wait_scored(self.state.waves[w + 1], f"wave {w + 2}")
            with self._stage("late arrivals scored by the champion"):
                late = sender.send_final()
            self.console.print(f"late arrivals scored by: {late}")
            with self._stage("send and stream the CT series"):
                streaming = sender.stream_ct()
            final_status = self.final_status()
            figures = collect_figures(self.cfg, self.state, self.api, self.platform.endpoint, streaming, started)
            figures["final_status"] = final_status
            figures["workstation"] = workstation_links(self.base, kept_running=self.cfg.keep_running)
            path = write_report(self.cfg.out_dir, figures)
            ok = figures["summary"]["loop_succeeded"]
            self.console.print(("[green]" if ok else "[red]") + figures["summary"]["headline"] + "[/]")
            q = figures["quality_target"]
            if q.get("version") is not None:
                self.console.print(f"quality target on the locked set (AUC >= {q['target']['auc']}, sensitivity >= "
                                   f"{q['target']['sensitivity']}, specificity >= {q['target']['specificity']}): "
                                   f"v{q['version']} AUC {q['auc']:.3f}, sensitivity {q['sensitivity']:.3f}, "
                                   f"specificity {q['specificity']:.3f}: {q['reason']}")
            self.console.print(f"report: [bold]{path.resolve()}[/] (and report.json beside it)")
            if self.cfg.keep_running:
                self.console.print(f"platform left running at {self.base}; Ctrl-C stops it")
                links = figures["workstation"]
                self.console.print(f"radiologist's worklist: [bold]{links['worklist_url']}[/]  sign in (local "
                                   f"development sign-in, choose a role): [bold]{links['signin_url']}[/]")
                _block_until_interrupt()
            return 0 if ok else 1
        finally:
            try:
                self._stop_background()
            finally:  # whatever happened above (a second Ctrl-C, a broken pool), the platform is stopped by PID
                if self.platform is not None:
                    with self.console.status("stopping the platform"):
                        self.platform.stop()

    def _stop_background(self) -> None:
        """Close the HTTP client, the render workers and the definition builder; each step on its own."""
        steps: list[Callable[[], None]] = [self.api.close, self.cohort.shutdown]
        proc = self._definition_proc
        if proc is not None and proc.poll() is None:
            def kill_definition() -> None:
                proc.kill()
                proc.wait(10)

            steps.append(kill_definition)
        for step in steps:
            try:
                step()
            except Exception as exc:  # cleanup goes on: the platform must still be stopped
                self.console.print(f"[yellow]cleanup step failed:[/] {type(exc).__name__}: {exc}")


def workstation_links(base: str, *, kept_running: bool) -> dict[str, Any]:
    """The workstation's addresses for the console and the report. No token in either: the sign-in page mints one
    (locally) and keeps it in the tab's session storage, never in a URL."""
    worklist = f"{base}/viewer/worklist/"
    return {"worklist_url": worklist, "signin_url": f"{worklist}#/signin", "live": kept_running}


def _block_until_interrupt() -> None:
    """Wait for Ctrl-C or SIGTERM (``kill <pid>``, a service manager); either one returns, so the caller stops the
    platform by its PIDs instead of leaving it orphaned."""
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return
    finally:
        signal.signal(signal.SIGTERM, previous)

