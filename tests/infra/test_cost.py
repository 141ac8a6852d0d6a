"""The cost model: data-driven, consistent with the stack's configuration, and rerunnable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import cost_model
from infra.radloop_infra.config import ENVIRONMENTS


def test_model_covers_both_environments_and_follows_the_stack_config() -> None:
    m = cost_model.model(measure=False)
    dev, prod = m["environments"]["dev"], m["environments"]["prod"]
    assert 0 < dev["total_per_month"] < prod["total_per_month"]
    assert abs(sum(dev["lines"].values()) - dev["total_per_month"]) < 0.05
    # prod stores ten times the images of dev (100 vs 10 studies a month)
    assert prod["storage"]["images_stored"] == 10 * dev["storage"]["images_stored"]
    s = prod["storage"]
    assert s["frames_storage_saving_percent"] == pytest.approx(100 * (1 - 1 / s["htj2k_ratio"]), abs=0.1)
    assert s["total_storage_saving_percent_with_originals"] < s["frames_storage_saving_percent"]
    assert ENVIRONMENTS["dev"].spot_workers and not ENVIRONMENTS["prod"].spot_workers


def test_endpoint_count_matches_the_stack() -> None:
    pytest.importorskip("aws_cdk")
    from infra.radloop_infra.security import INTERFACE_ENDPOINTS

    assert len(INTERFACE_ENDPOINTS) == cost_model.INTERFACE_ENDPOINT_COUNT


def test_prices_are_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pricing = json.loads(cost_model.PRICING.read_text())
    base = cost_model.model()["environments"]["prod"]
    pricing["interface_endpoint_hour_per_az"] *= 2
    edited = tmp_path / "pricing.json"
    edited.write_text(json.dumps(pricing))
    monkeypatch.setattr(cost_model, "PRICING", edited)
    doubled = cost_model.model()["environments"]["prod"]
    key = next(k for k in base["lines"] if k.startswith("VPC interface endpoints"))
    assert doubled["lines"][key] == pytest.approx(2 * base["lines"][key], abs=0.01)


def test_ratio_is_read_from_the_ingestion_benchmark_json() -> None:
    doc = {"results": [{"modality": "CR", "htj2k_compression_ratio": 2.31}]}
    assert cost_model._find_ratio(doc) == 2.31
    assert cost_model._find_ratio({"throughput": 5}) is None
