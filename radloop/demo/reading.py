"""The simulated radiologists: they read the AI-ordered worklist in rounds through the verification API, each with
their own token, and their reads come from the generator's ground truth with a configured error rate."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console

from radloop.demo.api import PlatformApi
from radloop.demo.config import DemoConfig, DemoState
from radloop.demo.ui import progress_bar


class Radiologists:
    """Three readers side by side, each taking the next case from the top of the worklist."""

    def __init__(self, cfg: DemoConfig, state: DemoState, api: PlatformApi, console: Console,
                 lock: threading.Lock) -> None:
        self.cfg = cfg
        self.state = state
        self.api = api
        self.console = console
        self._lock = lock  # the figures that the reader threads append to

    def read_round(self, r: int) -> int:
        """Radiologists read the top of the worklist (AI order); returns how many reads were final."""
        c = self.cfg
        rng = random.Random(c.seed * 1000 + r)
        items = self.api.worklist()
        todo = [i for i in items if (i.get("sop_uid") or i.get("case_id")) in self.state.truth][: c.reads_per_round]
        readers = ["dr-ada", "dr-lister", "dr-curie"]
        # (truth, the labels read), drawn in worklist order: a seed gives one run. Each reader errs on their own: in
        # double-read mode two reads, and a third (the adjudicator's) used only when the two disagree.
        labels: list[tuple[int, list[int]]] = []
        for i in todo:
            truth = self.state.truth[i.get("sop_uid") or i["case_id"]]
            drawn = [truth if rng.random() >= c.read_error_rate else 1 - truth for _ in range(3 if c.double_read else 1)]
            labels.append((truth, drawn if not c.double_read or drawn[0] != drawn[1] else drawn[:2]))
        done = 0
        with progress_bar(self.console) as prog:
            t = prog.add_task(f"round {r + 1}: {len(readers)} radiologists reading the worklist", total=len(todo))

            def read_case(k: int) -> None:
                nonlocal done
                item, (truth, reads) = todo[k], labels[k]
                label = reads[-1]  # the final label: the single read, the two agreeing reads or the adjudicator's
                case = item.get("case_id") or item["sop_uid"]
                sop = item.get("sop_uid") or case
                for j, read in enumerate(reads):
                    # a double read goes to two different readers, an adjudication to the third
                    reader = readers[(k + j) % len(readers)]
                    h = {"Authorization": f"Bearer {self.api.token('radiologist', reader)}"}
                    cl = self.api.http.post(f"{self.api.base}/verification/cases/{case}/claim", headers=h)
                    if cl.status_code not in (200, 201):
                        with self._lock:
                            self.state.errors.append(f"claim {case}: {cl.status_code} {cl.text[:120]}")
                        continue
                    body = {"label": "pneumonia" if read else "normal", "confidence": 0.9, "comment": "demo read"}
                    rr = self.api.http.post(f"{self.api.base}/verification/cases/{case}/reads", json=body,
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
