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
"""

from __future__ import annotations

import json
import os
import platform as pyplatform
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from radloop.demo import pacs
from radloop.demo.report import write_report
from radloop.local.platform import LocalPlatform
from shared.auth import mint_token
from shared.aws import boto3_client
from shared.settings import Settings


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and how it drives the loop."""

    radiographs: int = 600
    image_size: int = 512
    ct_slices: int = 300
    ct_size: int = 512
    waves: int = 3
    #: labels read per round (a round follows each wave; by default the whole wave is read)
    reads_per_round: int = 180
    read_error_rate: float = 0.03
    double_read: bool = False
    seed: int = 7
    #: synthetic difficulty in [0, 1] (training.synthetic; 0.5 is its calibrated default, which needs far more
    #: labels and larger inputs than a 10-minute CPU demo can train: see docs/training.md)
    difficulty: float = 0.3
    prevalence: float = 0.3
    #: the registry's sensitivity floor for automatic approval (its policy file says 0.8; a test split of a few
    #: dozen images makes sensitivity coarse, so the demo asks for 0.7)
    sensitivity_floor: float = 0.7
    train_epochs: int = 15
    train_batch_size: int = 16
    train_image_size: int = 64
    #: resnet10 (one basic block per stage) trains about twice as fast as resnet18 on a CPU, as accurately at this size
    train_arch: str = "resnet10"
    #: torch threads of a training run (triage keeps one)
    train_threads: int = 2
    #: a round's reads, so each round triggers one run at its end (a run during a round slows the reading)
    trigger_min_new_labels: int = 180
    trigger_min_per_class: int = 20
    auc_floor: float = 0.6
    #: share of each wave sent over DIMSE and through the S3 drop folder (the rest goes by STOW-RS)
    dimse_share: float = 0.1
    s3_share: float = 0.1
    #: concurrent sends (STOW-RS batches of 8, the C-STORE association, the S3 drop), as a PACS pushes over a few
    senders: int = 3
    #: share of the cohort held back and sent after the last round, to show triage using the newest champion
    final_share: float = 0.1
    round_timeout_s: float = 420.0
    out_dir: Path = Path("demo-report")
    keep_running: bool = False

    @classmethod
    def quick(cls, **kw: Any) -> DemoConfig:
        """One turn of the loop on small data, in under three minutes: one wave, one round of reading, one training run
        on all of its labels, then the late arrivals scored by the new champion. (Two rounds on this cohort meant a
        first model trained on ~60 images, and a minute longer.) Easier cases, and floors of 0.5 for AUC (better than
        chance) and sensitivity: the test split holds 29 images, where the AUC's standard error is about 0.08; three
        runs gave 0.66, 0.71 and 0.71. The model is the last epoch's (``HParams.select``) and its threshold is
        split-conformal (``threshold_for_sensitivity``): picking the best epoch, and the threshold, on a 20-image
        validation split had made approval a lottery (AUC 0.44 to 0.89, sensitivity down to 0.45)."""
        base = dict(radiographs=240, image_size=128, ct_slices=40, ct_size=256, waves=1, reads_per_round=216,
                    train_epochs=30, train_batch_size=16, train_image_size=64, trigger_min_new_labels=200,
                    trigger_min_per_class=20,
                    round_timeout_s=300.0, difficulty=0.0, prevalence=0.5, sensitivity_floor=0.5, auc_floor=0.5)
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


