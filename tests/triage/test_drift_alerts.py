"""Triage watches drift per site against the champion's training reference and says so on the bus.

Real parts: the moto server, a trained ResNet-18 whose ``config.json`` carries a drift reference built the way
``training/train.py`` builds it (model inputs of its training images, its probabilities), instances stored as HTJ2K,
scored through ``on_instance_stored``, and ``DriftDetected`` read from a queue subscribed on the bus.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.triage.service import Triage
from services.triage.settings import TriageSettings
from shared import drift
from shared import event_names as ev
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.preprocessing import params_from_dicom_json, preprocess
from shared.publisher import EventPublisher
from tests.support.triage_data import TRAIN_PARAMS, make_case, trained_model_tar, with_config
from tests.support.triage_verification_procs import capture_queue, captured, install_champion, store_instance
from training.model import load_model_dir
from training.train import predict_with_embeddings

pytestmark = pytest.mark.asyncio(loop_scope="session")

PER_SITE = 80
COHORT = 7  # not the training cohort (11): new patients from the same population


def _reference(model_tar: bytes, tmp: Path) -> dict:
    """What train.py writes: a reference from 200 training-like inputs and the model's probabilities and embeddings of
    them (train.py uses the validation split for the latter two)."""
    (tmp / "model.tar.gz").write_bytes(model_tar)
    module, _ = load_model_dir(tmp / "model.tar.gz")
    size = int(TRAIN_PARAMS["input_size"])
    cases = [make_case(1000 + i, COHORT, size=128) for i in range(200)]
    x = np.stack([preprocess(c.pixels, params_from_dicom_json(c.meta), size=size) for c in cases])
    p, emb = predict_with_embeddings(module, x, torch.device("cpu"))
    return drift.build_reference(x, p, emb)


async def test_a_site_whose_images_moved_raises_drift_and_the_others_do_not(clients: AwsClients,
                                                                            tmp_path: Path) -> None:
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.DRIFT_DETECTED], name="drift")
    model, _ = trained_model_tar()
    await install_champion(clients, with_config(model, drift_reference=_reference(model, tmp_path)), 1, 0.5)
    settings = TriageSettings(**{**clients.settings.model_dump(), "triage_drift_window": PER_SITE,
                                 "triage_drift_min_images": PER_SITE, "triage_drift_check_every": PER_SITE,
                                 "triage_drift_psi_alert": 0.6, "triage_rescore_max": 0,
                                 "triage_heatmaps": "none"})
    triage = Triage(clients, settings, EventPublisher(clients, "triage"))
    await triage.holder.ensure_loaded()
    triage.batcher.start()
    new_site = {"00080080": {"vr": "LO", "Value": ["CANARY GENERAL HOSPITAL"]},
                "00081090": {"vr": "LO", "Value": ["Acme DR 9000"]}}
    try:
        async def arrive(i: int, moved: bool) -> None:
            case = make_case(i, COHORT, size=128, uid_salt=f"drift-{moved}")
            pixels, meta = case.pixels, case.meta
            if moved:  # another scanner: half the signal under the same window, and its own header
                pixels, meta = (pixels // 2).astype(pixels.dtype), {**meta, **new_site}
            stored = await store_instance(clients, pixels, meta, case.study_uid, case.series_uid, case.sop_uid)
            assert (await triage.on_instance_stored(stored))["status"] == "scored"

        for moved in (False, True):
            for start in range(0, PER_SITE, 16):
                await asyncio.gather(*(arrive(i, moved) for i in range(start, min(start + 16, PER_SITE))))
        events = await captured(clients, qname, wait_s=3.0)
    finally:
        await triage.cancel_backlog()
        await triage.batcher.stop()

    key = clients.settings.pseudonym_key
    home = drift.site_key(make_case(0, COHORT, size=128).meta, key)
    moved_site = drift.site_key({**make_case(0, COHORT, size=128).meta, **new_site}, key)
    psi = triage.drift.latest
    assert {s for s, _, _ in psi} == {home, moved_site}, "one comparison per site at its 80th image"
    assert {f for s, _, f in psi if s == home} == set(drift.FEATURES + drift.EMBEDDING_FEATURES)
    assert max(v for (s, _, _), v in psi.items() if s == home) < 0.6, psi
    assert psi[(moved_site, "DX", "intensity_mean")] > 2.0, psi

    details = [e["detail"] for e in events]
    assert details, "no DriftDetected on the bus"
    assert {d["site"] for d in details} == {moved_site}
    assert "intensity_mean" in {d["feature"] for d in details}
    assert all(d["modality"] == "DX" and d["model_version"] == 1 and d["window_images"] == PER_SITE
               and d["threshold"] == 0.6 for d in details)
    assert "CANARY" not in json.dumps(events), "the site's name left in an event"
