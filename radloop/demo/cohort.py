"""The synthetic cohort of the demo: planned at once from the seed, rendered to DICOM files in the background.

Every case's label, patient and wave follow from (seed, index), so the waves are known before any image exists;
worker processes render them in the order they are sent, then the CT series, while the platform starts and the
earlier waves are sent and read.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path

from rich.console import Console

from radloop.demo.config import DemoConfig, DemoState
from radloop.demo.ui import progress_bar


class Cohort:
    """The cohort's plan (written into the demo's state) and the background rendering of its files."""

    def __init__(self, cfg: DemoConfig, state: DemoState, work: Path, console: Console) -> None:
        self.cfg = cfg
        self.state = state
        self.work = work
        self.console = console
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: list[list[Future[int]]] = []
        self._ct_job: Future[list[Path]] | None = None

    def plan(self) -> None:
        """Decide the cohort without rendering it: every case's label, patient and wave follow from (seed, index),
        so the waves are known at once and rendered in the order they are sent."""
        from training import synthetic

        c = self.cfg
        cohort_dir = self.work / "cohort"
        rows = []
        for i in range(c.radiographs):
            spec = synthetic.case_spec(i, c.seed, size=c.image_size, difficulty=c.difficulty, prevalence=c.prevalence,
                                       sites=c.sites)
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

    def start(self) -> None:
        """Plan the cohort, then render the waves (in the order they are sent) and then the CT series in worker
        processes, in the background: the platform starts, and earlier waves are sent and read, while later ones
        are rendered."""
        c = self.cfg
        self.plan()
        self._pool = ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1)))
        for wave in [*self.state.waves, self.state.final_wave]:
            indices = sorted(r["index"] for r in wave)
            self._jobs.append([
                self._pool.submit(_render_cases, self.work / "cohort", indices[i : i + 20], c.seed, c.image_size,
                                  c.difficulty, c.prevalence, c.sites) for i in range(0, len(indices), 20)])
        self._ct_job = self._pool.submit(_render_ct, self.work / "ct", c.seed, c.ct_slices, c.ct_size)

    def rendered(self, w: int, name: str) -> None:
        """Wait until wave ``w`` (``len(waves)``: the late arrivals) is on disk, with a progress bar."""
        jobs = self._jobs[w]
        pending = [j for j in jobs if not j.done()]
        total = len([*self.state.waves, self.state.final_wave][w])
        if not pending:
            return
        with progress_bar(self.console) as prog:
            t = prog.add_task(f"{name}: rendering radiographs", total=total,
                              completed=sum(j.result() for j in jobs if j not in pending))
            for fut in as_completed(pending):
                prog.advance(t, fut.result())

    def ct_files(self) -> list[Path]:
        """The CT series' files, once rendered (the last job: the render workers are then shut down)."""
        assert self._ct_job is not None and self._pool is not None, "start() first"
        files = self._ct_job.result()
        self._pool.shutdown()
        return files

    def shutdown(self) -> None:
        """Stop the render workers without waiting for what is left (the demo is ending)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _render_cases(cohort_dir: Path, indices: list[int], seed: int, size: int, difficulty: float,
                  prevalence: float, sites: int) -> int:
    """Write the radiographs of ``indices`` as ``{index:06d}.dcm`` (runs in a worker process); returns the count."""
    from training import synthetic

    cohort_dir.mkdir(parents=True, exist_ok=True)
    for i in indices:
        spec = synthetic.case_spec(i, seed, size=size, difficulty=difficulty, prevalence=prevalence, sites=sites)
        synthetic.to_dataset(synthetic.render(spec)).save_as(cohort_dir / f"{i:06d}.dcm", enforce_file_format=True)
    return len(indices)


def _render_ct(out: Path, seed: int, slices: int, size: int) -> list[Path]:
    """Write the CT series under ``out`` (runs in a worker process); returns its files in slice order."""
    from training import synthetic

    return synthetic.write_ct_series(out, seed=seed, slices=slices, size=size)

