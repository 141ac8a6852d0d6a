"""A triage re-run after a kill republishes the same ``InstanceScored``, not a second one (found by the chaos run,
docs/reliability.md "Chaos run").

The kill is between the publish and the consumer completing its idempotency record: the take-over run scores the
image again and publishes again. Here both runs are :meth:`Triage._record` with the same decision, each with its own
freshly made event (as each run makes one), against the real bus; a capture queue counts what consumers would get.
Before the fix the two publishes carried two random event ids: two effects for consumers, one image.
"""

from __future__ import annotations

from services.triage.service import Triage
from services.triage.settings import TriageSettings
from shared.aws import AwsClients
from shared.events import InstanceScored
from shared.publisher import EventPublisher
from tests.support.triage_verification_procs import capture_queue, captured


def _decision(sop: str, probability: float) -> InstanceScored:
    return InstanceScored(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid=sop, status="scored",
                          probability=probability, threshold=0.5, priority="routine", model_version=1)


async def test_a_rerun_after_a_kill_republishes_the_same_instance_scored(clients: AwsClients) -> None:
    q = await capture_queue(clients, ["InstanceScored"], name="scored-once")
    triage = Triage(clients, TriageSettings(**clients.settings.model_dump()), EventPublisher(clients, "triage"))
    first, rerun = _decision("1.2.3.4.5", 0.25), _decision("1.2.3.4.5", 0.25)
    assert first.event_id != rerun.event_id  # each run makes its own event object
    await triage._record(first)
    await triage._record(rerun)
    await triage._record(_decision("1.2.3.4.6", 0.25))  # another image: its own event
    got = await captured(clients, q, wait_s=3.0)
    ids = {e["detail"]["sop_uid"]: set() for e in got}
    for e in got:
        ids[e["detail"]["sop_uid"]].add(e["detail"]["event_id"])
    assert len(ids["1.2.3.4.5"]) == 1, f"two InstanceScored effects for one image: {ids['1.2.3.4.5']}"
    assert ids["1.2.3.4.5"] != ids["1.2.3.4.6"]