@dataclass
class DemoState:
    truth: dict[str, int] = field(default_factory=dict)  # sop_uid -> observed label (0/1)
    patient_of: dict[str, str] = field(default_factory=dict)
    waves: list[list[dict[str, Any]]] = field(default_factory=list)
    final_wave: list[dict[str, Any]] = field(default_factory=list)
    ingest_ms: list[float] = field(default_factory=list)
    sent_by: dict[str, int] = field(default_factory=lambda: {"stow": 0, "dimse": 0, "s3": 0})
    reads: list[dict[str, Any]] = field(default_factory=list)
    read_times: list[float] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    ct_files: list[Path] = field(default_factory=list)
    ct_series: tuple[str, str] | None = None
    wave_of: dict[str, int] = field(default_factory=dict)
    wave_started: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: wall seconds per stage, in order (the report's "where the time went")
    stages: dict[str, float] = field(default_factory=dict)


class Demo:
    def __init__(self, config: DemoConfig, console: Console | None = None, work_dir: Path | None = None) -> None:
        self.cfg = config
        self.console = console or Console()
        self.settings = Settings()
        self.work = work_dir or (self.settings.var_dir / "demo")
        self.state = DemoState()
        self.platform: LocalPlatform | None = None
        self.http = httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0))
        self._lock = threading.Lock()  # the figures that the sender and reader threads append to

    # -- helpers -----------------------------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self.platform is not None
        return self.platform.entry_url

    def token(self, role: str, subject: str | None = None) -> str:
        return mint_token(self.settings, role, subject=subject)

    def get(self, path: str, role: str = "admin", **params: Any) -> Any:
        r = self.http.get(f"{self.base}{path}", params=params, headers={"Authorization": f"Bearer {self.token(role)}"})
        r.raise_for_status()
        return r.json()

    def _progress(self) -> Progress:
        return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=False)

    def _wait(self, what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            v = predicate()
            if v:
                return v
            time.sleep(interval_s)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.state.stages[name] = round(self.state.stages.get(name, 0.0) + time.perf_counter() - t0, 1)

    # -- stages ------------------------------------------------------------------------------------------------------
    def start_platform(self) -> None:
        c = self.cfg
        env = {
            "RADLOOP_TRIGGER_MIN_NEW_LABELS": str(c.trigger_min_new_labels),
            "RADLOOP_TRIGGER_MIN_PER_CLASS": str(c.trigger_min_per_class),
            "RADLOOP_TRIGGER_COOLDOWN_S": "0",
            "RADLOOP_TRAIN_EPOCHS": str(c.train_epochs),
            "RADLOOP_TRAIN_IMAGE_SIZE": str(c.train_image_size),
            "RADLOOP_TRAIN_BATCH_SIZE": str(c.train_batch_size),
            "RADLOOP_TRAIN_ARCH": c.train_arch,
            "RADLOOP_AUC_FLOOR": str(c.auc_floor),
            "RADLOOP_APPROVAL_AUC_FLOOR": str(c.auc_floor),
            "RADLOOP_APPROVAL_SENSITIVITY_FLOOR": str(c.sensitivity_floor),
            "RADLOOP_POLL_INTERVAL_S": "1",
            # training gets two threads (1.5x faster when the round is over and it has the machine to itself) and
            # triage one; OpenMP threads yield instead of spinning while they wait, as they would on a busy machine
            "RADLOOP_TORCH_THREADS": str(c.train_threads),
            "RADLOOP_TRIAGE_TORCH_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "RADLOOP_READ_MODE": "double" if c.double_read else "single",
            # generated by the demo in the background (see generate_definition) instead of at the first trigger
            "RADLOOP_PIPELINE_DEFINITION": str(self.definition_path.resolve()),
        }
        self.platform = LocalPlatform(settings=self.settings, extra_env=env)
        with self.console.status("starting the platform") as st:
            self.platform.start(progress=lambda m: st.update(m))
            st.update("waiting for every service to be ready")
            self.platform.wait_healthy(180)
        self.console.print(f"[green]platform up[/] at {self.platform.entry_url} (AWS {self.platform.endpoint})")

    @property
    def definition_path(self) -> Path:
        return self.work / "pipeline-definition.json"

    def start_definition(self) -> None:
        """Build the SageMaker pipeline definition in the background (the SDK takes about a minute to do it)."""
        import subprocess
        import sys

        assert self.platform is not None
        env = self.platform.child_env()
        tmp = self.definition_path.with_suffix(".tmp")
        self._definition_log = open(self.work / "pipeline-definition.log", "wb")  # noqa: SIM115
        self._definition_proc = subprocess.Popen(
            [sys.executable, "-m", "training.pipeline", "definition", "--out", str(tmp)], env=env,
            stdout=self._definition_log, stderr=subprocess.STDOUT)

    def finish_definition(self) -> None:
        proc = getattr(self, "_definition_proc", None)
        if proc is None or self.definition_path.exists():
            return
        with self.console.status("finishing the pipeline definition (SageMaker SDK)"):
            rc = proc.wait(600)
        self._definition_log.close()
        if rc != 0:
            raise RuntimeError(f"`python -m training.pipeline definition` failed (status {rc}); see "
                               f"{self.work / 'pipeline-definition.log'}")
        self.definition_path.with_suffix(".tmp").replace(self.definition_path)

    def plan(self) -> None:
        """Decide the cohort without rendering it: every case's label, patient and wave follow from (seed, index),
        so the waves are known at once and rendered in the order they are sent."""
        from training import synthetic

        c = self.cfg
        cohort_dir = self.work / "cohort"
        rows = []
        for i in range(c.radiographs):
            spec = synthetic.case_spec(i, c.seed, size=c.image_size, difficulty=c.difficulty, prevalence=c.prevalence)
            rows.append({"index": i, "file": cohort_dir / f"{i:06d}.dcm", "sop_uid": spec.sop_uid,
                         "label": spec.label, "patient": spec.patient_id})
            self.state.truth[spec.sop_uid] = int(spec.label)
            self.state.patient_of[spec.sop_uid] = str(spec.patient_id)
        rng = random.Random(c.seed)
        rng.shuffle(rows)
        n_final = int(len(rows) * c.final_share)
        self.state.final_wave, rows = rows[:n_final], rows[n_final:]
        size = -(-len(rows) // c.waves)
        self.state.waves = [rows[i : i + size] for i in range(0, len(rows), size)]
        for w, wave in enumerate(self.state.waves):
            for r in wave:
                self.state.wave_of[r["sop_uid"]] = w
        positives = sum(self.state.truth.values())
        self.console.print(f"cohort: {len(self.state.truth)} radiographs ({positives} with opacities) over "
                           f"{len(set(self.state.patient_of.values()))} patients in {len(self.state.waves)} waves "
                           f"(+{n_final} late arrivals), and a {c.ct_slices}-slice CT series")

    def start_generation(self) -> None:
        """Render the waves (in the order they are sent) and then the CT series in worker processes, in the
        background: the platform starts, and earlier waves are sent and read, while later ones are rendered."""
        from concurrent.futures import ProcessPoolExecutor

        c = self.cfg
        self.plan()
        self._gen_pool = ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1)))
        self._gen_jobs: list[list[Any]] = []
        for wave in [*self.state.waves, self.state.final_wave]:
            indices = sorted(r["index"] for r in wave)
            self._gen_jobs.append([
                self._gen_pool.submit(_render_cases, self.work / "cohort", indices[i : i + 20], c.seed, c.image_size,
                                      c.difficulty, c.prevalence) for i in range(0, len(indices), 20)])
        self._ct_job = self._gen_pool.submit(_render_ct, self.work / "ct", c.seed, c.ct_slices, c.ct_size)

    def rendered(self, w: int, name: str) -> None:
        """Wait until wave ``w`` (``len(waves)``: the late arrivals) is on disk, with a progress bar."""
        from concurrent.futures import as_completed

        jobs = self._gen_jobs[w]
        pending = [j for j in jobs if not j.done()]
        total = len([*self.state.waves, self.state.final_wave][w])
        if not pending:
            return
        with self._progress() as prog:
            t = prog.add_task(f"{name}: rendering radiographs", total=total,
                              completed=sum(j.result() for j in jobs if j not in pending))
            for fut in as_completed(pending):
                prog.advance(t, fut.result())

    def send_wave(self, w: int) -> None:
        self.rendered(w, f"wave {w + 1}")
        self.send_batch(self.state.waves[w], f"wave {w + 1}")

    def send_batch(self, wave: list[dict[str, Any]], name: str) -> None:
        """Send radiographs the three ways and wait until every one is on the worklist."""
        c = self.cfg
        assert self.platform is not None
        n_dimse = int(len(wave) * c.dimse_share)
        n_s3 = int(len(wave) * c.s3_share)
        dimse = [r["file"] for r in wave[:n_dimse]]
        s3 = [r["file"] for r in wave[n_dimse : n_dimse + n_s3]]
        stow = [r["file"] for r in wave[n_dimse + n_s3 :]]
        self.state.wave_started.append(time.time())
        with self._progress() as prog, ThreadPoolExecutor(self.cfg.senders) as pool:
            t = prog.add_task(f"{name}: sending {len(wave)} radiographs (STOW-RS, C-STORE, S3)", total=len(wave))
            token = self.token("pacs", "demo-pacs")

            def stow_batch(files: list[Path]) -> None:
                res = pacs.stow(self.http, f"{self.base}/dicomweb", token, files)
                with self._lock:
                    self.state.ingest_ms += [x["per_instance_ms"] for x in res for _ in range(x["count"])]
                prog.advance(t, len(files))

            def dimse_all() -> None:
                assert self.platform is not None
                pacs.c_store("127.0.0.1", self.platform.ports["dimse"], dimse)
                prog.advance(t, len(dimse))

            def s3_all() -> None:
                assert self.platform is not None
                s3c = boto3_client(self.settings.model_copy(update={"aws_endpoint_url": self.platform.endpoint}), "s3")
                pacs.drop_s3(s3c, self.settings.topology.bucket("ingestion"), s3,
                             prefix=f"imports/{name.replace(' ', '-')}/")
                prog.advance(t, len(s3))

            # a PACS sends over a few associations at once: STOW-RS batches, C-STORE and the S3 drop side by side
            jobs = [pool.submit(stow_batch, stow[i : i + 8]) for i in range(0, len(stow), 8)]
            jobs += [pool.submit(dimse_all)] if dimse else []
            jobs += [pool.submit(s3_all)] if s3 else []
            for job in jobs:
                job.result()  # the first failure propagates, as it did when sending one batch at a time
            self.state.sent_by["stow"] += len(stow)
            self.state.sent_by["dimse"] += len(dimse)
            self.state.sent_by["s3"] += len(s3)
        expected = {r["sop_uid"] for r in wave}
        self._wait(f"{name} to reach the worklist", lambda: expected <= self._worklist_ids(), 300, 2.0)

    def send_final(self) -> dict[str, int]:
        """The held-back radiographs arrive after the loop: triage must score them with the current champion."""
        batch = self.state.final_wave
        if not batch:
            return {}
        self.rendered(len(self.state.waves), "after the loop")
        self.send_batch(batch, "after the loop")
        expected = {r["sop_uid"] for r in batch}

        def scored() -> dict[str, int] | None:
            versions: dict[str, int] = {}
            for i in self._worklist():
                if i["sop_uid"] in expected:
                    ai = i.get("ai") or {}
                    if ai.get("status") == "pending":
                        return None
                    key = f"v{ai['model_version']}" if ai.get("model_version") else str(ai.get("status"))
                    versions[key] = versions.get(key, 0) + 1
            return versions

        with self.console.status("waiting for triage to score the late arrivals"):
            return self._wait("triage scores of the late arrivals", scored, 120, 1.0)

    def wait_scored(self, wave: list[dict[str, Any]], name: str) -> None:
        """Before a round, wait until the champion has scored the wave the radiologists will read: images that came
        before any model was approved are scored from triage's backlog when the first one is."""
        if self._champion() is None:
            return  # nothing can score them: the worklist stays in arrival order
        from services.triage.scoring import AWAITING_MODEL

        expected = {r["sop_uid"] for r in wave}

        def unscored(ai: dict[str, Any]) -> bool:  # not yet triaged, or in the backlog (not failed: that is final)
            return ai.get("status") == "pending" or (ai.get("status") == "unscored" and ai.get("reason") == AWAITING_MODEL)

        def waiting() -> int:
            return sum(1 for i in self._worklist() if i["sop_uid"] in expected and unscored(i.get("ai") or {}))

        with self.console.status(f"{name}: waiting for the champion to score it (triage's backlog)"):
            try:
                self._wait(f"triage to score {name}", lambda: waiting() == 0, 120, 1.0)
            except TimeoutError as exc:  # the round still runs, in arrival order for what is left
                self.state.errors.append(str(exc))

    def _worklist(self, **params: Any) -> list[dict[str, Any]]:
        """Every open case, in worklist order (following the cursor)."""
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            q = dict(params, limit=200)
            if cursor:
                q["cursor"] = cursor
            page = self.get("/verification/worklist", role="radiologist", **q)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items

    def _worklist_ids(self) -> set[str]:
        return {i.get("sop_uid") or i.get("case_id") for i in self._worklist()}

    def read_round(self, r: int) -> int:
        """Radiologists read the top of the worklist (AI order); returns how many reads were final."""
        c = self.cfg
        rng = random.Random(c.seed * 1000 + r)
        items = self._worklist()
        todo = [i for i in items if (i.get("sop_uid") or i.get("case_id")) in self.state.truth][: c.reads_per_round]
        readers = ["dr-ada", "dr-lister", "dr-curie"]
        labels: list[tuple[int, int]] = []  # (truth, the label read), drawn in worklist order: a seed gives one run
        for i in todo:
            truth = self.state.truth[i.get("sop_uid") or i["case_id"]]
            labels.append((truth, truth if rng.random() >= c.read_error_rate else 1 - truth))
        done = 0
        with self._progress() as prog:
            t = prog.add_task(f"round {r + 1}: {len(readers)} radiologists reading the worklist", total=len(todo))

            def read_case(k: int) -> None:
                nonlocal done
                item, (truth, label) = todo[k], labels[k]
                case = item.get("case_id") or item["sop_uid"]
                sop = item.get("sop_uid") or case
                for j in range(2 if c.double_read else 1):
                    reader = readers[(k + j) % len(readers)]  # a double read goes to two different readers
                    h = {"Authorization": f"Bearer {self.token('radiologist', reader)}"}
                    cl = self.http.post(f"{self.base}/verification/cases/{case}/claim", headers=h)
                    if cl.status_code not in (200, 201):
                        with self._lock:
                            self.state.errors.append(f"claim {case}: {cl.status_code} {cl.text[:120]}")
                        continue
                    body = {"label": "pneumonia" if label else "normal", "confidence": 0.9, "comment": "demo read"}
                    rr = self.http.post(f"{self.base}/verification/cases/{case}/reads", json=body,
                                        headers={**h, "Idempotency-Key": f"{case}-{reader}-{r}"})
                    if rr.status_code not in (200, 201, 202):
                        with self._lock:
                            self.state.errors.append(f"read {case}: {rr.status_code} {rr.text[:120]}")
                        continue
                ai = item.get("ai") or {}
                with self._lock:
                    self.state.reads.append({"sop_uid": sop, "label": label, "truth": truth, "round": r,
                                             "ai": ai.get("probability"), "model_version": ai.get("model_version")})
                    self.state.read_times.append(time.time())
                    done += 1
                prog.advance(t)

            # the readers work side by side, each taking the next case from the top of the worklist
            with ThreadPoolExecutor(len(readers)) as pool:
                for f in [pool.submit(read_case, k) for k in range(len(todo))]:
                    f.result()
        return done

    def wait_for_training(self, r: int, runs_before: int) -> dict[str, Any] | None:
        """Wait until a run triggered after round ``r`` completes and the registry has decided on it."""
        c = self.cfg

        def new_run_done() -> dict[str, Any] | None:
            runs = self._runs()
            if len(runs) <= runs_before:
                return None
            latest = max(runs, key=lambda x: x.get("created_at") or 0)
            if latest.get("status") in ("Succeeded", "Failed", "Stopped"):
                return latest
            return None

        with self.console.status(f"round {r + 1}: waiting for the orchestrator to retrain (no command sent)"):
            try:
                run = self._wait("a training run", new_run_done, c.round_timeout_s, 2.0)
            except TimeoutError as exc:
                self.state.errors.append(str(exc))
                return None
            if run.get("status") == "Succeeded":
                try:
                    model = self._wait("the registry's decision", lambda: next(
                        (m for m in self._models() if m.get("run_id") == run.get("run_id")), None), 120, 1.0)
                    if str(model.get("status") or model.get("approval_status")).lower() == "approved":
                        # the champion pointer follows the approval: wait for it, so the next wave uses it
                        self._wait("the new champion", lambda: (self._champion() or {}).get("version") ==
                                   model.get("version"), 60, 1.0)
                except TimeoutError as exc:
                    self.state.errors.append(str(exc))
        champ = self._champion()
        self.console.print(f"round {r + 1}: run {run.get('run_id')} {run.get('status')}; champion "
                           f"{'v' + str(champ.get('version')) if champ else 'none'}")
        return run

    def _runs(self) -> list[dict[str, Any]]:
        return self.get("/orchestrator/trainings", role="ml")["runs"]  # type: ignore[no-any-return]

    def _models(self) -> list[dict[str, Any]]:
        return self.get("/registry/models", role="ml")["models"]  # type: ignore[no-any-return]

    def _model(self, version: int) -> dict[str, Any]:
        return self.get(f"/registry/models/{version}", role="ml")  # type: ignore[no-any-return]

    def _champion(self) -> dict[str, Any] | None:
        r = self.http.get(f"{self.base}/registry/models/champion",
                          headers={"Authorization": f"Bearer {self.token('ml')}"})
        return r.json() if r.status_code == 200 else None

    def stream_ct(self) -> dict[str, Any]:
        """Send the CT series, then fetch it through the gateway as a viewer would."""
        token = self.token("pacs", "demo-pacs")
        if not self.state.ct_files:
            with self.console.status(f"finishing the {self.cfg.ct_slices}-slice CT series (rendered in the background)"):
                self.state.ct_files = self._ct_job.result()
            self._gen_pool.shutdown()
        files = self.state.ct_files
        with self._progress() as prog:
            t = prog.add_task("sending the CT series (STOW-RS)", total=len(files))
            for i in range(0, len(files), 16):
                pacs.stow(self.http, f"{self.base}/dicomweb", token, files[i : i + 16], batch=16)
                prog.advance(t, len(files[i : i + 16]))
        from pydicom import dcmread

        ds = dcmread(files[0], stop_before_pixels=True)
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        self.state.ct_series = (study, series)
        vt = self.token("viewer", "demo-viewer")
        h = {"Authorization": f"Bearer {vt}"}

        def count() -> int:
            r = self.http.get(f"{self.base}/dicomweb/studies/{study}/series/{series}/instances", headers=h)
            return len(r.json()) if r.status_code == 200 else 0

        self._wait("the CT series to be indexed", lambda: count() >= len(files), 240, 1.0)
        instances = self.http.get(f"{self.base}/dicomweb/studies/{study}/series/{series}/instances", headers=h).json()
        sops = sorted(instances, key=lambda d: int((d.get("00200013", {}).get("Value") or [0])[0]))
        sop_uids = [d["00080018"]["Value"][0] for d in sops]
        url = f"{self.base}/dicomweb/studies/{study}/series/{series}/instances/{{}}/frames/1"
        accept = {"Accept": 'multipart/related; type="image/jphc"'}
        mid = sop_uids[len(sop_uids) // 2]
        t0 = time.perf_counter()
        first = self.http.get(url.format(mid), params={"resolution": 0}, headers={**h, **accept})
        first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        total = 0

        def fetch(sop: str) -> int:
            r = self.http.get(url.format(sop), headers={**h, **accept})
            r.raise_for_status()
            return len(r.content)

        with ThreadPoolExecutor(8) as pool:
            total = sum(pool.map(fetch, sop_uids))
        full_ms = (time.perf_counter() - t0) * 1000
        return {"frames": len(sop_uids), "first_image_ms": round(first_ms, 1), "full_series_ms": round(full_ms, 1),
                "series_fps": round(len(sop_uids) / (full_ms / 1000), 1), "bytes_first_image": len(first.content),
                "bytes_total": total}

    # -- figures -----------------------------------------------------------------------------------------------------
    def collect(self, streaming: dict[str, Any], started: float) -> dict[str, Any]:
        assert self.platform is not None
        s = self.settings.model_copy(update={"aws_endpoint_url": self.platform.endpoint})
        models = self._models()
        runs = self._runs()
        champion = self._champion()
        ddb = boto3_client(s, "dynamodb")
        s3 = boto3_client(s, "s3")
        topo = s.topology

        scores = _scan(ddb, topo.table("scores"))
        index = [i for i in _scan(ddb, topo.table("instances")) if i.get("sk", "").startswith("INSTANCE#")]
        stored_at = {i["sop_uid"]: _ts(i.get("stored_at")) for i in index}
        stored_to_scored = [
            (_ts(sc.get("scored_at")) - stored_at[sc["sop_uid"]]) * 1000
            for sc in scores
            if sc.get("sop_uid") in stored_at and _ts(sc.get("scored_at")) and stored_at[sc["sop_uid"]]
        ]
        versions_used: dict[str, int] = {}
        for sc in scores:
            key = f"v{sc['model_version']}" if sc.get("model_version") not in (None, "") else sc.get("status", "?")
            versions_used[str(key)] = versions_used.get(str(key), 0) + 1

        model_rows, learning, decisions = [], [], []
        for summary in sorted(models, key=lambda x: int(x.get("version", 0))):
            m = self._model(int(summary["version"]))
            metrics = m.get("metrics") or {}
            lineage = m.get("lineage") or {}
            labels = lineage.get("label_count") or sum((lineage.get("label_counts") or {}).values()) or None
            ev = _evaluation(s3, m)
            row = {"version": m.get("version"), "status": m.get("status") or m.get("approval_status"),
                   "auc": metrics.get("auc"), "sensitivity": metrics.get("sensitivity"),
                   "specificity": metrics.get("specificity"), "labels": labels, "run_id": m.get("run_id"),
                   "parent": lineage.get("parent_version"),
                   "champion": bool(champion and champion.get("version") == m.get("version")),
                   "threshold": m.get("threshold", metrics.get("threshold")), "roc": ev.get("roc"),
                   "confusion_matrix": ev.get("confusion_matrix")}
            model_rows.append(row)
            if row["auc"] is not None and labels:
                learning.append({"version": row["version"], "labels": labels, "auc": row["auc"]})
            for h in m.get("history") or []:
                decisions.append({"version": m.get("version"), "decision": h.get("action"), "by": h.get("by"),
                                  "reason": h.get("reason"), "at": h.get("at")})
        run_rows = [{"run_id": r.get("run_id"), "status": r.get("status"), "trigger": r.get("trigger"),
                     "labels": r.get("label_count"), "duration_s": _duration(r),
                     "failure_reason": r.get("failure_reason")} for r in runs]
        verified_to_training = []
        for r in runs:
            st = _ts(r.get("created_at"))
            before = [t for t in self.state.read_times if st and t <= st]
            if before:
                verified_to_training.append(st - max(before))

        storage = _storage(s3, topo.bucket("images"), index)
        journey = _journey(self.settings)
        heatmaps = _heatmaps(s3, topo.bucket("images"), scores)
        import torch

        approved = [m for m in model_rows if m["status"] in ("Approved", "approved")]
        later_scored_by_model = any(k.startswith("v") for k in versions_used)
        problems = list(self.state.errors)
        if not approved:
            problems.append("no model was approved")
        if not later_scored_by_model:
            problems.append("triage scored no instance with an approved model")
        loop_ok = not problems
        elapsed = time.time() - started
        read_acc = (sum(1 for x in self.state.reads if x["label"] == x["truth"]) / len(self.state.reads)
                    if self.state.reads else None)
        return {
            "problems": problems,
            "summary": {
                "loop_succeeded": loop_ok,
                "headline": (f"The loop ran by itself: {len(runs)} training run(s), {len(approved)} model(s) approved; "
                             f"champion v{champion.get('version') if champion else '–'}." if loop_ok else
                             "The loop did not complete: " + "; ".join(problems[:4])),
                "kpis": {"radiographs": len(self.state.truth), "verified labels": len(self.state.reads),
                         "training runs": len(runs), "models approved": len(approved),
                         "first image (ms)": streaming.get("first_image_ms"),
                         "HTJ2K saving (%)": storage.get("saving_pct"), "wall time (s)": round(elapsed, 1)},
            },
            "counts": {"radiographs": len(self.state.truth), "ct_slices": len(self.state.ct_files),
                       "sent_by": self.state.sent_by, "indexed_instances": len(index), "scores": len(scores),
                       "scored_by": versions_used, "reads": len(self.state.reads), "runs": len(runs),
                       "models": len(models), "reader_accuracy": read_acc},
            "models": model_rows,
            "learning_curve": learning,
            "decisions": decisions,
            "runs": run_rows,
            "champion": champion,
            "latency": {"ingest_ms": self.state.ingest_ms, "stored_to_scored_ms": stored_to_scored,
                        "verified_to_training_s": verified_to_training},
            "streaming": streaming,
            "storage": storage,
            "journey": journey,
            "heatmaps": heatmaps,
            "errors": self.state.errors,
            "stages": dict(self.state.stages),
            "environment": {"python": pyplatform.python_version(), "torch": torch.__version__,
                            "machine": pyplatform.machine(), "cpus": os.cpu_count(), "os": pyplatform.platform(),
                            "seed": self.cfg.seed, "config": json.dumps({k: str(v) for k, v in
                                                                         self.cfg.__dict__.items()})},
        }

    def final_status(self) -> dict[str, Any]:
        """Health of every service and DLQ depths at the end (what `radloop status` shows)."""
        from radloop.cli import collect_status

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
        started = time.time()
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self.start_generation()
            with self._stage("start the platform"):
                self.start_platform()
            self.start_definition()
            send = "render and send the waves (STOW-RS, C-STORE, S3) until on the worklist"
            n_waves = len(self.state.waves)
            with self._stage(send):
                self.send_wave(0)
            for w in range(n_waves):
                with self._stage("wait for the pipeline definition (SageMaker SDK)"):
                    self.finish_definition()
                runs_before = len(self._runs())
                with self._stage("radiologists read"):
                    done = self.read_round(w)
                self.state.rounds.append({"round": w + 1, "reads": done})
                if w + 1 < n_waves:
                    with self._stage(send):  # the PACS does not wait for the model: the next wave arrives meanwhile
                        self.send_wave(w + 1)
                with self._stage("retrain, evaluate and decide (no command sent)"):
                    self.wait_for_training(w, runs_before)
                if w + 1 < n_waves:
                    with self._stage("champion scores the new wave"):
                        self.wait_scored(self.state.waves[w + 1], f"wave {w + 2}")
            with self._stage("late arrivals scored by the champion"):
                late = self.send_final()
            self.console.print(f"late arrivals scored by: {late}")
            with self._stage("send and stream the CT series"):
                streaming = self.stream_ct()
            final_status = self.final_status()
            figures = self.collect(streaming, started)
            figures["final_status"] = final_status
            path = write_report(self.cfg.out_dir, figures)
            ok = figures["summary"]["loop_succeeded"]
            self.console.print(("[green]" if ok else "[red]") + figures["summary"]["headline"] + "[/]")
            self.console.print(f"report: [bold]{path.resolve()}[/] (and report.json beside it)")
            if self.cfg.keep_running:
                self.console.print(f"platform left running at {self.base}; Ctrl-C stops it")
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
        steps: list[Callable[[], None]] = [self.http.close]
        pool = getattr(self, "_gen_pool", None)
        if pool is not None:
            steps.append(lambda: pool.shutdown(wait=False, cancel_futures=True))
        proc = getattr(self, "_definition_proc", None)
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


def _render_cases(cohort_dir: Path, indices: list[int], seed: int, size: int, difficulty: float,
                  prevalence: float) -> int:
    """Write the radiographs of ``indices`` as ``{index:06d}.dcm`` (runs in a worker process); returns the count."""
    from training import synthetic

    cohort_dir.mkdir(parents=True, exist_ok=True)
    for i in indices:
        spec = synthetic.case_spec(i, seed, size=size, difficulty=difficulty, prevalence=prevalence)
        synthetic.to_dataset(synthetic.render(spec)).save_as(cohort_dir / f"{i:06d}.dcm", enforce_file_format=True)
    return len(indices)


def _render_ct(out: Path, seed: int, slices: int, size: int) -> list[Path]:
    from training import synthetic

    return synthetic.write_ct_series(out, seed=seed, slices=slices, size=size)


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


def _scan(ddb: Any, table: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    kw: dict[str, Any] = {"TableName": table}
    for _ in range(10_000):
        resp = ddb.scan(**kw)
        out += [{k: _plain(v) for k, v in it.items()} for it in resp.get("Items", [])]
        if "LastEvaluatedKey" not in resp:
            break
        kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
    return out


def _plain(v: dict[str, Any]) -> Any:
    (t, x), = v.items()
    if t == "N":
        return float(x) if "." in x or "e" in x.lower() else int(x)
    if t in ("S", "BOOL"):
        return x
    if t == "L":
        return [_plain(i) for i in x]
    if t == "M":
        return {k: _plain(i) for k, i in x.items()}
    if t == "NULL":
        return None
    return x


def _ts(v: Any) -> float:
    if v in (None, ""):
        return 0.0
    if isinstance(v, (int, float)):
        return float(v)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _duration(r: dict[str, Any]) -> float | None:
    a, b = _ts(r.get("created_at")), _ts(r.get("ended_at"))
    return round(b - a, 1) if a and b else None


def _evaluation(s3: Any, model: dict[str, Any]) -> dict[str, Any]:
    uri = model.get("evaluation_uri") or (model.get("lineage") or {}).get("evaluation_uri")
    if not uri or not str(uri).startswith("s3://"):
        return {}
    bucket, key = str(uri)[5:].split("/", 1)
    try:
        ev = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception:
        return {}
    m = ev.get("binary_classification_metrics", {})
    out: dict[str, Any] = {}
    roc = m.get("receiver_operating_characteristic_curve") or ev.get("roc") or {}
    if roc.get("false_positive_rates") and roc.get("true_positive_rates"):
        out["roc"] = {"fpr": roc["false_positive_rates"], "tpr": roc["true_positive_rates"],
                      "auc": m.get("auc", {}).get("value")}
    cm = m.get("confusion_matrix")
    if isinstance(cm, dict):
        flat = {}
        for k in ("tp", "fp", "fn", "tn"):
            v = cm.get(k)
            flat[k] = v.get("value") if isinstance(v, dict) else v
        if any(flat.values()):
            out["confusion_matrix"] = flat
        elif "1" in cm and "0" in cm:
            out["confusion_matrix"] = {"tp": cm["1"].get("1"), "fn": cm["1"].get("0"), "fp": cm["0"].get("1"),
                                       "tn": cm["0"].get("0")}
    return out


def _storage(s3: Any, bucket: str, index: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = {"dicom/": 0, "frames/": 0}
    for prefix in sizes:
        token = None
        for _ in range(10_000):
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            resp = s3.list_objects_v2(**kw)
            sizes[prefix] += sum(o["Size"] for o in resp.get("Contents", []))
            token = resp.get("NextContinuationToken")
            if not token:
                break
    raw = sum(int(i.get("rows", 0)) * int(i.get("columns", 0)) * int(i.get("number_of_frames", 1)) *
              int(i.get("samples_per_pixel", 1)) * (int(i.get("bits_allocated", 16)) // 8) for i in index)
    frames = sum(int(i.get("number_of_frames", 1)) for i in index)
    ratio = raw / sizes["frames/"] if sizes["frames/"] else None
    return {"instances": len(index), "frames": frames, "raw_pixel_bytes": raw, "original_bytes": sizes["dicom/"],
            "htj2k_bytes": sizes["frames/"], "ratio": round(ratio, 2) if ratio else None,
            "saving_pct": round(100 * (1 - sizes["frames/"] / raw), 1) if raw and sizes["frames/"] else None}


def _journey(settings: Settings) -> dict[str, Any]:
    """The richest trace that starts with a STOW-RS request: one image's path through the services."""
    from radloop.cli import build_trace_trees, render_trace
    from shared.telemetry import read_local_spans

    spans = read_local_spans(settings.traces_dir)
    groups = build_trace_trees(spans)
    best = None
    for tid, g in groups.items():
        if any("studies" in s["name"] and "POST" in s["name"] for s in g):
            services = {s.get("service") for s in g}
            if best is None or len(services) > best[1]:
                best = (tid, len(services), g)
    if best is None:
        return {}
    tid, _, g = best
    console = Console(width=140, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_trace(g))
    return {"trace_id": tid, "spans": len(g), "services": sorted({str(s.get("service")) for s in g}),
            "tree_text": console.export_text()}


def _heatmaps(s3: Any, bucket: str, scores: list[dict[str, Any]], n: int = 4) -> list[dict[str, Any]]:
    import base64

    out = []
    for sc in sorted(scores, key=lambda x: -float(x.get("probability") or 0)):
        key = sc.get("heatmap_key")
        if not key:
            continue
        try:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception:
            continue
        out.append({"sop_uid": sc["sop_uid"], "probability": sc.get("probability"),
                    "model_version": sc.get("model_version"),
                    "data_uri": "data:image/png;base64," + base64.b64encode(data).decode()})
        if len(out) >= n:
            break
    return out
